"""Pipe CPU per streamed chunk, in process (no server), for replies of 1k, 10k and 100k tokens.

Shows the per-chunk cost stays flat as the transcript grows (no O(n^2) in decoding, the
transcript or the emitter). Run: .venv/bin/python -m bench.micro
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import multi_model_conversation as mmc
from tests.fakes import FakeHost, PipeHarness, config


class LeanHost(FakeHost):
    """Streams prebuilt SSE frames with one event-loop yield each, like a fast socket."""

    frames: list[bytes] = []

    async def stream_chat(self, form, user):
        for frame in self.frames:
            await asyncio.sleep(0)
            yield frame


def frames(tokens: int, reasoning: int) -> list[bytes]:
    def frame(**delta):
        body = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}]}
        return f"data: {json.dumps(body)}\n\n".encode()

    out = [frame(reasoning_content=f"r{i} ") for i in range(reasoning)]
    out += [frame(content=f"word{i} ") for i in range(tokens)]
    return out + [b"data: [DONE]\n\n"]


async def measure(tokens: int, interval: float) -> dict:
    """CPU seconds of one run, minus the CPU of iterating the same stream without the pipe."""
    h = PipeHarness()
    h.pipe.clock = mmc.Clock()  # real time: frames every `interval` seconds
    h.pipe.valves.EMIT_INTERVAL = interval
    host = LeanHost(h.clock)
    host.frames = frames(tokens, reasoning=tokens // 10)
    host.chat_configs["chat-1"] = config("m1")
    h.pipe.gateway_factory = lambda request: host
    events = 0

    async def emit(event):
        nonlocal events
        events += 1

    async def baseline():
        async for _ in host.stream_chat({}, None):
            pass

    t0 = time.process_time()
    await baseline()
    base = time.process_time() - t0
    t0 = time.process_time()
    result = await h.run(emitter=emit)
    total = time.process_time() - t0
    chunks = len(host.frames)
    assert f"word{tokens - 1}" in result
    return {
        "tokens": tokens,
        "chunks": chunks,
        "pipe_us_per_chunk": (total - base) / chunks * 1e6,
        "events": events,
        "transcript_kb": len(result) / 1024,
    }


class PacedHost(LeanHost):
    """Streams the frames in real time, `delay` seconds apart, like a model."""

    delay = 0.005

    async def stream_chat(self, form, user):
        # Frame i is due at start + i * delay, whatever the consumer does (a backend's pace
        # does not depend on its reader), so only a reader that falls behind adds time.
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i, frame in enumerate(self.frames, 1):
            await asyncio.sleep(max(0.0, start + i * self.delay - loop.time()))
            yield frame


async def added_time(tokens: int, delay: float, emit_delay: float) -> dict:
    """Wall time of a real-time stream through the pipe against the stream's own duration."""
    h = PipeHarness()
    h.pipe.clock = mmc.Clock()
    host = PacedHost(h.clock, models={"m1": "One", "m2": "Two", "m3": "Three"})
    host.delay = delay
    host.frames = frames(tokens, reasoning=50)
    host.chat_configs["chat-1"] = config("m1", "m2", "m3", rounds=3)
    h.pipe.gateway_factory = lambda request: host
    events = 0

    async def emit(event):
        nonlocal events
        await asyncio.sleep(emit_delay)  # a slow socket or database
        events += 1

    t0 = time.perf_counter()
    for _ in range(9):  # the same nine replies, streamed without the pipe
        await baseline_stream(host)
    stream_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = await h.run(emitter=emit)
    wall = time.perf_counter() - t0
    assert result.count("### ") == 9 and f"word{tokens - 1}" in result, result[:300]
    return {"emit_ms": emit_delay * 1000, "stream_s": stream_s, "wall_s": wall, "events": events}


async def baseline_stream(host: LeanHost) -> None:
    async for _ in host.stream_chat({}, None):
        pass


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--interval", type=float, default=0.033)
    args = parser.parse_args()
    rows = [await measure(int(n), args.interval) for n in args.sizes.split(",")]
    print(f"{'tokens':>8} {'chunks':>8} {'pipe µs/chunk':>14} {'events':>7} {'transcript':>11}")
    for r in rows:
        print(
            f"{r['tokens']:>8} {r['chunks']:>8} {r['pipe_us_per_chunk']:>14.1f} "
            f"{r['events']:>7} {r['transcript_kb']:>9.0f}KB"
        )
    ratio = rows[-1]["pipe_us_per_chunk"] / rows[0]["pipe_us_per_chunk"]
    print(f"per-chunk cost, largest / smallest reply: {ratio:.2f}x (target <= 2x)")
    print("\nadded time, 3 participants x 3 rounds x 550 tokens, 5 ms apart (real time):")
    print(
        f"{'event takes':>12} {'stream alone':>13} {'through pipe':>13} {'added':>8} {'events':>7}"
    )
    for emit_delay in (0.0, 0.05):
        r = await added_time(550, 0.005, emit_delay)
        added = 100 * (r["wall_s"] - r["stream_s"]) / r["stream_s"]
        print(
            f"{r['emit_ms']:>10.0f}ms {r['stream_s']:>12.2f}s {r['wall_s']:>12.2f}s "
            f"{added:>+7.1f}% {r['events']:>7}"
        )


if __name__ == "__main__":
    asyncio.run(main())
