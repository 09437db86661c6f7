"""Which label for other speakers' turns keeps a small real model from writing their lines?

    python -m bench.labels [--samples 12] [--json docs/labels.json]

Serves SmolLM2-135M (see tests/integration/real_model.py) and asks it, as Tom, to answer a
conversation in which Mia and Priya spoke, with their turns labelled in each candidate format.
No stop sequences and no guard: it counts the raw reply lines where the model starts speaking
as someone else (any of the formats' labels, with or without markup), per format, over the
same seeds. The pipe's format is `speaker_label` in multi_model_conversation.py.
Needs the cached server venv that `scripts/test --real-model` builds.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path

import multi_model_conversation as mmc
from tests.integration import real_model

FORMATS: dict[str, Callable[[str, str], str]] = {
    "pipe": mmc.speaker_label,
    "said": lambda name, text: f"{name} said:\n{text}",
    "quoted": lambda name, text: f'{name} said: "{text}"',
    "bracket": lambda name, text: f"[{name}]\n{text}",
    "xml": lambda name, text: f'<message from="{name}">\n{text}\n</message>',
}
OTHERS = ("Mia", "Priya", "User", "Tom")  # Tom is the speaker: his own name as a label counts too
TURNS = [
    (None, "Let's plan a weekend trip to the mountains."),
    (
        "Mia",
        "Oh, I love this! I know a trail near Lake Tahoe with a waterfall at the top. We could "
        "camp one night and hike at sunrise. Who's in for an early start?",
    ),
    (
        "Priya",
        "Count me in, but we need a plan for food. I can cook a big pot of chili on the camp "
        "stove and pack trail mix. Does anyone have dietary needs?",
    ),
]
_IMITATION = re.compile(
    r"^[\s*_#>\[(<\"]*(?:message from=\"?)?(" + "|".join(OTHERS) + r")\b[\]\)\"*_>]*"
    r"\s*(?::|said\s*:|wrote\s*:|$)",
    re.IGNORECASE,
)


def imitation_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if _IMITATION.match(line)]


def messages(label: Callable[[str, str], str]) -> list[dict]:
    """Tom's view, built by the pipe's own messages_for with `label` in place of its format."""
    turns = [mmc.Turn(speaker, text) for speaker, text in TURNS]
    saved, mmc.speaker_label = mmc.speaker_label, label
    try:
        view = mmc.messages_for("Tom", turns, "User")
    finally:
        mmc.speaker_label = saved
    system = mmc.fill_template(
        mmc.DEFAULT_SHARED_INSTRUCTION, {"alias": "Tom", "others": "Mia, Priya"}
    )
    persona = dict(real_model.PEOPLE)["Tom"]
    return [{"role": "system", "content": f"{persona}\n\n{system}"}, *view]


def ask(server: real_model.LlamaServer, body: dict) -> str:
    request = urllib.request.Request(  # noqa: S310 (our own server on 127.0.0.1)
        f"{server.url}/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=300) as response:  # noqa: S310
        return json.loads(response.read())["choices"][0]["message"]["content"] or ""


def measure(server: real_model.LlamaServer, samples: int) -> dict[str, dict]:
    results = {}
    for name, label in FORMATS.items():
        lines, replies_with = 0, 0
        examples: list[str] = []
        for seed in range(samples):
            body = {
                "model": real_model.MODEL,
                "messages": messages(label),
                "max_tokens": 250,
                "temperature": 0.8,
                "seed": seed,
            }
            found = imitation_lines(ask(server, body))
            lines += len(found)
            replies_with += bool(found)
            examples += found[:1]
        results[name] = {
            "samples": samples,
            "imitation_lines": lines,
            "replies_with_imitation": replies_with,
            "examples": examples[:3],
        }
        print(json.dumps({name: results[name]}, ensure_ascii=False), flush=True)
    return results


def main(samples: int, out: Path | None) -> None:
    if not real_model.available():
        raise SystemExit("no llama server venv or GGUF in the cache: run scripts/test --real-model")
    with tempfile.TemporaryDirectory(prefix="mmc-labels-") as tmp:
        server = real_model.LlamaServer(Path(tmp))
        server.start()
        try:
            results = measure(server, samples)
        finally:
            server.stop()
    print("\n| format | imitation lines | replies with one |\n|---|---|---|")
    for name, r in results.items():
        n = r["samples"]
        print(f"| {name} | {r['imitation_lines']} | {r['replies_with_imitation']}/{n} |")
    if out:
        out.write_text(json.dumps(results, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=12, help="replies per format (seeds)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    main(args.samples, args.json)
