"""The real-model conversation, measured, for one or more versions of the pipe side by side.

    python -m bench.real_model                       # this checkout's pipe
    python -m bench.real_model --pipe old.py --pipe multi_model_conversation.py
    python -m bench.real_model --n-ctx 8192 --undeclared ...   # as issue 10 found it

Each version gets a fresh llama-cpp-python server (SmolLM2-135M, see tests/integration/
real_model.py) and a fresh Open WebUI, then three participants talk for two rounds and the user
follows up once. Prints, per message: longest turn (model tokens and characters), failed
requests, lines where a participant speaks as another, error lines, seconds, the seconds the
message stayed busy with background tasks after its end, and the title.
Needs the cached server venv that `scripts/test --real-model` builds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path

from tests.integration import real_model

ROOT = Path(__file__).resolve().parents[1]


async def measure(pipe: Path, n_ctx: int, declare_ctx: bool) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="mmc-real-") as tmp:
        async with real_model.deployment(Path(tmp), pipe, n_ctx, declare_ctx) as (owui, server):
            client = await owui.connect()
            try:
                measured = await real_model.converse(owui, client, server, "mmc.Conversation-pipe")
            finally:
                await client.disconnect()
    return [m.as_dict() for m in measured]


async def main(pipes: list[Path], out: Path | None, n_ctx: int, declare_ctx: bool) -> None:
    if not real_model.available():
        raise SystemExit("no llama server venv or GGUF in the cache: run scripts/test --real-model")
    results = {}
    for pipe in pipes:
        results[str(pipe)] = await measure(pipe, n_ctx, declare_ctx)
        print(json.dumps({str(pipe): results[str(pipe)]}, ensure_ascii=False), flush=True)
    keys = ("longest_turn_tokens", "longest_turn_chars", "failed_requests", "imitation_lines")
    keys += ("error_lines", "seconds", "task_seconds", "title")
    for which, label in ((0, "first message"), (1, "follow-up")):
        print(f"\n{label}")
        print("| | " + " | ".join(p.name for p in pipes) + " |")
        print("|---|" + "---|" * len(pipes))
        for key in keys:
            print(
                f"| {key} | " + " | ".join(str(results[str(p)][which][key]) for p in pipes) + " |"
            )
    if out:
        out.write_text(json.dumps(results, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipe", action="append", type=Path, help="pipe file (repeatable)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--n-ctx", type=int, default=real_model.N_CTX, help="server context")
    parser.add_argument(
        "--undeclared", action="store_true", help="do not set num_ctx in the model's params"
    )
    args = parser.parse_args()
    pipes = args.pipe or [ROOT / "multi_model_conversation.py"]
    asyncio.run(main(pipes, args.json, args.n_ctx, not args.undeclared))
