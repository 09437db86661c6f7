"""A council round in a real Open WebUI: three scripted models at different speeds answer at once.

Side by side in one run, on the same tokens:
  council   3 participants (2, 5 and 10 ms a token) in one council round through the pipe
  slowest   the 10 ms model alone through the pipe (the floor for the council's wall time)
  native    one plain model streaming all three replies' tokens through Open WebUI's own path
Prints wall times, content-event bytes and the most frames in any second, and the ratios the
issue asks for: council wall / slowest wall (at most 1.2), council bytes / native bytes (at most
2), frames a second (at most 30).

Run: scripts/bench council [--tokens 300] [--json docs/council.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

from bench.run import CONTENT_TYPES, PIPE_FRAME_TYPES, PIPE_MODEL, booted, windows
from tests.backend import BackendThread, ModelScript
from tests.integration.owui import Owui, run_chat

ROOT = Path(__file__).resolve().parents[1]
SPEEDS = {"model-a": 0.002, "model-b": 0.005, "model-c": 0.010}  # seconds a token


async def measure(owui: Owui, backend: BackendThread, model: str, setup: dict | None) -> dict:
    client = await owui.connect()
    if setup is not None:
        client.answer("execute", setup)
    before = len(backend.requests)
    result = await run_chat(client, owui.admin_token, model, "Begin.", timeout=600)
    await client.disconnect()
    requests = [r for r in backend.requests[before:] if r.stream and r.first_token_at]
    content = [e for e in result.events if e.type in CONTENT_TYPES]
    own = [
        e.t
        for e in content
        if (e.type in PIPE_FRAME_TYPES and e.data.get("content"))
        or (setup is None and e.type == "response:completion")
    ]
    first = min(r.first_token_at for r in requests)
    last = max(r.last_token_at for r in requests)
    most, _ = windows([t for t in own if first <= t <= last + 0.05], first, last)
    return {
        "wall_s": round((result.finished_at or time.monotonic()) - result.sent_at, 3),
        "content_bytes": sum(len(json.dumps(e.data)) for e in content),
        "events": len(content),
        "most_frames_in_1s": most,
        "saved_equals_delivered": result.saved == result.delivered,
    }


def setup(*models: str) -> dict:
    return {
        "rounds": 1,
        "selection": "council",
        "participants": [{"model": m, "alias": m[-1].upper()} for m in models],
    }


async def bench(tokens: int) -> dict:
    scripts = {m: ModelScript(tokens=tokens, delay=d) for m, d in SPEEDS.items()}
    scripts["native"] = ModelScript(tokens=3 * tokens, delay=0.002)
    async with booted(scripts, "mmc-council-") as owui:
        backend = owui.backend
        await measure(owui, backend, PIPE_MODEL, setup("model-a"))  # warm-up
        rows = {
            "council": await measure(owui, backend, PIPE_MODEL, setup(*SPEEDS)),
            "slowest": await measure(owui, backend, PIPE_MODEL, setup("model-c")),
            "native": await measure(owui, backend, "native", None),
        }
    rows["ratios"] = {
        "council_wall_over_slowest": round(
            rows["council"]["wall_s"] / rows["slowest"]["wall_s"], 2
        ),
        "council_bytes_over_native": round(
            rows["council"]["content_bytes"] / rows["native"]["content_bytes"], 2
        ),
        "council_most_frames_in_1s": rows["council"]["most_frames_in_1s"],
    }
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=300, help="tokens per participant")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    rows = asyncio.run(bench(args.tokens))
    for name in ("council", "slowest", "native"):
        print(f"{name:8} {rows[name]}")
    print("ratios  ", rows["ratios"])
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
