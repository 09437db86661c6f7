"""Disk: bytes the Open WebUI server writes for one conversation, against native streaming.

Boots Open WebUI 0.12.4 (SQLite, WAL) on loopback against the scripted backend, installs the
pipe, and runs, side by side in one run, for each conversation length (1x, 3x, 10x the
standard: 3 participants x 2 rounds x 400 tokens at 5 ms a token) and each chat (a fresh one,
and one already holding 50 messages of ~2,000 characters):
  pipe    the conversation, through the pipe as shipped
  native  one plain model streaming the same number of tokens through Open WebUI's own path
Each figure is what the server process tree wrote (/proc/<pid>/io write_bytes, through psutil)
from the moment the chat exists (so creating it is not counted) until its writes settle after
the end, plus the WAL checkpoint that follows (run here, so every run pays for its own WAL
and starts with an empty one). `final chat` is the size of the chat's JSON at the end:
`x chat` says how many copies of it the run wrote.

Run: .venv/bin/python -m bench.disk [--lengths 1,3,10 --json docs/disk.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from bench.run import FUNCTION_ID, PIPE_MODEL, ServerMeter, booted, long_history
from tests.backend import ModelScript
from tests.integration.owui import Owui, run_chat

PARTICIPANTS = ("model-a", "model-b", "model-c")
ROUNDS = 2  # the standard conversation; --lengths multiplies it
TOKENS = 400
DELAY = 0.005


@dataclass
class Row:
    length: int  # times the standard conversation
    chat: str  # "fresh" or "50 messages"
    mode: str  # "pipe" or "native"
    written: int = 0  # bytes the server wrote (and the checkpoint after it)
    final_chat: int = 0  # bytes of the chat's JSON at the end
    tokens: int = 0
    saves: int = 0  # the pipe's `replace` events (the host stores each)
    statuses: int = 0  # status events (the host stores each)
    seconds: float = 0.0
    saved_equals_delivered: bool = False

    @property
    def copies(self) -> float:
        return self.written / max(1, self.final_chat)


def checkpoint(db: Path) -> int:
    """Bytes this process wrote to move the WAL into the database file (and empty it)."""
    me = psutil.Process()
    before = me.io_counters().write_bytes
    with sqlite3.connect(db, timeout=30) as con:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    return me.io_counters().write_bytes - before


async def settled(meter: ServerMeter, quiet: float = 1.5, limit: float = 20.0) -> int:
    """The server's bytes written, once they stop growing (its last writes follow the end)."""
    last, since, start = meter.sample()[1], time.monotonic(), time.monotonic()
    while time.monotonic() - since < quiet and time.monotonic() - start < limit:
        await asyncio.sleep(0.25)
        now = meter.sample()[1]
        if now != last:
            last, since = now, time.monotonic()
    return last


async def one(owui: Owui, mode: str, length: int, history: list[dict] | None) -> Row:
    rounds = ROUNDS * length
    tokens = len(PARTICIPANTS) * rounds * TOKENS
    owui.backend.set_script("native", ModelScript(tokens=tokens, delay=DELAY))
    for model in PARTICIPANTS:
        owui.backend.set_script(model, ModelScript(tokens=TOKENS, delay=DELAY))
    client = await owui.connect()
    client.answer(
        "execute",
        {
            "rounds": rounds,
            "participants": [
                {"model": m, "alias": m[-1].upper(), "system_message": f"You are {m}."}
                for m in PARTICIPANTS
            ],
        },
    )
    db = owui.server.data_dir / "webui.db"
    meter = ServerMeter(owui.server._proc.pid)
    start: dict[str, float] = {}

    async def created(_chat_id: str) -> None:
        await settled(meter, quiet=0.5)
        start["extra"] = checkpoint(db)  # the chat's creation is not this run's
        start["disk"], start["t"] = meter.sample()[1], time.monotonic()

    row = Row(length, "50 messages" if history else "fresh", mode, tokens=tokens)
    try:
        result = await run_chat(
            client,
            owui.admin_token,
            "native" if mode == "native" else PIPE_MODEL,
            "Begin.",
            previous_messages=history,
            timeout=3600,
            on_created=created,
        )
    finally:
        await client.disconnect()
    row.seconds = time.monotonic() - start["t"]
    disk = await settled(meter)
    row.written = disk - start["disk"] + checkpoint(db)
    row.final_chat = len(json.dumps(result.chat, ensure_ascii=False).encode())
    row.saved_equals_delivered = bool(result.saved) and result.saved == result.delivered
    row.saves = sum(1 for e in result.events if e.type == "replace")
    row.statuses = sum(1 for e in result.events if e.type == "status")
    return row


async def bench(lengths: list[int], valves: dict) -> list[Row]:
    scripts = {m: ModelScript() for m in (*PARTICIPANTS, "native")}
    rows: list[Row] = []
    async with booted(scripts, "mmc-disk-") as owui:
        if valves:
            await owui.set_function_valves(FUNCTION_ID, valves)
        await one(owui, "native", 1, None)  # warm-up: imports and caches in the server
        await one(owui, "pipe", 1, None)
        for length in lengths:
            for history in (None, long_history(50, 2000)):
                for mode in ("pipe", "native"):
                    label = "50 messages" if history else "fresh"
                    print(f"running {mode}, {length}x, {label} ...", flush=True)
                    rows.append(await one(owui, mode, length, history))
    return rows


def table(rows: list[Row]) -> str:
    pairs = {(r.length, r.chat, r.mode): r for r in rows}
    lines = [
        "| length | chat | final chat | pipe wrote | native wrote | pipe / native "
        "| pipe, x chat | native, x chat | pipe saves, statuses |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for length, chat, _ in sorted({k for k in pairs if k[2] == "pipe"}):
        pipe, native = pairs[(length, chat, "pipe")], pairs.get((length, chat, "native"))
        if native is None:
            continue
        lines.append(
            f"| {length}x ({pipe.tokens} tokens) | {chat} | {pipe.final_chat / 1e3:.0f} KB "
            f"| {pipe.written / 1e6:.2f} MB | {native.written / 1e6:.2f} MB "
            f"| **{pipe.written / max(1, native.written):.2f}x** | {pipe.copies:.1f} "
            f"| {native.copies:.1f} | {pipe.saves}, {pipe.statuses} |"
        )
    return "\n".join(lines)


def growth(rows: list[Row]) -> str:
    """Bytes at the longest length over the shortest, per chat and mode."""
    out = []
    lengths = sorted({r.length for r in rows})
    if len(lengths) < 2:
        return ""
    lo, hi = lengths[0], lengths[-1]
    by = {(r.length, r.chat, r.mode): r.written for r in rows}
    for chat in ("fresh", "50 messages"):
        parts = []
        for mode in ("pipe", "native"):
            if (lo, chat, mode) in by and (hi, chat, mode) in by:
                parts.append(f"{mode} {by[(hi, chat, mode)] / max(1, by[(lo, chat, mode)]):.1f}x")
        out.append(f"growth {lo}x -> {hi}x, {chat}: " + ", ".join(parts))
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lengths", default="1,3,10", help="times the standard conversation")
    parser.add_argument("--json", help="also save the rows here (e.g. docs/disk.json)")
    parser.add_argument(
        "--valve", action="append", default=[], help="NAME=VALUE: an admin valve of the pipe"
    )
    args = parser.parse_args()
    valves = {k: float(v) for k, v in (x.split("=", 1) for x in args.valve)}
    started = time.monotonic()
    load0 = psutil.getloadavg()
    rows = asyncio.run(bench([int(x) for x in args.lengths.split(",")], valves))
    print()
    print(table(rows))
    print(growth(rows))
    lost = [r for r in rows if not r.saved_equals_delivered]
    print(f"saved == delivered in every run: {not lost}")
    print(f"load average at start {load0[0]:.1f}, at end {psutil.getloadavg()[0]:.1f}")
    if args.json:
        data = {
            "workload": {
                "participants": len(PARTICIPANTS),
                "rounds": ROUNDS,
                "tokens_per_turn": TOKENS,
                "delay_s": DELAY,
            },
            "valves": valves,
            "seconds": round(time.monotonic() - started),
            "load_average": [round(load0[0], 1), round(psutil.getloadavg()[0], 1)],
            "rows": [{**asdict(r), "copies": round(r.copies, 2)} for r in rows],
        }
        Path(args.json).write_text(json.dumps(data, indent=1) + "\n")


if __name__ == "__main__":
    main()
