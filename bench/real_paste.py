"""A long paste with a real small model: SmolLM2-135M at a 2048-token context, three participants.

    python -m bench.real_paste [--chars 20000] [--n-ctx 2048] [--json docs/real_paste.json]

Pastes a report of about `--chars` characters and asks the three participants of the real-model
check to discuss it for one round. Prints what the message did (turns, failed requests, error
lines, whether the user was told the paste was shortened) and what the llama server saw of each
request (prompt tokens): every request must fit the context, with at most one refused.
Needs the cached server venv that `scripts/test --real-model` builds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import tempfile
from pathlib import Path

from tests.integration import real_model

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "\n\nWhat are the three most important points of this report?"


def report(chars: int) -> str:
    lines, i = [], 0
    topics = ("revenue", "hiring", "costs", "customers", "risks", "the roadmap")
    while sum(map(len, lines)) < chars:
        topic = topics[i % len(topics)]
        lines.append(
            f"Section {i + 1}: {topic} changed this quarter; details follow in the table.\n"
        )
        i += 1
    return "".join(lines)


async def measure(chars: int, n_ctx: int) -> dict:
    pipe = ROOT / "multi_model_conversation.py"
    with tempfile.TemporaryDirectory(prefix="mmc-paste-") as tmp:
        async with real_model.deployment(Path(tmp), pipe, n_ctx, True) as (owui, server):
            client = await owui.connect()
            client.answer(
                "execute",
                {
                    "rounds": 1,
                    "participants": [
                        {"model": real_model.MODEL, "alias": name, "system_message": persona}
                        for name, persona in real_model.PEOPLE
                    ],
                },
            )
            try:
                measured, chat_id = await real_model.measure_message(
                    owui, client, server, "mmc.Conversation-pipe", report(chars) + QUESTION
                )
                row = await owui.get_chat(chat_id)
            finally:
                await client.disconnect()
            history = row["chat"]["history"]["messages"].values()
            message = "".join(m["content"] for m in history if m["role"] == "assistant")
            statuses = server.statuses()
    return {
        "paste_chars": chars,
        "n_ctx": n_ctx,
        **measured.as_dict(),
        "title": measured.title[:80],  # the host's fallback is the whole paste
        "told_shortened": len(re.findall(r"Your message was shortened", message)),
        "server_statuses": statuses,
        "refused_after_the_first": max(0, sum(1 for s in statuses if s >= 400) - 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chars", type=int, default=20_000)
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not real_model.available():
        raise SystemExit("no llama server venv or GGUF in the cache: run scripts/test --real-model")
    figures = asyncio.run(measure(args.chars, args.n_ctx))
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
