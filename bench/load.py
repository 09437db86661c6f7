"""Load: N conversations at once through one Open WebUI process, against one alone.

Boots Open WebUI 0.12.4 on loopback against the scripted backend, installs the pipe, and runs
the same workload twice, side by side in one run:
  alone   one conversation, nothing else running
  N       N conversations started together, each in its own chat and browser tab
It reports, per conversation, the server's CPU seconds, content events and saves (`replace`)
per second of streaming, the longest pause between two frames, wall time, and whether anything
was lost: every conversation's saved message must equal what its tab was last given and hold
every participant's whole reply. Both sides run --repeat times, alternating; the table shows
medians. The scripted backend and the tabs run in this process (the "driver"), on the same
machine as the server; CPU that neither used ("other processes") means the figures are skewed.

Run: scripts/bench load [--conversations 10 --participants 3 --rounds 2 --tokens 300
                         --delay 0.005 --repeat 3 --json docs/load.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from bench.run import (
    CONTENT_TYPES,
    PIPE_FRAME_TYPES,
    PIPE_MODEL,
    ServerMeter,
    booted,
    windows,
)
from tests.backend import BackendThread, ModelScript, RecordedRequest
from tests.integration.owui import ChatResult, Owui, start_chat

MODELS = ("model-a", "model-b", "model-c", "model-d", "model-e")
TAG = re.compile(r"\bconv(\d+)x\b")  # in each conversation's user message: tells requests apart


@dataclass
class Conversation:
    """What one conversation cost and delivered."""

    events: int = 0  # content events the tab received
    saves: int = 0  # of which replace (the host writes the chat)
    streaming_s: float = 0.0  # first token to last token of its replies
    events_per_s: float = 0.0  # the pipe's frames per second of streaming
    saves_per_s: float = 0.0
    max_events_1s: int = 0
    min_events_1s: int = 0
    longest_pause_s: float = 0.0  # between two frames while its models streamed
    wall_s: float = 0.0  # message sent to message ended
    turns_expected: int = 0
    turns_whole: int = 0  # turns whose backend reply is in the saved message, whole
    saved_equals_delivered: bool = False

    @property
    def nothing_lost(self) -> bool:
        return self.saved_equals_delivered and self.turns_whole == self.turns_expected


@dataclass
class Run:
    """One side of the comparison: `count` conversations started together."""

    count: int
    cpu_s: float = 0.0  # server process tree, whole run
    wall_s: float = 0.0  # first message sent to last message ended
    driver_cpu_s: float = 0.0  # this process: the scripted backend and every tab's socket
    others_cpu_s: float = 0.0  # every other process on the machine: skews the figures
    conversations: list[Conversation] = field(default_factory=list)

    @property
    def server_cores(self) -> float:
        """The server's CPU seconds per second of the run: 1.0 is one core kept busy."""
        return self.cpu_s / self.wall_s

    def mean(self, name: str) -> float:
        return statistics.mean(getattr(c, name) for c in self.conversations)

    @property
    def cpu_per_conversation(self) -> float:
        return self.cpu_s / self.count

    @property
    def nothing_lost(self) -> int:
        return sum(c.nothing_lost for c in self.conversations)


def machine_cpu() -> float:
    """CPU seconds the whole machine spent busy so far, all cores."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def judge(result: ChatResult, requests: list[RecordedRequest], turns: int) -> Conversation:
    content = [e for e in result.events if e.type in CONTENT_TYPES]
    first = min(r.first_token_at for r in requests if r.first_token_at)
    last = max(r.last_token_at for r in requests if r.last_token_at)
    # The pipe's own frames and saves while the models streamed (as bench/run.py counts them).
    frames = [
        e
        for e in content
        if e.type in PIPE_FRAME_TYPES and e.data.get("content") and first <= e.t <= last + 0.05
    ]
    c = Conversation(events=len(content), saves=sum(e.type == "replace" for e in content))
    c.streaming_s = last - first
    c.events_per_s = len(frames) / c.streaming_s
    c.saves_per_s = sum(e.type == "replace" for e in frames) / c.streaming_s
    times = [e.t for e in frames]
    c.max_events_1s, c.min_events_1s = windows(times, first, last)
    c.longest_pause_s = max(b - a for a, b in zip([first, *times], [*times, last], strict=True))
    c.wall_s = (result.finished_at or time.monotonic()) - result.sent_at
    c.turns_expected = turns
    c.turns_whole = sum(
        1 for r in requests if r.completed and r.reply and r.reply.strip() in result.saved
    )
    c.saved_equals_delivered = bool(result.saved) and result.saved == result.delivered
    return c


async def run_at_once(owui: Owui, backend: BackendThread, count: int, args) -> Run:
    """`count` conversations, each in its own tab, sent together; measured as one run."""
    participants = list(MODELS[: args.participants])
    answer = {
        "rounds": args.rounds,
        "participants": [
            {"model": m, "alias": m[-1].upper(), "system_message": f"You are {m}."}
            for m in participants
        ],
    }
    clients = await asyncio.gather(*(owui.connect() for _ in range(count)))
    for client in clients:
        client.answer("execute", answer)
    before = len(backend.requests)
    meter = ServerMeter(owui.server._proc.pid)
    cpu0, _ = meter.sample()
    driver0, machine0 = time.process_time(), machine_cpu()
    try:
        runs = await asyncio.gather(
            *(
                start_chat(client, owui.admin_token, PIPE_MODEL, f"Begin conv{i}x.")
                for i, client in enumerate(clients)
            )
        )
        results = await asyncio.gather(*(run.wait(timeout=900) for run in runs))
        cpu1, _ = meter.sample()
        driver1, machine1 = time.process_time(), machine_cpu()
    finally:
        await asyncio.gather(*(client.disconnect() for client in clients))
    mine: dict[int, list[RecordedRequest]] = {i: [] for i in range(count)}
    for request in backend.requests[before:]:
        (tag,) = set(TAG.findall(json.dumps(request.messages)))
        mine[int(tag)].append(request)
    turns = args.participants * args.rounds
    run = Run(count, cpu_s=cpu1 - cpu0, driver_cpu_s=driver1 - driver0)
    run.others_cpu_s = max(0.0, machine1 - machine0 - run.cpu_s - run.driver_cpu_s)
    run.wall_s = max(r.finished_at for r in results) - min(r.sent_at for r in results)
    run.conversations = [judge(r, mine[i], turns) for i, r in enumerate(results)]
    return run


async def bench(args) -> tuple[list[Run], list[Run]]:
    async with booted({m: ModelScript() for m in MODELS}, "mmc-load-") as owui:
        backend = owui.backend
        script = ModelScript(tokens=args.tokens, delay=args.delay, reasoning_tokens=args.reasoning)
        small = argparse.Namespace(**{**vars(args), "rounds": 1})
        for model in MODELS:
            backend.set_script(model, ModelScript(tokens=20))
        await run_at_once(owui, backend, 2, small)  # warm-up: imports and caches
        for model in MODELS:
            backend.set_script(model, script)
        alone, many = [], []
        for i in range(1, args.repeat + 1):
            print(f"[{i}/{args.repeat}] 1 conversation alone ...", flush=True)
            alone.append(await run_at_once(owui, backend, 1, args))
            print(f"[{i}/{args.repeat}] {args.conversations} at once ...", flush=True)
            many.append(await run_at_once(owui, backend, args.conversations, args))
    return alone, many


def table(alone: list[Run], many: list[Run]) -> str:
    """Medians over the repeats; "nothing lost" counts every conversation of every repeat."""
    n = many[0].count

    def worst(run: Run, name: str, pick=min) -> float:
        return pick(getattr(c, name) for c in run.conversations)

    rows = [
        ("server CPU per conversation", lambda r: r.cpu_per_conversation, "{:.2f} s"),
        ("server CPU, whole run", lambda r: r.cpu_s, "{:.1f} s"),
        ("server CPU per second of the run (cores)", lambda r: r.server_cores, "{:.2f}"),
        ("content events per conversation", lambda r: r.mean("events"), "{:.0f}"),
        ("content events/s per conversation, mean", lambda r: r.mean("events_per_s"), "{:.1f}"),
        (
            "max content events in any 1 s, highest",
            lambda r: worst(r, "max_events_1s", max),
            "{:.0f}",
        ),
        ("min content events in any 1 s, lowest", lambda r: worst(r, "min_events_1s"), "{:.0f}"),
        ("saves/s per conversation, mean", lambda r: r.mean("saves_per_s"), "{:.2f}"),
        (
            "longest pause between frames, longest",
            lambda r: worst(r, "longest_pause_s", max) * 1000,
            "{:.0f} ms",
        ),
        ("streaming time per conversation, mean", lambda r: r.mean("streaming_s"), "{:.1f} s"),
        ("wall time per conversation, mean", lambda r: r.mean("wall_s"), "{:.1f} s"),
        ("wall time, all of them", lambda r: r.wall_s, "{:.1f} s"),
        ("driver CPU (backend + tabs), whole run", lambda r: r.driver_cpu_s, "{:.1f} s"),
        ("other processes' CPU, whole run", lambda r: r.others_cpu_s, "{:.1f} s"),
    ]
    out = [
        f"| | alone | {n} at once | {n} at once / alone |",
        "|---|---|---|---|",
    ]
    for name, get, fmt in rows:
        a = statistics.median(get(r) for r in alone)
        b = statistics.median(get(r) for r in many)
        ratio = f"{b / a:.2f}" if a else "-"
        out.append(f"| {name} | {fmt.format(a)} | {fmt.format(b)} | {ratio} |")
    cells = [
        f"{sum(r.nothing_lost for r in rs)}/{sum(r.count for r in rs)}" for rs in (alone, many)
    ]
    out.append(
        f"| nothing lost (saved == delivered, every turn whole) | {cells[0]} | {cells[1]} | |"
    )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--conversations", type=int, default=10, help="how many at once")
    parser.add_argument("--participants", type=int, default=3, choices=range(1, 6))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=300, help="tokens per reply")
    parser.add_argument("--delay", type=float, default=0.005, help="seconds between tokens")
    parser.add_argument("--reasoning", type=int, default=0, help="reasoning tokens per reply")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each side (medians)")
    parser.add_argument("--json", default="", help="also write the figures to this file")
    args = parser.parse_args()
    started = time.time()
    alone, many = asyncio.run(bench(args))
    workload = (
        f"{args.participants} participants x {args.rounds} rounds x {args.tokens} tokens, "
        f"{args.delay * 1000:g} ms/token, {args.reasoning} reasoning tokens per reply"
    )
    print(
        f"\nworkload: {workload}; {args.conversations} conversations at once vs one alone; "
        f"medians of {args.repeat} runs each\n"
    )
    print(table(alone, many))
    print(f"\n(load bench took {time.time() - started:.0f} s)")
    if args.json:

        def figures(run: Run) -> dict:
            return {
                **asdict(run),
                "cpu_per_conversation": run.cpu_per_conversation,
                "server_cores": run.server_cores,
                "nothing_lost": run.nothing_lost,
            }

        out = {
            "workload": vars(args),
            "table": table(alone, many),
            "alone": [figures(r) for r in alone],
            "at_once": [figures(r) for r in many],
        }
        Path(args.json).write_text(json.dumps(out, indent=2))
        print(f"figures: {args.json}")
    if any(r.nothing_lost < r.count for r in alone + many):
        raise SystemExit("some conversation lost something: see the table")


if __name__ == "__main__":
    main()
