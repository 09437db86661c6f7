"""Issue 19: a preset is a starting point resolved once; what the user chose is what runs.

Every preset x every key it sets: an explicit value wins on the first message, on a follow-up
(the setup read from the chat) and after a restart (the stored setup read back as JSON).
What runs is observed in what the models were asked and what the transcript shows.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

import multi_model_conversation as mmc
from tests.fakes import Overlay, PipeHarness

MODELS = {"a": "A", "b": "B", "c": "C"}
ALIASES = ["Ada", "Ben", "Cy"]
ROWS = [
    {"model": m, "alias": alias, "system_message": f"You are {alias}, persona {i}."}
    for i, (m, alias) in enumerate(zip(MODELS, ALIASES, strict=True))
]
PASS_RULE = f"answer only the word {mmc.SKIP_WORD}"


def harness() -> PipeHarness:
    h = PipeHarness(models=dict(MODELS))
    h.pipe.rng_factory = lambda: random.Random(3)  # random order, never round robin's
    return h


def observe(h: PipeHarness, since: int, result: str) -> dict:
    """What ran, read off the requests of this run (each turn's kind by its system prompt) and
    its transcript."""
    streamed = [r for r in h.host.requests[since:] if r["stream"]]
    asked_manager = any(not r["stream"] for r in h.host.requests[since:])
    systems = [str(r["messages"][0]["content"]) for r in streamed]
    turns = [
        r["model"]
        for r, system in zip(streamed, systems, strict=True)
        if not any(x in system for x in (mmc.REVIEW_RULES, "and you close it", mmc.VOTE_PROMPT))
    ]
    # A review's heading is labelled (issue 27): it is its participant's, not a closing speaker.
    headings = [
        h.removesuffix(mmc.REVIEW_LABEL)
        for h in re.findall(r"^### \S+ (.+)$", result, re.MULTILINE)
    ]
    closing = None
    if "🗳️ Vote" in result:
        closing = "vote"
    elif headings and headings[-1] not in ALIASES:
        closing = headings[-1]
    if asked_manager:
        selection = "manager"
    elif any("Everyone answers this round at the same time" in x for x in systems):
        selection = "council"
    elif turns == (list(MODELS) * len(turns))[: len(turns)]:
        selection = "round_robin"
    else:
        selection = "other"
    return {
        "rounds": len(turns) // len(ALIASES),
        "selection": selection,
        "pass_allowed": any(PASS_RULE in x for x in systems),
        "peer_review": any(mmc.REVIEW_RULES in x for x in systems),
        "stop_phrase": next((p for p in STOP_PHRASES if any(p in x for x in systems)), ""),
        "closing": closing,
        "personas": all(any(row["system_message"] in x for x in systems) for row in ROWS),
    }


STOP_PHRASES = ["THAT CONCLUDES THE INTERVIEW", "WE ARE DONE"]


def expected(key: str, value) -> object:
    """How a config value shows in `observe`."""
    if key == "closing":
        return value if value in (None, "vote") else value["alias"]
    if key == "selection":
        return value if value in ("manager", "round_robin", "council") else "other"
    return value


def overrides(preset: dict) -> list[tuple[str, object]]:
    """An explicit value for every key the preset sets, unlike the preset's own."""
    out: list[tuple[str, object]] = []
    for key, value in preset["config"].items():
        if key == "rounds":
            out.append((key, value - 1 if value > 1 else value + 1))
        elif key == "selection":
            out.append((key, "round_robin" if value != "round_robin" else "manager"))
        elif key in ("pass_allowed", "peer_review"):
            out.append((key, not value))
        elif key == "stop_phrase":
            out.append((key, ""))
            out.append((key, "WE ARE DONE"))
        elif key == "closing":
            out.append((key, None))  # "At the end: Nothing"
            out.append((key, {"model": "b", "alias": "Arbiter", "prompt": "Decide."}))
            if value != "vote":
                out.append((key, "vote"))
        else:
            raise AssertionError(f"a preset sets {key}: add it to this table")
    return out


CASES = [
    pytest.param(name, key, value, id=f"{name}-{key}={json.dumps(value)[:20]}")
    for name, preset in mmc.PRESETS.items()
    for key, value in overrides(preset)
]


def answers(name: str, key: str, value) -> dict[str, dict]:
    """The key given alone (JSON or user valves), and every key as the dialog sends them."""
    alone = {"preset": name, "participants": ROWS, key: value}
    resolved = mmc.ConversationConfig.model_validate(
        mmc.apply_preset({"preset": name, "participants": ROWS})
    ).model_dump()
    every = {**resolved, key: value, "preset": name}
    if key == "selection":
        every["use_manager"] = value == "manager"
    return {"alone": alone, "every key": every}


async def run(h: PipeHarness, text: str, **kwargs) -> dict:
    since = len(h.host.requests)
    result = await h.run(text, **kwargs)
    return observe(h, since, result)


@pytest.mark.parametrize(("name", "key", "value"), CASES)
async def test_an_explicit_value_wins_over_the_preset_every_time(name, key, value):
    want = expected(key, value)
    for form, answer in answers(name, key, value).items():
        h = harness()
        overlay = Overlay(answer)
        first = await run(h, "Tea or coffee?", event_call=overlay)
        assert first[key] == want, (form, "first message", first)
        assert first["personas"], (form, "a typed persona was replaced")

        history = [{"role": "user", "content": "Tea or coffee?"}]
        follow_up = await run(h, "And why?", event_call=overlay, history=history)
        assert len(overlay.calls) == 1, "the follow-up asked again"
        assert follow_up[key] == want, (form, "follow-up", follow_up)

        restarted = harness()
        restarted.host.chat_configs["chat-1"] = json.loads(
            json.dumps(h.host.chat_configs["chat-1"])
        )
        again = await run(restarted, "And why?", history=history)
        assert again[key] == want, (form, "read back after a restart", again)


@pytest.mark.parametrize("name", list(mmc.PRESETS))
async def test_a_preset_alone_runs_its_own_values_so_the_table_can_see_them(name):
    """The control for the table above: each key it checks shows the preset's own value."""
    h = harness()
    seen = await run(
        h, "Tea or coffee?", event_call=Overlay({"preset": name, "participants": ROWS})
    )
    preset = mmc.PRESETS[name]["config"]
    for key, value in preset.items():
        want = expected(key, value)
        assert seen[key] == want, (key, seen)
    stored = h.host.chat_configs["chat-1"]
    assert stored[mmc.RESOLVED_KEY] is True and stored["preset"] == name


# What chats already hold: v2's form, and this project's earlier stored_form output (made with
# the code of 09aa316), which left out every value equal to its default and kept the preset.
EARLIER = {
    "brainstorm, stored before presets were resolved": {
        "rounds": 2,
        "use_manager": False,
        "manager_model": "",
        "participants": [
            {"model": "a", "alias": "Ada", "system_message": "Propose bold, unusual ideas."},
            {"model": "b", "alias": "Builder", "system_message": "Build on it."},
        ],
        "closing": {"model": "", "alias": "Summary", "prompt": "List every idea."},
        "preset": "brainstorm",
    },
    "v2": {
        "rounds": 2,
        "use_manager": True,
        "manager_model": "",
        "participants": [{"model": "a", "alias": "Ada", "system_message": "Hi"}],
    },
}


def test_setups_stored_earlier_load_as_they_ran():
    old = mmc.parse_config(EARLIER["brainstorm, stored before presets were resolved"], 20)
    # It ran with the preset's order and PASS (the keys it left out); it still does.
    assert (old.selection, old.pass_allowed, old.rounds) == ("random", True, 2)
    assert old.closing == mmc.ClosingConfig(alias="Summary", prompt="List every idea.")
    assert [p.alias for p in old.participants] == ["Ada", "Builder"]
    v2 = mmc.parse_config(EARLIER["v2"], 20)
    assert (v2.selection, v2.use_manager, v2.closing, v2.preset) == ("manager", True, None, "")
    assert mmc.RESOLVED_KEY not in mmc.stored_form(v2)  # a setup without a preset: as before
    assert mmc.parse_config(mmc.stored_form(v2), 20) == v2


def test_a_resolved_setup_is_read_as_it_is_and_an_emptied_field_stays_empty():
    chosen = mmc.parse_config(
        {
            "preset": "debate",
            "participants": [{"model": "a", "alias": "", "system_message": ""}],
            "rounds": 2,
            "closing": {"model": "", "alias": "Judge", "prompt": ""},
            mmc.RESOLVED_KEY: True,  # the dialog's answer: the user emptied the persona
        },
        20,
    )
    assert chosen.participants[0].alias == "" and chosen.participants[0].system_message == ""
    assert chosen.closing.prompt == "" and chosen.preset == "debate"
    # Without the mark (JSON, user valves) the preset fills the empty fields.
    filled = mmc.parse_config({"preset": "debate", "participants": [{"model": "a"}]}, 20)
    assert filled.participants[0].alias == "Pro" and "verdict" in filled.closing.prompt


def test_the_readmes_debate_example_keeps_the_verdict_prompt():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    example = next(
        json.loads(line) for line in readme.splitlines() if line.startswith('{"preset": "debate"')
    )
    judge = mmc.parse_config(example, 20).closing
    assert judge.alias == "Judge" and judge.model == "claude-3-5-sonnet"
    assert judge.prompt == mmc.PRESETS["debate"]["config"]["closing"]["prompt"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"rounds": True}, "Rounds: must be a number, not on/off"),
        ({"max_seconds": False}, "Time budget: must be a number, not on/off"),
        ({"max_total_tokens": True}, "Token budget: must be a number, not on/off"),
        ({"participants": [{"model": "a", "max_tokens": True}]}, "Participant 1: must be a number"),
        (
            {"participants": [{"model": "a", "system_message": "x" * 8001}]},
            "Participant 1, persona: must be at most 8000 characters",
        ),
        (
            {"closing": {"prompt": "x" * 8001}},
            "Closing turn, task: must be at most 8000 characters",
        ),
        (
            {"participants": [{"model": "a", "alias": "🦊🦊"}]},
            "Participant 1: the alias '🦊🦊' needs",
        ),
        ({"closing": {"alias": "🏁"}}, "Closing turn: the alias '🏁' needs a letter or a digit"),
        ({"preset": "nope"}, "Unknown preset 'nope'"),
    ],
)
def test_every_bad_value_gets_one_clear_message(change, message):
    with pytest.raises(mmc.ConfigError) as caught:
        mmc.parse_config({"rounds": 1, "participants": [{"model": "a"}], **change}, 20)
    assert message in str(caught.value)
    assert str(caught.value).count(".") <= 3, str(caught.value)  # one message, not a dump


def test_what_must_not_be_refused():
    """The caps and checks leave alone what is fine: limits exactly, mixed aliases, null preset."""
    ok = mmc.parse_config(
        {
            "rounds": 1,
            "preset": None,
            "participants": [
                {"model": "a", "alias": "🦊 Fox", "system_message": "x" * 8000, "max_tokens": 0},
                {"model": "b", "alias": "Ünï 2"},
            ],
            "closing": {"prompt": "y" * 8000},
            "max_seconds": 0.5,
        },
        20,
    )
    assert ok.preset == "" and ok.participants[0].alias == "🦊 Fox" and ok.max_seconds == 0.5


def test_nested_json_is_a_clear_message_not_a_crash():
    deep = (
        '{"rounds": 1, "participants": [{"model": "a", "alias": ' + "[" * 5000 + "]" * 5000 + "}]}"
    )
    for raw in (deep, {"rounds": 1, "participants": [{"model": "a"}], "closing": _nested(3000)}):
        with pytest.raises(mmc.ConfigError, match="nested too deeply"):
            mmc.parse_config(raw, 20)


def _nested(depth: int) -> dict:
    node: dict = {}
    for _ in range(depth):
        node = {"x": node}
    return node


def test_admin_valves_open_with_what_admins_tune_and_end_with_the_streaming_internals():
    names = list(mmc.Pipe.Valves.model_fields)
    assert names[:3] == ["MAX_ROUNDS", "MAX_TOKENS", "TURN_TIME_LIMIT"]
    internals = [
        "EMIT_INTERVAL",
        "SAVE_INTERVAL",
        "SAVE_BUDGET_KB",
        "MAX_SAVE_INTERVAL",
        "SAVE_COPIES",
    ]
    assert names[-5:] == internals
    tools = [n for n in names if "TOOL" in n]
    assert max(names.index(n) for n in tools) < names.index("PIPE_NAME")


def test_one_switch_for_who_speaks_next_and_old_manager_switches_still_load():
    fields = mmc.Pipe.UserValves.model_fields
    assert "UseGroupChatManager" not in fields and "Selection" in fields
    old = mmc.Pipe.UserValves(UseGroupChatManager=True, NUM_PARTICIPANTS=1, Participant1Model="a")
    assert old.Selection == "manager" and old.Participant1Model == "a"
    assert mmc.parse_config(mmc.config_from_user_valves(old), 20).selection == "manager"
    # A choice made in the select wins over the old switch; the switch off changes nothing.
    chosen = mmc.Pipe.UserValves(UseGroupChatManager=True, Selection="random")
    assert chosen.Selection == "random"
    assert mmc.Pipe.UserValves(UseGroupChatManager=False).Selection == ""
