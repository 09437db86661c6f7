"""Precision and recall of the speaker guard and its stop sequences, on a labelled corpus.

    python -m bench.guard                                 # the figures, new guard beside old
    python -m bench.guard --generate 10 --out raw.json   # fresh SmolLM2 replies, to label

The corpus (tests/guard_corpus.json) holds legitimate replies and impersonations: replies in
which a participant starts a line as someone else. Each impersonation came from SmolLM2-135M
(the server of tests/integration/real_model.py) answering one of the SCENARIOS below with no
stop sequences and no guard; the corpus records the scenario's messages, the seed and the
sampling. A reply is "cut" where the server's stop sequence or the guard ends it; an
impersonation is caught when the cut falls on its first impersonating line, and a cut on any
other line of any reply cuts legitimate text. The old guard is main's at 09aa316, read from
git; `--record-baseline` stores its outcomes in the corpus for the unit test to compare with.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import multi_model_conversation as mmc

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "tests" / "guard_corpus.json"
BASELINE = "09aa316"  # main before issue 18's guard
SAMPLING = {"max_tokens": 220, "temperature": 0.8}
TRIP = [
    (None, "Let's plan a weekend trip to the mountains."),
    ("Mia", "Oh, I love this! I know a trail near Lake Tahoe with a waterfall at the top."),
    ("Priya", "Count me in, but we need a plan for food. I can cook chili on the camp stove."),
]
REVIEW = [
    (None, "Review this function:\n\ndef div(a, b):\n    return a / b"),
    ("Security", "No input comes from outside here, so I see no injection risk."),
    ("Clarity", "The name `div` is short but clear; a docstring would help."),
]
DEBATE = [
    (None, "Motion: remote work is better than office work."),
    ("Pro", "Remote work saves hours of commuting and lets people focus without interruptions."),
]
BRAINSTORM = [
    (None, "Ideas for a neighbourhood festival?"),
    ("Dreamer", "A night market lit only by lanterns that the children make themselves!"),
    ("Skeptic", "Lanterns near wooden stalls are a fire risk; who pays for insurance?"),
]
INTERVIEW = [
    (None, "Interview for a junior backend developer."),
    ("Interviewer", "Tell me about a bug you found hard to fix, and how you found it."),
]
NOTES = [
    (None, "Plan the team offsite."),
    ("Note", "We have a budget of 3000 euros and twelve people."),
    ("Summary", "So far: budget 3000, twelve people, no date yet."),
]
STANDUP = [
    (None, "Daily standup: what did everyone do yesterday, and what is blocking you?"),
    ("Marta", "Yesterday I finished the login page. Today the password reset. No blockers."),
    ("Omar", "I'm still waiting for the API keys from the vendor, so the sync job is stuck."),
]
DINNER = [
    (None, "Plan a three-course dinner for six, one of them vegan."),
    ("Critic", "Last time the starter was far too salty. Keep it simple this time."),
    ("Guest", "I'd love something with mushrooms, and please no coriander!"),
]
PANEL = [
    (None, "Review this:\n\ndef load(path):\n    return json.load(open(path))"),
    ("Correctness", "The file is never closed, and a missing file raises an unhelpful error."),
    ("Security", "If path comes from a user, this reads any file on the server."),
]
COUNCIL = [
    (None, "Should a five-person startup use microservices?"),
    ("Analyst", "No: the overhead of deploying and monitoring many services outweighs the gain."),
    ("Expert", "A modular monolith gives the same boundaries without the network calls."),
]
JAPANESE = [
    (None, "週末の旅行の計画を立てましょう。"),
    ("ベン", "山に行きたいです。湖の近くに良い小屋があります。"),
    ("チェン", "私は食べ物を担当します。カレーを作れます。"),
]
PLAIN: Callable[[str, str], str] = lambda name, text: f"{name}: {text}"  # noqa: E731
# name: (speaker, others, turns, label format, persona)
SCENARIOS: dict[str, tuple[str, tuple[str, ...], list, Callable[[str, str], str], str]] = {
    "trip-pipe": ("Tom", ("Mia", "Priya"), TRIP, mmc.speaker_label, "a careful accountant"),
    "trip-plain": ("Tom", ("Mia", "Priya"), TRIP, PLAIN, "a careful accountant"),
    "review-plain": ("Correctness", ("Security", "Clarity"), REVIEW, PLAIN, "a code reviewer"),
    "debate-plain": ("Con", ("Pro",), DEBATE, PLAIN, "arguing against the motion"),
    "brainstorm-plain": ("Builder", ("Dreamer", "Skeptic"), BRAINSTORM, PLAIN, "a builder"),
    "interview-plain": ("Candidate", ("Interviewer",), INTERVIEW, PLAIN, "a job candidate"),
    "notes-plain": ("Ana", ("Note", "Summary"), NOTES, PLAIN, "an organiser"),
    # Added for issue 26 (never tuned on): more voices, formats and languages.
    "standup-pipe": ("Liu", ("Marta", "Omar"), STANDUP, mmc.speaker_label, "a backend developer"),
    "standup-plain": ("Liu", ("Marta", "Omar"), STANDUP, PLAIN, "a backend developer"),
    "dinner-pipe": ("Chef", ("Critic", "Guest"), DINNER, mmc.speaker_label, "a chef"),
    "dinner-plain": ("Chef", ("Critic", "Guest"), DINNER, PLAIN, "a chef"),
    "panel-pipe": ("Clarity", ("Correctness", "Security"), PANEL, mmc.speaker_label, "a reviewer"),
    "council-plain": ("Contrarian", ("Analyst", "Expert"), COUNCIL, PLAIN, "a contrarian"),
    "japanese-plain": ("アナ", ("ベン", "チェン"), JAPANESE, PLAIN, "旅行の計画係"),
}


def scenario_messages(name: str) -> list[dict]:
    """The participant's view as the pipe builds it (messages_for), with the scenario's label."""
    own, others, turns, label, persona = SCENARIOS[name]
    saved, mmc.speaker_label = mmc.speaker_label, label
    try:
        view = mmc.messages_for(own, [mmc.Turn(s, t) for s, t in turns], "User")
    finally:
        mmc.speaker_label = saved
    system = mmc.fill_template(
        mmc.DEFAULT_SHARED_INSTRUCTION, {"alias": own, "others": ", ".join(others)}
    )
    return [{"role": "system", "content": f"You are {own}, {persona}.\n\n{system}"}, *view]


# -- scoring ----------------------------------------------------------------------------------


def no_stops(*_: Any) -> list[str]:
    return []


def said_before(item: dict) -> dict[str, str]:
    """What each speaker said before the reply: the item's own record, else its scenario's."""
    if "said" in item:
        return item["said"]
    source = item.get("source")
    if not isinstance(source, dict) or source.get("scenario") not in SCENARIOS:
        return {}
    said: dict[str, str] = {}
    for speaker, text in SCENARIOS[source["scenario"]][2]:
        name = item["user"] if speaker is None else speaker
        said[name] = f"{said.get(name, '')}\n{text}"
    return said


def cut_line(
    item: dict, guard: type, stops: Callable[..., list[str]]
) -> tuple[int | None, bool, str]:
    """The index of the line where the reply is cut (None: not cut), whether the server's stop
    sequence cut it (it ends the text where the sequence begins, wherever that is), and what
    the guard let through."""
    own, others, user = item["own"], item["others"], item["user"]
    text = item["text"]
    at = min((i for s in stops(own, [own, *others], user) if (i := text.find(s)) >= 0), default=-1)
    sent = text[:at] if at >= 0 else text
    if hasattr(guard, "_speaks"):
        g = guard(own, [own, *others, user], said_before(item))
    else:
        g = guard(own, [own, *others, user, "User"])
    if hasattr(g, "held_back"):
        shown = g.feed(sent) + g.flush()
        if g.stopped_by is not None:
            return sent[: len(sent) - len(g.held_back)].count("\n"), False, shown
    else:
        shown = []
        for index, line in enumerate(sent.splitlines(keepends=True)):
            shown.append(g.feed(line))
            if g.stopped_by is not None:
                return index, False, "".join(shown)
        shown.append(g.flush())
        shown = "".join(shown)
    at_line = text[:at].count("\n") + 1 if at >= 0 else None
    return at_line, at >= 0, shown


def outcomes(corpus: dict, guard: type, stops: Callable[..., list[str]]) -> dict[str, list[str]]:
    """Item ids by outcome: caught, missed, legit_cut (a cut on a legitimate line), kept;
    by_server (the caught ones that the stop sequence ended before the guard saw them) and
    changed (legitimate replies not cut whose text the guard changed: a label it dropped)."""
    out: dict[str, list[str]] = {k: [] for k in ("caught", "missed", "legit_cut", "kept")}
    out["by_server"], out["changed"] = [], []
    for item in corpus["items"]:
        line, by_server, shown = cut_line(item, guard, stops)
        want = item["line"]  # the first impersonating line's index; None when legitimate
        if line is not None and line != want:
            out["legit_cut"].append(item["id"])
        elif want is not None:
            out["caught" if line == want else "missed"].append(item["id"])
            if line == want and by_server:
                out["by_server"].append(item["id"])
        else:
            out["kept"].append(item["id"])
            if shown != item["text"]:
                out["changed"].append(item["id"])
    return out


def old_pipe(rev: str = BASELINE) -> types.ModuleType | None:
    """The pipe as it was at `rev` (None where git or that commit is not at hand)."""
    try:
        source = subprocess.run(
            ["git", "show", f"{rev}:multi_model_conversation.py"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    module = types.ModuleType(f"mmc_{rev}")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, f"{rev}:multi_model_conversation.py", "exec"), module.__dict__)  # noqa: S102
    return module


def guards(old: types.ModuleType | None) -> dict[str, tuple[type, Callable[..., list[str]]]]:
    """The guards measured side by side: this checkout's, and the old one's when at hand."""
    rows = {
        "this branch: guard + stop sequences": (mmc.SpeakerGuard, mmc.stop_sequences),
        "this branch: guard alone": (mmc.SpeakerGuard, no_stops),
    }
    if old is not None:
        rows[f"this branch's guard + {BASELINE}'s `\\nName:` stops"] = (
            mmc.SpeakerGuard,
            old.stop_sequences,
        )
        rows[f"{BASELINE}: guard + stop sequences"] = (old.SpeakerGuard, old.stop_sequences)
        rows[f"{BASELINE}: guard alone"] = (old.SpeakerGuard, no_stops)
    return rows


def figures(corpus: dict, old: types.ModuleType | None) -> dict[str, dict[str, Any]]:
    """Counts, precision and recall of each guard on the corpus."""
    result = {}
    impersonations = sum(1 for i in corpus["items"] if i["line"] is not None)
    for name, (guard, stops) in guards(old).items():
        o = outcomes(corpus, guard, stops)
        cuts = len(o["caught"]) + len(o["legit_cut"])
        result[name] = {
            **{k: len(v) for k, v in o.items()},
            "precision": len(o["caught"]) / cuts if cuts else 1.0,
            "recall": len(o["caught"]) / impersonations if impersonations else 1.0,
            "ids": o,
        }
    return result


def load(path: Path = CORPUS) -> dict:
    return json.loads(path.read_text())


def label_forms(corpus: dict) -> dict[str, int]:
    """How the impersonations' first lines begin: the evidence for what opens a turn."""
    forms = {"plain label, then a capital or a quote": 0, "plain label, then lowercase": 0}
    forms |= {"bold or italic label": 0, "no label read": 0}
    for item in corpus["items"]:
        if item["line"] is None:
            continue
        line = item["text"].splitlines()[item["line"]]
        names = [n.casefold() for n in (item["own"], *item["others"], item["user"], "User")]
        start = mmc.read_line_start(line, sorted(names, key=len, reverse=True), ended=True)
        if start.verdict != "label":
            forms["no label read"] += 1
        elif start.marked:
            forms["bold or italic label"] += 1
        else:
            forms[
                "plain label, then " + ("a capital or a quote" if start.opens_turn else "lowercase")
            ] += 1
    return forms


def record_baseline(corpus: dict, old: types.ModuleType) -> None:
    """Stores the old guard's outcomes (with its stop sequences) in the corpus file."""
    o = outcomes(corpus, old.SpeakerGuard, old.stop_sequences)
    corpus["baseline"] = {"rev": BASELINE, **{k: o[k] for k in ("caught", "missed", "legit_cut")}}
    CORPUS.write_text(json.dumps(corpus, indent=1, ensure_ascii=False) + "\n")


def report(corpus: dict, old: types.ModuleType | None) -> None:
    legit = sum(1 for i in corpus["items"] if i["line"] is None)
    print(f"{legit} legitimate replies, {len(corpus['items']) - legit} impersonations\n")
    print(
        "| guard | caught (by the server) | missed | legitimate replies cut (label dropped) "
        "| precision | recall |"
    )
    print("|---|---|---|---|---|---|")
    if old is None:
        print(f"({BASELINE} is not in this checkout's git history: the old guard is left out)")
    results = figures(corpus, old)
    for name, f in results.items():
        print(
            f"| {name} | {f['caught']} ({f['by_server']}) | {f['missed']} "
            f"| {f['legit_cut']} ({f['changed']}) "
            f"| {f['precision']:.2f} | {f['recall']:.2f} |"
        )
    for name, f in results.items():
        print(f"\n{name}:\n  legitimate cut: {', '.join(f['ids']['legit_cut']) or '-'}")
        print(f"  label dropped: {', '.join(f['ids']['changed']) or '-'}")
        print(f"  missed: {', '.join(f['ids']['missed']) or '-'}")
    print("\nThe impersonations' first lines:")
    for form, count in label_forms(corpus).items():
        print(f"  {form}: {count}")


# -- the echo guard, through the pipe ---------------------------------------------------------
#
# An echo case is a short conversation on the scripted backend (tests/fakes.py): every
# participant's replies are scripted, one of them is the case's reply. The case is measured
# through the whole pipe, so the bench measures whatever guard the tree holds, whatever its
# interface: the reply is "kept" when its whole text reaches the transcript and no ✂️ mark
# is shown, else it was cut.


def pipe_at(rev: str | None) -> tuple[types.ModuleType, types.ModuleType] | None:
    """The pipe module and the fakes of the tests bound to it: this checkout's, or `rev`'s."""
    if rev is None:
        from tests import fakes

        return mmc, fakes
    old = old_pipe(rev)
    try:
        source = subprocess.run(
            ["git", "show", f"{rev}:tests/fakes.py"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    if old is None:
        return None
    fakes = types.ModuleType(f"fakes_{rev}")
    saved = sys.modules.get("multi_model_conversation")
    sys.modules["multi_model_conversation"] = old  # the fakes import the pipe by that name
    sys.modules[fakes.__name__] = fakes
    try:
        exec(compile(source, f"{rev}:tests/fakes.py", "exec"), fakes.__dict__)  # noqa: S102
    finally:
        if saved is not None:
            sys.modules["multi_model_conversation"] = saved
    return old, fakes


def flat(text: str) -> str:
    return " ".join(text.split())


async def run_case(pipe: tuple[types.ModuleType, types.ModuleType], case: dict) -> str:
    """The case's conversation on the scripted backend: the pipe's answer (the transcript)."""
    _, fakes = pipe
    people = case["participants"]
    models = {f"m{i}": f"Model {i}" for i in range(len(people))}
    closing = case.get("closing")
    if closing:
        models["mc"] = "Closing model"
    h = fakes.PipeHarness(models=models)
    config = {
        "rounds": 1,
        **case.get("config", {}),
        "participants": [
            {"model": f"m{i}", "alias": alias, "system_message": persona}
            for i, (alias, persona) in enumerate(people)
        ],
    }
    if closing:
        config["closing"] = {"model": "mc", "alias": closing[0], "prompt": closing[1]}
    h.host.chat_configs["chat-1"] = config
    ids = {alias: f"m{i}" for i, (alias, _) in enumerate(people)}
    if closing:
        ids[closing[0]] = "mc"
    for alias, model in ids.items():
        texts = case["script"].get(alias, [])
        h.host.scripts[model] = fakes.Script(
            streams=[fakes.reply(t) for t in texts], default_text="Fine."
        )
    return await h.run(case.get("user", "Hello everyone"))


def echo_outcomes(cases: list[dict], pipe: tuple) -> dict[str, list[str]]:
    """Case ids by outcome: caught (a copy cut), missed, legit_cut, kept."""
    out: dict[str, list[str]] = {k: [] for k in ("caught", "missed", "legit_cut", "kept")}
    for case in cases:
        alias, nth = case["case"]
        reply = case["script"][alias][nth]
        result = asyncio.run(run_case(pipe, case))
        kept = flat(reply) in flat(result) and "✂️" not in result
        if case["echo"]:
            out["missed" if kept else "caught"].append(case["id"])
        else:
            out["kept" if kept else "legit_cut"].append(case["id"])
    return out


# -- generating replies -----------------------------------------------------------------------


def generate(seeds: range, scenarios: list[str], sampling: dict, out: Path) -> None:
    """Fresh SmolLM2 replies to each scenario for each seed, for labelling by hand."""
    import tempfile

    from bench.labels import ask
    from tests.integration import real_model

    if not real_model.available():
        raise SystemExit("no llama server venv or GGUF in the cache: run scripts/test --real-model")
    replies = []
    with tempfile.TemporaryDirectory(prefix="mmc-guard-") as tmp:
        server = real_model.LlamaServer(Path(tmp))
        server.start()
        try:
            for name in scenarios:
                for seed in seeds:
                    body = {
                        "model": real_model.MODEL,
                        "messages": scenario_messages(name),
                        "seed": seed,
                        **sampling,
                    }
                    reply = ask(server, body)
                    source = {"scenario": name, "seed": seed, **sampling}
                    replies.append({"source": source, "text": reply})
                    print(json.dumps(replies[-1], ensure_ascii=False), flush=True)
        finally:
            server.stop()
    out.write_text(json.dumps(replies, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generate", type=int, metavar="N", help="N seeds per scenario")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--max-tokens", type=int, default=SAMPLING["max_tokens"])
    parser.add_argument("--temperature", type=float, default=SAMPLING["temperature"])
    parser.add_argument("--record-baseline", action="store_true", help="write the old outcomes")
    parser.add_argument("--scenario", action="append", choices=SCENARIOS, help="default: all")
    parser.add_argument("--out", type=Path, default=Path("guard-replies.json"))
    args = parser.parse_args()
    if args.generate:
        seeds = range(args.first_seed, args.first_seed + args.generate)
        sampling = {"max_tokens": args.max_tokens, "temperature": args.temperature}
        generate(seeds, args.scenario or list(SCENARIOS), sampling, args.out)
    elif args.record_baseline:
        record_baseline(load(), old_pipe())
    else:
        report(load(), old_pipe())
