"""Precision and recall of the speaker guard and the echo guard, this tree's beside today's
main's, on the whole labelled corpus and on its held-out part.

    python -m bench.guard                                 # the figures, both guards, new and old
    python -m bench.guard --generate 10 --out raw.json   # fresh SmolLM2 replies, to label

Speaker guard: tests/guard_corpus.json (issue 18's corpus, all of it tuned on) and the
`speaker` items of tests/guard_corpus_wide.json (issue 26) hold legitimate replies and
impersonations: replies in which a participant starts a line as someone else. Each model reply
came from SmolLM2-135M (the server of tests/integration/real_model.py) answering one of the
SCENARIOS below with no stop sequences and no guard; an item records its scenario, seed and
sampling. A reply is "cut" where the server's stop sequence or the guard ends it; an
impersonation is caught when the cut falls on its first impersonating line, and a cut on any
other line of any reply cuts legitimate text.

Echo guard: the `echo` cases of tests/guard_corpus_wide.json are short conversations run
through the whole pipe on the scripted backend, so whatever guard the tree holds is measured;
a copy must be cut, a legitimate reply kept whole (see `run_case`).

Items marked `"split": "held_out"` were never tuned on. Today's guards are main's at 16ddf33,
read from git.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
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
WIDE = ROOT / "tests" / "guard_corpus_wide.json"
BASELINE = "09aa316"  # main before issue 18's guard (guard_corpus.json records its outcomes)
TODAY = "16ddf33"  # main when issue 26 was filed: the guards it found
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
    the guard let through. Guards of issue 26 on know the closing speaker and what each
    speaker said before; older ones had `User` always on their list."""
    own, others, user = item["own"], item["others"], item["user"]
    closing = item.get("closing", "")
    text = item["text"]
    evidence = "said" in inspect.signature(guard).parameters
    voices = [own, *others]
    sequences = stops(own, voices, user, closing) if evidence else stops(own, voices, user)
    at = min((i for s in sequences if (i := text.find(s)) >= 0), default=-1)
    sent = text[:at] if at >= 0 else text
    if evidence:
        g = guard(own, [own, *others, closing, user], said_before(item))
        shown = g.feed(sent) + g.flush()
        if g.stopped_by is not None:
            return sent[: len(sent) - len(g.held_back)].count("\n"), False, shown
    else:
        g = guard(own, [own, *others, user, "User"])
        pieces = []
        for index, line in enumerate(sent.splitlines(keepends=True)):
            pieces.append(g.feed(line))
            if g.stopped_by is not None:
                return index, False, "".join(pieces)
        shown = "".join(pieces) + g.flush()
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


def load(path: Path = CORPUS) -> dict:
    return json.loads(path.read_text())


def speaker_items() -> list[dict]:
    """Every speaker item: issue 18's corpus (tuned on), then issue 26's."""
    old = [{**item, "split": "tuning"} for item in load()["items"]]
    return old + load(WIDE)["speaker"]


def label_forms(items: list[dict]) -> dict[str, int]:
    """How the impersonations' first lines begin: the evidence for what opens a turn."""
    forms: dict[str, int] = {}
    for item in items:
        if item["line"] is None:
            continue
        line = item["text"].splitlines()[item["line"]]
        names = {n.casefold(): n for n in (item["own"], *item["others"], item["user"])}
        label = mmc.read_label(line, names, item["own"].casefold())
        form = (
            "no label read"
            if label is None
            else f"{'`Name said:`' if label.said else '`Name:`'}"
            f"{', bold or italic' if label.marked else ''}"
            f"{', then lowercase' if label.addressed else ''}"
        )
        forms[form] = forms.get(form, 0) + 1
    return forms


def record_baseline(corpus: dict, old: types.ModuleType) -> None:
    """Stores the old guard's outcomes (with its stop sequences) in the corpus file."""
    o = outcomes(corpus, old.SpeakerGuard, old.stop_sequences)
    corpus["baseline"] = {"rev": BASELINE, **{k: o[k] for k in ("caught", "missed", "legit_cut")}}
    CORPUS.write_text(json.dumps(corpus, indent=1, ensure_ascii=False) + "\n")


def rates(o: dict[str, list[str]]) -> dict[str, Any]:
    """Precision (of the cuts, how many cut a real impersonation or copy) and recall."""
    positives = len(o["caught"]) + len(o["missed"])
    cuts = len(o["caught"]) + len(o["legit_cut"])
    negatives = len(o["kept"]) + len(o["legit_cut"])
    return {
        "caught": f"{len(o['caught'])}/{positives}",
        "legit_cut": f"{len(o['legit_cut'])}/{negatives}",
        "precision": len(o["caught"]) / cuts if cuts else 1.0,
        "recall": len(o["caught"]) / positives if positives else 1.0,
    }


def parts(items: list[dict]) -> dict[str, list[dict]]:
    return {"whole": items, "held out": [i for i in items if i.get("split") == "held_out"]}


def measure() -> list[dict[str, Any]]:
    """Every row of the table: guard, version, part, outcomes and rates."""
    rows = []
    today = old_pipe(TODAY)
    speakers = {"this tree": (mmc.SpeakerGuard, mmc.stop_sequences)}
    if today is not None:
        speakers[f"{TODAY} (today)"] = (today.SpeakerGuard, today.stop_sequences)
    for part, items in parts(speaker_items()).items():
        for version, (guard, stops) in speakers.items():
            o = outcomes({"items": items}, guard, stops)
            row = {"guard": "speaker", "version": version, "part": part, "ids": o}
            rows.append({**row, **rates(o)})
    pipes = {"this tree": pipe_at(None), f"{TODAY} (today)": pipe_at(TODAY)}
    for part, cases in parts(load(WIDE)["echo"]).items():
        for version, pipe in pipes.items():
            if pipe is None:
                continue
            o = echo_outcomes(cases, pipe)
            row = {"guard": "echo", "version": version, "part": part, "ids": o}
            rows.append({**row, **rates(o)})
    return rows


def report() -> None:
    items, cases = speaker_items(), load(WIDE)["echo"]
    held = sum(i.get("split") == "held_out" for i in items)
    print(
        f"speaker: {len(items)} replies ({sum(i['line'] is not None for i in items)} "
        f"impersonations), {held} held out; echo: {len(cases)} cases "
        f"({sum(c['echo'] for c in cases)} copies), "
        f"{sum(c.get('split') == 'held_out' for c in cases)} held out\n"
    )
    print(
        "| guard | version | part | cut / impersonations or copies | legitimate cut "
        "| precision | recall |"
    )
    print("|---|---|---|---|---|---|---|")
    rows = measure()
    for r in rows:
        print(
            f"| {r['guard']} | {r['version']} | {r['part']} | {r['caught']} | {r['legit_cut']} "
            f"| {r['precision']:.2f} | {r['recall']:.2f} |"
        )
    for r in rows:
        if r["part"] == "whole":
            print(f"\n{r['guard']} guard, {r['version']}:")
            print(f"  legitimate cut: {', '.join(r['ids']['legit_cut']) or '-'}")
            print(f"  missed: {', '.join(r['ids']['missed']) or '-'}")
    print("\nThe impersonations' first lines:")
    for form, count in label_forms(items).items():
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


# Setups for real echo cases: earlier turns scripted, the case speaker's reply from SmolLM2.
TRIO = [
    ["Ana", "You plan trips carefully."],
    ["Ben", "You care about costs."],
    ["Chen", "You love food."],
]
ECHO_SETUPS: dict[str, dict] = {
    "trip": {
        "participants": TRIO,
        "user": "Plan a weekend in the mountains for the three of us.",
        "script": {
            "Ana": [
                "Let's take the early train on Saturday, sleep in the hut by the lake and "
                "walk down through the forest on Sunday afternoon."
            ],
            "Ben": [
                "The hut costs 30 euros a night each, the train 24 return, so about 55 "
                "euros each if we cook our own food."
            ],
        },
        "case": ["Chen", 0],
    },
    "debate": {
        "participants": [["Pro", "You argue FOR the motion."], ["Con", "You argue AGAINST."]],
        "user": "Motion: cities should ban cars from their centres.",
        "config": {"rounds": 2},
        "script": {
            "Pro": [
                "Car-free centres cut pollution and noise, make streets safe for children "
                "and bring shoppers back to small businesses.",
                "Delivery vans can keep early-morning slots.",
            ],
            "Con": [
                "A ban hurts people who cannot walk far, and shops lose customers from "
                "the suburbs who have no train."
            ],
        },
        "case": ["Con", 1],
    },
    "stop": {
        "participants": [["Ana", "You plan carefully."], ["Ben", "You care about costs."]],
        "user": "Agree on a date for the team dinner.",
        "config": {"stop_phrase": "We have reached a final agreement", "rounds": 2},
        "script": {
            "Ana": ["Friday the 14th works for me, at the Italian place near the office."],
            "Ben": ["Friday the 14th is fine by me as well."],
        },
        "case": ["Ana", 1],
    },
    "council": {
        "participants": [
            ["Analyst", "Answer carefully, with the reasoning shown."],
            ["Expert", "Answer as a domain expert, precisely."],
            ["Contrarian", "Answer, and test the obvious answer."],
        ],
        "user": "Should a five-person startup use microservices?",
        "config": {"selection": "council", "rounds": 2},
        "script": {
            "Analyst": [
                "No. With five people, every extra service is another deploy, another "
                "dashboard and another failure mode; keep one codebase with clear modules."
            ],
            "Expert": [
                "No. A modular monolith gives clear boundaries without the cost of "
                "running many services.",
                "Same answer.",
            ],
            "Contrarian": [
                "Usually no, unless parts of the product scale very differently.",
                "Same answer.",
            ],
        },
        "case": ["Analyst", 1],
    },
}


def generate_echo(seeds: range, sampling: dict, out: Path) -> None:
    """Real echo cases: each setup's request as the pipe builds it, answered by SmolLM2."""
    import tempfile

    from bench.labels import ask
    from tests.integration import real_model

    if not real_model.available():
        raise SystemExit("no llama server venv or GGUF in the cache: run scripts/test --real-model")
    cases = []
    with tempfile.TemporaryDirectory(prefix="mmc-echo-") as tmp:
        server = real_model.LlamaServer(Path(tmp))
        server.start()
        try:
            for name, setup in ECHO_SETUPS.items():
                for seed in seeds:
                    case = json.loads(json.dumps(setup))
                    alias, nth = case["case"]
                    case["script"].setdefault(alias, [])
                    for at in range(nth + 1) if case.get("first") else [nth]:
                        request = asyncio.run(asked(case, alias, at))
                        body = {
                            "model": real_model.MODEL,
                            "messages": request["messages"],
                            "seed": seed,
                            **sampling,
                        }
                        if request.get("stop"):
                            body["stop"] = request["stop"]
                        text = ask(server, body).strip()
                        script = case["script"][alias]
                        script[at : at + 1] = [text]
                    case.pop("first", None)
                    case.update(
                        {
                            "id": f"echo-{name}-{seed}-t{sampling['temperature']}",
                            "source": {"setup": name, "seed": seed, **sampling},
                        }
                    )
                    cases.append(case)
                    print(json.dumps(case, ensure_ascii=False), flush=True)
        finally:
            server.stop()
    out.write_text(json.dumps(cases, indent=1, ensure_ascii=False))


async def asked(case: dict, alias: str, nth: int) -> dict:
    """The request the pipe makes for `alias`'s `nth` reply in the case's conversation."""
    _, fakes = pipe_at(None)
    probe = json.loads(json.dumps(case))
    probe["script"][alias] = [*probe["script"][alias][:nth], "(placeholder)"]
    h_requests: list[dict] = []
    original = fakes.PipeHarness.run

    async def run(self, *args, **kwargs):
        try:
            return await original(self, *args, **kwargs)
        finally:
            h_requests.extend(self.host.requests)

    fakes.PipeHarness.run = run
    try:
        await run_case((mmc, fakes), probe)
    finally:
        fakes.PipeHarness.run = original
    model = f"m{[a for a, _ in case['participants']].index(alias)}"
    mine = [r for r in h_requests if r["model"] == model and r.get("stream")]
    return mine[nth]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generate", type=int, metavar="N", help="N seeds per scenario")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--max-tokens", type=int, default=SAMPLING["max_tokens"])
    parser.add_argument("--temperature", type=float, default=SAMPLING["temperature"])
    parser.add_argument("--record-baseline", action="store_true", help="write the old outcomes")
    parser.add_argument("--scenario", action="append", choices=SCENARIOS, help="default: all")
    parser.add_argument("--generate-echo", type=int, metavar="N", help="N seeds per echo setup")
    parser.add_argument("--out", type=Path, default=Path("guard-replies.json"))
    args = parser.parse_args()
    if args.generate_echo:
        seeds = range(args.first_seed, args.first_seed + args.generate_echo)
        sampling = {"max_tokens": args.max_tokens, "temperature": args.temperature}
        generate_echo(seeds, sampling, args.out)
    elif args.generate:
        seeds = range(args.first_seed, args.first_seed + args.generate)
        sampling = {"max_tokens": args.max_tokens, "temperature": args.temperature}
        generate(seeds, args.scenario or list(SCENARIOS), sampling, args.out)
    elif args.record_baseline:
        record_baseline(load(), old_pipe())
    else:
        report()
