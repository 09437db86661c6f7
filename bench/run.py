"""The hot path in a real Open WebUI: the same workload with coalescing on, off, and natively.

Boots Open WebUI 0.12.4 on loopback against the scripted backend, installs the pipe, and runs
one conversation per mode, measured side by side in one run:
  on      the pipe as shipped (EMIT_INTERVAL 0.033 s)
  off     the pipe with EMIT_INTERVAL 0: one `replace` per streamed chunk (the naive way)
  native  a plain model streaming the same tokens through Open WebUI's own path (the floor)
With --long-chat the same modes run again in a chat with 50 earlier messages of ~2,000 chars.
With --long-conversation they run a long conversation too (5 participants x 6 rounds x 600
tokens at 20 ms a token, a paced model), which shows whether the bytes sent per second grow with
the transcript: it reports the content bytes per second of the first and the last minute.
Unless --no-tab, a headless Chromium tab shows each chat while it streams, and its main-thread
time (Performance.getMetrics TaskDuration) is reported: what the page spent applying events.

Run: scripts/bench [--participants 3 --rounds 3 --tokens 500 --delay 0.005 --reasoning 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from tests.backend import BackendThread, ModelScript
from tests.integration.owui import OpenWebUIServer, Owui, run_chat

ROOT = Path(__file__).resolve().parents[1]
FUNCTION_ID = "mmc"
PIPE_MODEL = f"{FUNCTION_ID}.Conversation-pipe"
# Every event that sets what the message shows (the pipe's frames are chat:message:delta or
# chat:message, its saves replace; native streaming sends response:completion deltas and a
# final chat:completion).
PIPE_FRAME_TYPES = ("replace", "chat:message", "chat:message:delta")
# The pipe's follow: the page scrolls to the newest line on it (issue 27). It carries no text,
# but it is a cost of showing the text, so its bytes count with the content's.
FOLLOW_TYPE = "context_compaction"
CONTENT_TYPES = {
    *PIPE_FRAME_TYPES,
    FOLLOW_TYPE,
    "message",
    "chat:completion",
    "response:completion",
}
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@dataclass
class Measure:
    mode: str
    chat: str
    events: int = 0
    saves: int = 0  # replace events: the ones the host writes into the chat
    follows: int = 0  # the pipe's follows (the page scrolls to the newest line)
    follow_bytes: int = 0  # ... and their bytes (counted in event_bytes too)
    max_events_1s: int = 0
    min_events_1s: int = 0
    event_bytes: int = 0
    bytes_per_s_first_min: float = 0.0  # content bytes/s in the first minute of streaming
    bytes_per_s_last_min: float = 0.0  # ... and in the last one
    tab_task_s: float | None = None  # the tab's main-thread time (None: no tab)
    cpu_s: float = 0.0
    disk_write_bytes: int = 0
    first_token_to_visible_ms: float = 0.0
    last_token_to_last_event_ms: float = 0.0
    wall_s: float = 0.0
    backend_s: float = 0.0
    saved_equals_delivered: bool = False
    timeline: list[tuple[float, int]] = field(default_factory=list)  # (t, cumulative bytes)

    @property
    def added_pct(self) -> float:
        return 100 * (self.wall_s - self.backend_s) / self.backend_s if self.backend_s else 0.0


class Tab:
    """A headless Chromium tab, signed in, that shows a chat while it streams.

    Its main-thread time (Chromium's Performance.getMetrics TaskDuration) between open() and
    settle() is what the page spent applying the events and rendering the message.
    """

    def __init__(self, base_url: str, token: str) -> None:
        self.base_url, self.token = base_url, token
        self._playwright = self._browser = self.page = self._cdp = None
        self._start = 0.0

    async def start(self) -> None:
        from playwright.async_api import async_playwright

        self._playwright = await async_playwright().start()
        self._browser = await self._playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        self.page = await self._browser.new_page(viewport={"width": 1280, "height": 900})
        await self.page.goto(f"{self.base_url}/auth")
        await self.page.evaluate("t => localStorage.setItem('token', t)", self.token)
        self._cdp = await self.page.context.new_cdp_session(self.page)
        await self._cdp.send("Performance.enable")

    async def task_s(self) -> float:
        metrics = (await self._cdp.send("Performance.getMetrics"))["metrics"]
        return next(m["value"] for m in metrics if m["name"] == "TaskDuration")

    async def open(self, chat_id: str) -> None:
        """Load the chat (its empty assistant message is there) and start counting."""
        await self.page.goto(f"{self.base_url}/c/{chat_id}")
        await self.page.wait_for_selector(".chat-assistant", state="attached", timeout=60_000)
        await self._quiet()
        self._start = await self.task_s()

    async def settle(self) -> float:
        """Main-thread seconds since open(), once the page has gone quiet after the stream."""
        await self._quiet()
        return await self.task_s() - self._start

    async def _quiet(self, step: float = 0.5, limit: float = 20.0) -> None:
        """Wait until half a second passes with under 10 ms of main-thread work."""
        last, waited = await self.task_s(), 0.0
        while waited < limit:
            await asyncio.sleep(step)
            waited += step
            now = await self.task_s()
            if now - last < 0.01:
                return
            last = now

    async def stop(self) -> None:
        if self._browser is not None:
            await self._browser.close()
        if self._playwright is not None:
            await self._playwright.stop()


def bytes_per_s(content: list, sizes: list[int], start: float, end: float) -> float:
    """Content bytes per second of the events in [start, end)."""
    if end <= start:
        return 0.0
    return sum(n for e, n in zip(content, sizes, strict=True) if start <= e.t < end) / (end - start)


class ServerMeter:
    """CPU seconds and bytes written by the server process tree between start() and stop()."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)

    def _procs(self) -> list[psutil.Process]:
        return [self.root, *self.root.children(recursive=True)]

    def sample(self) -> tuple[float, int]:
        cpu = disk = 0
        for proc in self._procs():
            try:
                times = proc.cpu_times()
                cpu += times.user + times.system
                disk += proc.io_counters().write_bytes
            except psutil.Error:
                pass
        return cpu, disk


def windows(times: list[float], start: float, end: float) -> tuple[int, int]:
    """Largest and smallest number of events in any 1 s window inside [start, end]."""
    if not times:
        return 0, 0
    most = max(sum(1 for u in times if t <= u < t + 1) for t in times)
    if end - start < 1:
        return most, len(times)
    least = min(
        sum(1 for u in times if s <= u < s + 1)
        for s in [start + 0.25 * i for i in range(int((end - start - 1) / 0.25) + 1)]
    )
    return most, least


def long_history(n: int, chars: int) -> list[dict]:
    words = ("lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod " * 60)[:chars]
    return [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"[{i}] {words}"}
        for i in range(n)
    ]


async def one_run(
    owui: Owui, backend: BackendThread, mode: str, args, history, tab: Tab | None = None
) -> Measure:
    chat = args.label
    participants = [f"model-{c}" for c in "abcde"[: args.participants]]
    script = ModelScript(tokens=args.tokens, delay=args.delay, reasoning_tokens=args.reasoning)
    for model in participants:
        backend.set_script(model, script)
    turns = args.participants * args.rounds
    backend.set_script(
        "native",
        ModelScript(
            tokens=args.tokens * turns, delay=args.delay, reasoning_tokens=args.reasoning * turns
        ),
    )
    if mode != "native":
        await owui.set_function_valves(
            FUNCTION_ID, {"EMIT_INTERVAL": 0.0 if mode == "off" else args.interval}
        )
    before = len(backend.requests)
    client = await owui.connect()
    client.answer(
        "execute",
        {
            "rounds": args.rounds,
            "participants": [
                {"model": m, "alias": m[-1].upper(), "system_message": f"You are {m}."}
                for m in participants
            ],
        },
    )
    meter = ServerMeter(owui.server._proc.pid)
    cpu0, disk0 = meter.sample()
    model = "native" if mode == "native" else PIPE_MODEL
    result = await run_chat(
        client,
        owui.admin_token,
        model,
        "Begin.",
        previous_messages=history,
        timeout=3600,
        on_created=tab.open if tab else None,
    )
    cpu1, disk1 = meter.sample()
    tab_task_s = await tab.settle() if tab else None
    await client.disconnect()
    requests = [r for r in backend.requests[before:] if r.stream and r.first_token_at]
    content = [e for e in result.events if e.type in CONTENT_TYPES]
    times = [e.t for e in content]
    first_token = min(r.first_token_at for r in requests)
    last_token = max(r.last_token_at for r in requests)
    m = Measure(mode, chat)
    m.events = len(content)
    m.saves = sum(1 for e in content if e.type == "replace")
    m.follows = sum(1 for e in content if e.type == FOLLOW_TYPE)
    # Per second of streaming, counting what the pipe sends (its frames and saves) or, for the
    # native run, the host's deltas; the host's own end-of-message events are left out.
    own = (
        [e.t for e in content if e.type in PIPE_FRAME_TYPES and e.data.get("content")]
        if mode != "native"
        else [e.t for e in content if e.type == "response:completion"]
    )
    streaming = [t for t in own if first_token <= t <= last_token + 0.05]
    m.max_events_1s, m.min_events_1s = windows(streaming, first_token, last_token)
    sizes = [len(json.dumps(e.data)) for e in content]
    m.event_bytes = sum(sizes)
    m.follow_bytes = sum(n for e, n in zip(content, sizes, strict=True) if e.type == FOLLOW_TYPE)
    minute = min(60.0, last_token - first_token)
    m.bytes_per_s_first_min = bytes_per_s(content, sizes, first_token, first_token + minute)
    m.bytes_per_s_last_min = bytes_per_s(content, sizes, last_token - minute, last_token)
    m.tab_task_s = tab_task_s
    running = 0
    for e, size in zip(content, sizes, strict=True):
        running += size
        m.timeline.append((e.t - result.sent_at, running))
    m.cpu_s = cpu1 - cpu0
    m.disk_write_bytes = disk1 - disk0
    after_first = [t for t in times if t >= first_token]
    m.first_token_to_visible_ms = (
        1000 * (min(after_first) - first_token) if after_first else float("nan")
    )
    m.last_token_to_last_event_ms = 1000 * (max(times) - last_token) if times else float("nan")
    m.wall_s = (result.finished_at or time.monotonic()) - result.sent_at
    m.backend_s = sum((r.finished_at or r.last_token_at) - r.received_at for r in requests)
    m.saved_equals_delivered = bool(result.saved) and result.saved == result.delivered
    return m


def table(rows: list[Measure]) -> str:
    by = {(r.mode, r.chat): r for r in rows}
    fields = [
        ("content events", lambda r: r.events, "{:.0f}"),
        ("  of which saves (replace)", lambda r: r.saves, "{:.0f}"),
        ("  of which follows (scroll)", lambda r: r.follows, "{:.0f}"),
        ("max events in 1 s", lambda r: r.max_events_1s, "{:.0f}"),
        ("min events in 1 s (while streaming)", lambda r: r.min_events_1s, "{:.0f}"),
        ("content event bytes", lambda r: r.event_bytes / 1e6, "{:.2f} MB"),
        ("  of which follows", lambda r: r.follow_bytes / 1e3, "{:.1f} KB"),
        ("bytes/s, first minute", lambda r: r.bytes_per_s_first_min / 1e3, "{:.1f} KB/s"),
        ("bytes/s, last minute", lambda r: r.bytes_per_s_last_min / 1e3, "{:.1f} KB/s"),
        (
            "  last / first minute",
            lambda r: r.bytes_per_s_last_min / max(1.0, r.bytes_per_s_first_min),
            "{:.2f}",
        ),
        ("tab main-thread time", lambda r: r.tab_task_s or 0.0, "{:.2f} s"),
        ("server CPU", lambda r: r.cpu_s, "{:.2f} s"),
        ("server bytes written", lambda r: r.disk_write_bytes / 1e6, "{:.1f} MB"),
        ("first token -> visible", lambda r: r.first_token_to_visible_ms, "{:.0f} ms"),
        ("last token -> last event", lambda r: r.last_token_to_last_event_ms, "{:.0f} ms"),
        ("wall time", lambda r: r.wall_s, "{:.2f} s"),
        ("backend streaming time", lambda r: r.backend_s, "{:.2f} s"),
        ("added by the pipe", lambda r: r.added_pct, "{:+.1f} %"),
        ("saved == delivered", lambda r: r.saved_equals_delivered, "{}"),
    ]
    out = []
    for chat in dict.fromkeys(r.chat for r in rows):
        on, off, native = by.get(("on", chat)), by.get(("off", chat)), by.get(("native", chat))
        out.append(f"\n== {chat} chat ==")
        out.append(f"{'':38}{'on':>12}{'off':>12}{'native':>12}{'on/off':>9}{'on/native':>11}")
        for name, get, fmt in fields:
            cells = [fmt.format(get(r)) if r else "-" for r in (on, off, native)]
            ratios = []
            for other in (off, native):
                a, b = (get(on), get(other)) if on and other else (None, None)
                ok = isinstance(a, int | float) and not isinstance(a, bool) and b
                ratios.append(f"{a / b:.2f}" if ok else "-")
            out.append(
                f"{name:38}{cells[0]:>12}{cells[1]:>12}{cells[2]:>12}{ratios[0]:>9}{ratios[1]:>11}"
            )
    fresh, long = by.get(("on", "fresh")), by.get(("on", "long"))
    if fresh and long:
        out.append("\n== coalescing on: long chat / fresh chat ==")
        out.append(
            f"server CPU {long.cpu_s / fresh.cpu_s:.2f}x, bytes written "
            f"{long.disk_write_bytes / max(1, fresh.disk_write_bytes):.2f}x, "
            f"screen updates >= {long.min_events_1s}/s while streaming"
        )
    return "\n".join(out)


def plot(rows: list[Measure], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chats = list(dict.fromkeys(r.chat for r in rows))
    fig, axes = plt.subplots(len(chats), 2, figsize=(12, 4.5 * len(chats)), squeeze=False)
    for (ax_bytes, ax_events), chat in zip(axes, chats, strict=True):
        for r in rows:
            if r.chat != chat:
                continue
            label = f"{r.mode} ({r.chat})"
            ts = [t for t, _ in r.timeline]
            ax_bytes.plot(ts, [b / 1e6 for _, b in r.timeline], label=label)
            ax_events.plot(ts, range(1, len(ts) + 1), label=label)
        ax_bytes.set(
            xlabel="seconds since the message was sent",
            ylabel="content event MB",
            title=f"Cumulative content bytes sent to the browser: {chat}",
        )
        ax_events.set(
            xlabel="seconds since the message was sent",
            ylabel="content events",
            title=f"Cumulative content events: {chat}",
        )
        for ax in (ax_bytes, ax_events):
            ax.grid(alpha=0.3)
            ax.legend()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


@asynccontextmanager
async def booted(scripts: dict[str, ModelScript], prefix: str) -> AsyncIterator[Owui]:
    """The scripted backend and a fresh Open WebUI with the pipe installed and the scripts'
    models offered no built-in tools; both stopped at the end."""
    backend = BackendThread(scripts=scripts)
    backend.start()
    server = OpenWebUIServer(backend.url, Path(tempfile.mkdtemp(prefix=prefix)))
    print(f"booting Open WebUI (log: {server.log_path}) ...", flush=True)
    server.start()
    try:
        owui = Owui(server, backend)
        owui.signup_admin_sync()
        await owui.install_function(ROOT / "multi_model_conversation.py", FUNCTION_ID)
        for model in scripts:
            await owui.set_model_params(model, meta={"capabilities": {"builtin_tools": False}})
        yield owui
    finally:
        server.stop()
        backend.stop()


async def bench(args) -> list[Measure]:
    backend = BackendThread(
        scripts={
            m: ModelScript()
            for m in ["model-a", "model-b", "model-c", "model-d", "model-e", "native"]
        }
    )
    backend.start()
    workdir = Path(tempfile.mkdtemp(prefix="mmc-bench-"))
    server = OpenWebUIServer(backend.url, workdir)
    print(f"booting Open WebUI (log: {server.log_path}) ...", flush=True)
    server.start()
    rows: list[Measure] = []
    tab: Tab | None = None
    try:
        owui = Owui(server, backend)
        owui.signup_admin_sync()
        await owui.install_function(Path(args.pipe), FUNCTION_ID)
        await owui.set_model_params("native", meta={"capabilities": {"builtin_tools": False}})
        for model in ("model-a", "model-b", "model-c", "model-d", "model-e"):
            await owui.set_model_params(model, meta={"capabilities": {"builtin_tools": False}})
        if args.tab:
            tab = Tab(server.url, owui.admin_token)
            await tab.start()
        # Warm-up: first requests pay for imports and caches in the server (and the tab).
        await one_run(owui, backend, "native", _small(args), None, tab)
        await one_run(owui, backend, "on", _small(args), None, tab)
        for workload, history in _workloads(args):
            for mode in workload.modes.split(","):
                print(f"running {mode} ({workload.label}) ...", flush=True)
                rows.append(await one_run(owui, backend, mode, workload, history, tab))
    finally:
        if tab is not None:
            await tab.stop()
        server.stop()
        backend.stop()
    return rows


def _workloads(args) -> list[tuple[argparse.Namespace, list[dict] | None]]:
    """(workload, earlier messages) in the order they run: fresh, long chat, long conversation."""
    out = [(argparse.Namespace(**{**vars(args), "label": "fresh"}), None)]
    if args.long_chat:
        out.append((argparse.Namespace(**{**vars(args), "label": "long"}), long_history(50, 2000)))
    if args.long_conversation:
        long = {
            "participants": 5,
            "rounds": 6,
            "tokens": 600,
            "delay": args.long_delay,
            "modes": args.long_modes,
            "label": "long conversation",
        }
        out.append((argparse.Namespace(**{**vars(args), **long}), None))
    return out


def _small(args):
    return argparse.Namespace(
        **{**vars(args), "tokens": 20, "rounds": 1, "reasoning": 2, "label": "warm-up"}
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--participants", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=500, help="tokens per reply")
    parser.add_argument("--delay", type=float, default=0.005, help="seconds between tokens")
    parser.add_argument("--reasoning", type=int, default=50, help="reasoning tokens per reply")
    parser.add_argument("--interval", type=float, default=0.033, help="EMIT_INTERVAL when on")
    parser.add_argument(
        "--long-chat",
        action="store_true",
        help="also run in a chat with 50 earlier messages of ~2,000 chars",
    )
    parser.add_argument(
        "--long-conversation",
        action="store_true",
        help="also run 5 participants x 6 rounds x 600 tokens, paced (--long-delay)",
    )
    parser.add_argument("--long-delay", type=float, default=0.02, help="s/token, long conv.")
    parser.add_argument("--long-modes", default="on,off,native", help="modes, long conv.")
    parser.add_argument(
        "--no-tab", dest="tab", action="store_false", help="no Chromium tab (no main-thread time)"
    )
    parser.add_argument("--pipe", default=str(ROOT / "multi_model_conversation.py"))
    parser.add_argument("--modes", default="on,off,native")
    parser.add_argument("--plot", default=str(ROOT / "docs" / "bench.png"))
    parser.add_argument("--json", default="", help="also write the figures to this file")
    args = parser.parse_args()
    started = time.time()
    rows = asyncio.run(bench(args))
    workload = (
        f"{args.participants} participants x {args.rounds} rounds x {args.tokens} tokens, "
        f"{args.delay * 1000:g} ms/token, {args.reasoning} reasoning tokens per reply"
    )
    print(f"\nworkload: {workload}")
    if args.long_conversation:
        print(
            f"long conversation: 5 participants x 6 rounds x 600 tokens, "
            f"{args.long_delay * 1000:g} ms/token, {args.reasoning} reasoning tokens per reply"
        )
    print(table(rows))
    print(
        f"\n(bench took {time.time() - started:.0f} s; median wall "
        f"{statistics.median(r.wall_s for r in rows):.1f} s)"
    )
    if args.plot:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        plot(rows, Path(args.plot), workload)
        print(f"plot: {args.plot}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                [
                    {k: v for k, v in vars(r).items() if k != "timeline"}
                    | {"added_pct": r.added_pct}
                    for r in rows
                ],
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
