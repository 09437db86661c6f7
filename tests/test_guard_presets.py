"""What must not be cut (issue 26): every shipped preset's personas, on the scripted backend,
answering in the formats that preset invites (a scorecard, quoted claims, interview notes, a
ranking...). Each reply must reach the transcript whole, with no ✂️ mark, and be heard whole
by the speakers after it. The examples of the issue that main cut are here too.
"""

from __future__ import annotations

import pytest

import multi_model_conversation as mmc
from tests.fakes import PipeHarness, Script, reply

SCORECARD = (
    "A scorecard across the three areas:\n\n"
    "Correctness: Off-by-one in the loop bound: the last item is skipped.\n"
    "Security: The API key is written to the debug log.\n"
    "Clarity: The helper names are fine, the docstring is stale.\n\n"
    "I would block on the key leak."
)
# Per preset: each speaker's replies in the order it is asked (participants, then closing).
FORMATS: dict[str, dict[str, list[str]]] = {
    "review_panel": {
        "Correctness": [SCORECARD, "Still blocking on the key leak."],
        "Security": [
            "**Correctness:** agreed, the bound is wrong.\n"
            "**Security:** the key must go; rotate it too.\n\n"
            "| Risk | Severity |\n|---|---|\n| Key in log | High |\n| Off-by-one | Low |",
            "Nothing new from me.",
        ],
        "Clarity": [
            "Checklist before merge:\n- [ ] Correctness: fix the bound\n"
            "- [ ] Security: remove the log line\n- [x] Clarity: names are fine",
            "Done.",
        ],
    },
    "interview": {
        "Interviewer": [
            "Question 1: Tell me about a bug you found hard to fix.\n"
            "Notes: The role needs someone who debugs production issues.",
            "Candidate: please be concrete: what did the logs show?",
            "Thanks.",
            "THAT CONCLUDES THE INTERVIEW",
        ],
        "Candidate": [
            "Situation: A payment job failed once a week.\n"
            "Task: Find why without stopping payments.\n"
            "Action: I added tracing and replayed the failing batch.\n"
            "Result: A timezone bug; fixed with a test.",
            "The logs showed the job starting twice at the DST change.",
            "No questions from me.",
        ],
        "Notes": [
            "Strengths: Clear debugging story, writes tests.\n"
            "Concerns: Little experience with queues.\n"
            "Recommendation: Hire.\n"
            "Candidate: Strong on debugging, weaker on queues."
        ],
    },
    "debate": {
        "Pro": [
            "Three reasons:\n1. No commute: two hours a day back.\n2. Fewer interruptions.\n"
            "3. Hiring from anywhere.",
            "> Con: juniors learn by overhearing.\n\n"
            "Pairing calls give them more of that than an open office does.",
        ],
        "Con": [
            '**Pro:** "No commute: two hours a day back."\n'
            "Those hours turn into longer workdays.\n"
            'Pro claims: "Fewer interruptions." Chat pings are interruptions too.',
            "Judge: note that Pro never answered the hiring cost.",
        ],
        "Judge": [
            "**Pro:** strong on commuting time.\n**Con:** strong on learning.\n"
            "Verdict: Con argued better: Pro's numbers ignored juniors."
        ],
    },
    "brainstorm": {
        "Dreamer": [
            "Ideas:\n1. A lantern walk the children build.\n2. A silent disco in the square.",
            "Pass",
            "Pass",
        ],
        "Builder": [
            "Building on the lanterns:\n\n| Step | Who |\n|---|---|\n| Buy paper | School |\n"
            "| Workshop | Library |\n\nSummary: Lanterns need two weekends of workshops.",
            "Pass",
            "Pass",
        ],
        "Skeptic": [
            "Risks:\n- Fire: paper lanterns need LED lights.\n- Cost: Paint and paper, "
            "about 200 euros.\nNote: The square needs a permit.",
            "Pass",
            "Pass",
        ],
        "Summary": [
            "Theme: Light\n- Lantern walk (best)\nTheme: Music\n- Silent disco\n"
            "Most promising: lanterns, disco, the permit first."
        ],
    },
    "council": {
        "Analyst": [
            "Answer: No.\nReasoning:\n1. Five people cannot run many services.\n"
            "2. A modular monolith keeps the boundaries.",
            "Response A is precise, Response B is thin.\nRANKING: A, B",
        ],
        "Expert": [
            "| Option | Ops cost | Fit for 5 people |\n|---|---|---|\n"
            "| Microservices | High | Poor |\n| Modular monolith | Low | Good |",
            "Response B gives the reasoning.\nRANKING: B, A",
        ],
        "Contrarian": [
            "The obvious answer is no, and it holds.\n"
            "Chair: note that one exception is a team split across time zones.",
            "RANKING: A, B",
        ],
        "Chair": [
            "Synthesis: A modular monolith.\nDisagreement: None on the main point.\n"
            "Ranking: Analyst first, Expert second."
        ],
    },
}


def run_preset(name: str, formats: dict[str, list[str]]) -> tuple[str, PipeHarness, dict]:
    """The preset with its own personas and aliases, every speaker scripted."""
    preset = mmc.PRESETS[name]
    aliases = [row["alias"] for row in preset["participants"]]
    closing = preset["config"].get("closing")
    models = {f"m{i}": f"Model {i}" for i in range(len(aliases))} | {"mc": "Closer"}
    h = PipeHarness(models=models)
    cfg: dict = {"preset": name, "participants": [{"model": m} for m in models if m != "mc"]}
    if isinstance(closing, dict):
        cfg["closing"] = {"model": "mc"}
    h.host.chat_configs["chat-1"] = cfg
    ids = {alias: f"m{i}" for i, alias in enumerate(aliases)}
    if isinstance(closing, dict):
        ids[closing["alias"]] = "mc"
    for alias, model in ids.items():
        h.host.scripts[model] = Script(
            streams=[reply(t) for t in formats.get(alias, [])], default_text="Fine."
        )
    return h, ids


def flat(text: str) -> str:
    return " ".join(text.split())


def heard_after(h: PipeHarness, model: str, nth: int) -> list[str]:
    """What every request made after `model`'s `nth` request shows, other models' only."""
    asked = [i for i, r in enumerate(h.host.requests) if r["model"] == model]
    later = h.host.requests[asked[nth] + 1 :]
    return [
        flat(mmc._text_of(m.get("content")))
        for r in later
        if r["model"] != model
        for m in r["messages"]
    ]


@pytest.mark.parametrize("name", list(mmc.PRESETS))
async def test_every_preset_keeps_the_formats_it_invites_whole_and_heard(name):
    assert name in FORMATS, "a new preset needs its formats here"
    h, ids = run_preset(name, FORMATS[name])

    result = await h.run("Tea or coffee for the office?")

    assert "✂️" not in result
    for alias, texts in FORMATS[name].items():
        asked = [r for r in h.host.requests if r["model"] == ids[alias]]
        for nth, text in enumerate(texts[: len(asked)]):
            if text in ("Pass", mmc.SKIP_WORD):
                continue
            assert flat(text) in flat(result), (alias, nth)
            if ids[alias] == "mc":
                continue  # the closing turn is the last: nobody speaks after it
            if "RANKING" in text:
                continue  # a peer ranking is tallied, not quoted to the others
            heard = heard_after(h, ids[alias], nth)
            assert any(flat(text) in seen for seen in heard), (alias, nth)
