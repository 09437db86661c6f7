"""Directing the conversation (issue 12): selection, PASS, endings, closing, vote, presets."""

from __future__ import annotations

import json
import random
import re
import typing

import pytest

import multi_model_conversation as mmc
from tests.fakes import PipeHarness, RecordingEmitter, Script, config, reply


def speakers(transcript: str) -> list[str]:
    return re.findall(r"^### \S+ (.+)$", transcript, re.MULTILINE)


def streamed(h: PipeHarness) -> list[dict]:
    return [r for r in h.host.requests if r["stream"]]


def harness(*models: str) -> PipeHarness:
    return PipeHarness(models={m: m.upper() for m in models})


# -- the config -------------------------------------------------------------------------------


def test_old_configs_load_and_use_manager_means_selection_manager():
    v2 = {"rounds": 2, "use_manager": True, "manager_model": "", "participants": [{"model": "a"}]}
    assert mmc.parse_config(v2, 20).selection == "manager"
    plain = mmc.parse_config({"rounds": 1, "participants": [{"model": "a"}]}, 20)
    assert plain.selection == "round_robin" and not plain.use_manager
    assert plain.closing is None and not plain.pass_allowed and plain.max_seconds == 0
    # selection wins over v2's flag, and use_manager follows it (what a v2 reader sees)
    both = mmc.parse_config({**v2, "selection": "random"}, 20)
    assert both.selection == "random" and not both.use_manager


def test_a_plain_setup_is_stored_as_v2_stored_it_and_new_keys_only_when_set():
    v2 = {"rounds": 2, "use_manager": False, "manager_model": "", "participants": [{"model": "a"}]}
    stored = mmc.stored_form(mmc.parse_config(v2, 20))
    assert stored == {**v2, "participants": [{"model": "a", "alias": "", "system_message": ""}]}
    richer = {**v2, "selection": "manager", "stop_phrase": "OK", "closing": "vote"}
    stored = mmc.stored_form(mmc.parse_config(richer, 20))
    assert stored["selection"] == "manager" and stored["use_manager"] is True
    assert stored["stop_phrase"] == "OK" and stored["closing"] == "vote"
    assert "max_seconds" not in stored and "preset" not in stored
    assert mmc.parse_config(stored, 20) == mmc.parse_config(richer, 20)


def test_bad_new_keys_get_one_clear_message():
    base = {"rounds": 1, "participants": [{"model": "a"}]}
    cases = {
        "selection": ({"selection": "loudest"}, "Who speaks next: must be 'round_robin'"),
        "closing": ({"closing": "poll"}, 'Closing turn: choose "vote" or a closing model'),
        "budget": ({"max_seconds": -1}, "Time budget: must be 0 or more"),
        "preset": ({"preset": "party"}, "Unknown preset 'party'. Presets: debate, brainstorm"),
    }
    for name, (extra, expected) in cases.items():
        try:
            mmc.parse_config({**base, **extra}, 20)
        except mmc.ConfigError as exc:
            assert expected in str(exc), (name, str(exc))
        else:
            raise AssertionError(f"{name} was accepted")


def test_a_preset_fills_what_is_left_out_and_what_is_given_wins():
    rows = [{"model": "a"}, {"model": "b", "alias": "Bea", "system_message": ""}]
    debate = mmc.parse_config({"preset": "Debate", "participants": rows}, 20)
    assert debate.rounds == 2 and debate.preset == "debate"
    assert [p.alias for p in debate.participants] == ["Pro", "Bea"]
    assert "AGAINST" in debate.participants[1].system_message
    assert debate.closing.alias == "Judge" and "verdict" in debate.closing.prompt
    mine = mmc.parse_config(
        {"preset": "review panel", "participants": rows, "rounds": 5, "closing": None}, 20
    )
    assert mine.rounds == 5 and mine.pass_allowed and mine.closing is None  # null: no closing
    presets = {"debate", "brainstorm", "review_panel", "interview", "council"}  # council: issue 21
    assert set(mmc.PRESETS) == presets
    for name in mmc.PRESETS:  # every preset is a valid config
        mmc.parse_config({"preset": name, "participants": rows}, 20)


def test_user_valves_carry_the_new_keys_and_a_preset_fills_the_rest():
    valves = mmc.Pipe.UserValves(
        NUM_PARTICIPANTS=2,
        Participant1Model="a",
        Participant2Model="b",
        Selection="mention",
        StopPhrase="DONE",
        MaxTotalTokens=500,
        ClosingModel="c",
        ClosingPrompt="Sum up.",
        Preset="brainstorm",
    )
    parsed = mmc.parse_config(mmc.config_from_user_valves(valves), 20)
    assert parsed.selection == "mention" and parsed.stop_phrase == "DONE"
    assert parsed.max_total_tokens == 500 and parsed.pass_allowed  # from the preset
    # the closing turn it names keeps the preset's name for it where it leaves the name empty
    assert parsed.closing == mmc.ClosingConfig(model="c", alias="Summary", prompt="Sum up.")
    voting = mmc.Pipe.UserValves(NUM_PARTICIPANTS=1, Participant1Model="a", ClosingVote=True)
    assert mmc.parse_config(mmc.config_from_user_valves(voting), 20).closing == "vote"


def test_every_valve_has_a_human_title_and_a_description():
    """Open WebUI's valves form shows `title` as the label and `description` under it."""
    for valves in (mmc.Pipe.Valves, mmc.Pipe.UserValves):
        schema = valves.model_json_schema()["properties"]
        for name, spec in schema.items():
            assert valves.model_fields[name].title, f"{name}: pydantic would make one up"
            assert not re.search(r"[a-z][A-Z]|_", spec["title"]), (name, spec["title"])
            assert len(spec.get("description", "")) > 10, name
    titles = mmc.Pipe.UserValves.model_json_schema()["properties"]
    assert titles["Participant4SystemMessage"]["title"] == "Participant 4: persona"
    assert titles["AllParticipantsApendedMessage"]["title"] == "Shared instruction"


def test_valve_defaults_read_as_typed_and_updates_stay_about_30_a_second():
    for valves in (mmc.Pipe.Valves, mmc.Pipe.UserValves):
        for name, info in valves.model_fields.items():
            if isinstance(info.default, float):
                assert len(repr(info.default)) <= 6, (name, info.default)
    interval = mmc.Pipe.Valves().EMIT_INTERVAL
    assert 29 <= 1 / interval <= 31
    assert (
        "rewrites the whole chat"
        not in mmc.Pipe.Valves.model_fields["EMIT_INTERVAL"].description.split("0: no coalescing")[
            0
        ]
    )


def test_fixed_choice_user_valves_are_selects_of_what_the_config_accepts():
    """An `enum` in the schema is what makes Open WebUI show a <select>."""
    schema = mmc.Pipe.UserValves.model_json_schema()["properties"]
    selection = typing.get_args(mmc.ConversationConfig.model_fields["selection"].annotation)
    assert schema["Selection"]["enum"] == ["", *selection]
    assert schema["Preset"]["enum"] == ["", *mmc.PRESETS]
    assert schema["NUM_PARTICIPANTS"]["enum"] == [1, 2, 3, 4, 5]
    admin = mmc.Pipe.Valves.model_json_schema()["properties"]
    assert [n for n, spec in admin.items() if "enum" in spec] == []  # no fixed sets there


def test_values_saved_before_the_selects_still_load_with_every_other_valve():
    """The host drops all of a user's valves when one fails to validate: none may fail."""
    saved = {
        "NUM_PARTICIPANTS": "3",
        "Participant1Model": "a",
        "Selection": "Round Robin",
        "Preset": "review-panel",
    }
    valves = mmc.Pipe.UserValves(**saved)
    assert (valves.NUM_PARTICIPANTS, valves.Selection, valves.Preset) == (
        3,
        "round_robin",
        "review_panel",
    )
    odd = mmc.Pipe.UserValves(Selection="roundrobin", Preset="chat", NUM_PARTICIPANTS=9.0)
    assert (odd.Selection, odd.Preset, odd.NUM_PARTICIPANTS) == ("", "", 5)
    assert mmc.Pipe.UserValves(Participant1Model="a", Selection=None).Participant1Model == "a"


# -- who speaks -------------------------------------------------------------------------------


async def test_random_never_repeats_the_last_speaker_and_reaches_everyone():
    h = harness("a", "b", "c")
    h.pipe.rng_factory = lambda: random.Random(7)
    h.host.chat_configs["chat-1"] = config("a", "b", "c", rounds=6, selection="random")

    result = await h.run()

    order = speakers(result)
    assert len(order) == 18 and set(order) == {"A", "B", "C"}
    assert all(x != y for x, y in zip(order, order[1:], strict=False)), order
    assert order != ["A", "B", "C"] * 6


async def test_random_does_not_repeat_the_last_speaker_of_the_message_before():
    firsts = []
    for seed in range(20):
        h = harness("a", "b", "c")
        h.pipe.rng_factory = lambda seed=seed: random.Random(seed)
        h.host.chat_configs["chat-1"] = config("a", "b", "c", selection="random")
        before = [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "### 🔴 C\n\nhi"},
        ]
        firsts.append(speakers(await h.run(history=before))[0])
    assert "C" not in firsts and set(firsts) == {"A", "B"}


async def test_mentioned_participants_speak_first_in_the_order_named():
    h = harness("a", "b", "c", "d")
    h.host.chat_configs["chat-1"] = config("a", "b", "c", "d", rounds=2, selection="mention")

    result = await h.run("@d first, then @B. (not an@a, and email@c.com is no mention)")

    assert speakers(result) == ["D", "B", "A", "C"] * 2
    plain = await h.run("nobody named")
    assert speakers(plain) == ["A", "B", "C", "D"] * 2


def test_mentions_prefer_the_longest_alias_and_ignore_case():
    aliases = ["Bo", "Bob", "Ann Lee"]
    assert mmc.mention_order("hey @bob and @ANN LEE, @Bo", aliases) == [1, 2, 0]
    assert mmc.mention_order("@Bobby", aliases) == []


# -- PASS -------------------------------------------------------------------------------------


async def test_a_pass_shows_as_one_line_and_is_not_a_spoken_turn():
    h = harness("a", "b")
    h.host.chat_configs["chat-1"] = config("a", "b", rounds=2, pass_allowed=True)
    h.host.scripts["b"] = Script(streams=[reply("**Pass.**", reasoning="nothing to add")])

    result = await h.run()

    assert speakers(result) == ["A", "A", "B"]
    assert "*⏭️ B passed.*" in result and "Pass." not in result and "nothing to add" not in result
    # The instruction told them; the pass is not in anyone's history.
    assert "answer only the word PASS" in streamed(h)[0]["messages"][0]["content"]
    later = " ".join(json.dumps(m) for m in streamed(h)[2]["messages"])
    assert "Pass" not in later and "passed" not in later
    assert result.endswith(
        "*🏁 The conversation ended after 3 turns, 1 passed: it reached its 2 rounds.*"
    )


async def test_without_pass_allowed_pass_is_an_ordinary_reply():
    h = harness("a")
    h.host.chat_configs["chat-1"] = config("a")
    h.host.scripts["a"] = Script(streams=[reply("PASS")])

    result = await h.run()

    assert result == "### 🔴 A\n\nPASS"
    assert "PASS" not in streamed(h)[0]["messages"][0]["content"]


async def test_everyone_passing_ends_the_conversation():
    h = harness("a", "b")
    h.host.chat_configs["chat-1"] = config("a", "b", rounds=5, pass_allowed=True)
    h.host.scripts["a"] = Script(default_text="pass")
    h.host.scripts["b"] = Script(default_text="PASS")

    result = await h.run()

    assert len(streamed(h)) == 2 and speakers(result) == []
    assert result.endswith("ended after 0 turns, 2 passed: everyone passed.*")


# -- endings ----------------------------------------------------------------------------------


async def test_participants_are_told_which_turn_it_is_and_how_many_remain():
    h = harness("a", "b")
    h.host.chat_configs["chat-1"] = config("a", "b", rounds=2, stop_phrase="WE AGREE")

    await h.run()

    systems = [r["messages"][0]["content"] for r in streamed(h)]
    assert "Round 1 of 2. This is turn 1 of 4; 3 more after yours." in systems[0]
    assert "Round 2 of 2. This is turn 4 of 4; 0 more after yours." in systems[3]
    assert "say “WE AGREE” to end it" in systems[0]


async def test_a_stop_phrase_from_any_participant_ends_it():
    h = harness("a", "b")
    h.host.chat_configs["chat-1"] = config("a", "b", rounds=3, stop_phrase="We agree")
    # A line of its own, case, spacing and punctuation ignored (issue 18: not a substring).
    h.host.scripts["b"] = Script(streams=[reply("Fine, then.\n**we   AGREE!**")])
    emitter = RecordingEmitter(h.clock)

    result = await h.run(emitter=emitter)

    assert speakers(result) == ["A", "B"] and len(streamed(h)) == 2
    assert "Conversation ended: B said the stop phrase “We agree”." in emitter.statuses()
    assert result.endswith(
        "*🏁 The conversation ended after 2 turns: B said the stop phrase “We agree”.*"
    )


async def test_a_time_budget_ends_it_after_the_turn_that_used_it_up():
    h = harness("a", "b")
    h.host.chat_configs["chat-1"] = config("a", "b", rounds=5, max_seconds=10)
    for m in ("a", "b"):  # 4 chunks of 1.5 fake seconds: 6 s per turn
        h.host.scripts[m] = Script(chunk_delay=1.5)

    result = await h.run()

    assert speakers(result) == ["A", "B"]
    assert "at most 10" in streamed(h)[0]["messages"][0]["content"]
    assert result.endswith("the time budget of 10 s was used up.*")


async def test_a_token_budget_counts_reported_usage_and_asks_for_it():
    h = harness("a", "b")
    h.host.chat_configs["chat-1"] = config("a", "b", rounds=5, max_total_tokens=250)
    usage = 'data: {"choices": [], "usage": {"total_tokens": 100}}\n\n'
    for m in ("a", "b"):
        h.host.scripts[m] = Script(streams=[[*reply("ok")[:-1], usage, "data: [DONE]\n\n"]] * 5)

    result = await h.run()

    assert speakers(result) == ["A", "B", "A"]
    assert all(r["stream_options"] == {"include_usage": True} for r in streamed(h))
    assert mmc.md_unescape(result).endswith("the budget of 250 tokens was used up (300).*")


async def test_without_usage_tokens_are_estimated_from_the_text():
    h = harness("a")
    h.host.chat_configs["chat-1"] = config("a", rounds=9, max_total_tokens=30)
    h.host.scripts["a"] = Script(default_text="x" * 80)  # 20 tokens of reply, plus the prompt

    result = await h.run()

    assert len(speakers(result)) == 1  # prompt + 80 characters: over 30 tokens at once


async def test_rounds_alone_add_no_end_line_and_only_the_summary_status():
    h = harness("a")
    h.host.chat_configs["chat-1"] = config("a", rounds=2)
    emitter = RecordingEmitter(h.clock)

    result = await h.run(emitter=emitter)

    assert "🏁" not in result
    # One status per turn says where it is (issue 21), then the summary.
    assert emitter.statuses() == [
        "Round 1 of 2 · A",
        "Round 2 of 2 · A",
        "1 participant, 2 turns, 0 s",
    ]


def test_a_usage_frame_decodes_with_or_without_choices():
    both = json.dumps({"choices": [{"delta": {"content": "hi"}}], "usage": {"total_tokens": 9}})
    assert [(e.kind, e.index, e.text) for e in mmc.decode_frame(both)] == [
        ("usage", 9, ""),
        ("content", 0, "hi"),
    ]
    assert mmc.decode_frame('{"choices": [], "usage": null}') == []


# -- closing ----------------------------------------------------------------------------------


async def test_a_closing_turn_sees_the_whole_conversation_and_its_prompt():
    h = harness("a", "b", "judge")
    h.host.chat_configs["chat-1"] = config(
        "a",
        "b",
        rounds=1,
        closing={"model": "judge", "alias": "Judge", "prompt": "Give a verdict."},
    )
    h.host.scripts["judge"] = Script(streams=[reply("B wins.")])

    result = await h.run("Tea or coffee?")

    assert speakers(result) == ["A", "B", "Judge"]
    assert result.endswith("### 🟢 Judge\n\nB wins.")
    judge = streamed(h)[-1]
    assert judge["model"] == "judge"
    assert judge["messages"][0]["content"].startswith(
        "You are Judge. The group conversation between A, B"
    )
    last = judge["messages"][-1]["content"]
    assert (
        "Tea or coffee?" in last and 'A said: "a reply 1"' in last and 'B said: "b reply 2"' in last
    )
    assert last.endswith("Give a verdict.")
    assert h.host.calls["check_access"] == 3


async def test_the_closing_model_goes_through_the_access_check_before_any_call():
    h = harness("a", "judge")
    h.host.denied.add("judge")
    h.host.chat_configs["chat-1"] = config("a", closing={"model": "judge", "prompt": "x"})

    result = await h.run()

    assert "You do not have access to 'judge'" in mmc.md_unescape(result)
    assert h.host.requests == []


async def test_a_closing_without_a_model_uses_the_first_participant_and_a_free_alias():
    h = harness("a", "b")
    h.host.chat_configs["chat-1"] = config("a", "b", closing={"alias": "a", "prompt": ""})

    result = await h.run()

    assert speakers(result) == ["A", "B", "a 2"]
    assert streamed(h)[-1]["model"] == "a"
    assert mmc.DEFAULT_CLOSING_PROMPT in streamed(h)[-1]["messages"][0]["content"]


async def test_a_vote_asks_everyone_once_and_tallies():
    h = harness("a", "b", "c")
    h.host.chat_configs["chat-1"] = config("a", "b", "c", closing="vote")
    h.host.scripts["a"] = Script(streams=[reply("x"), reply("VOTE: Tea — calmer.")])
    h.host.scripts["b"] = Script(streams=[reply("y"), reply("**Vote: coffee**. Faster.")])
    h.host.scripts["c"] = Script(streams=[reply("z"), reply("vote: tea")])

    result = await h.run()

    # issue 19: the vote turns are labelled as votes
    votes = [f"{alias}{mmc.VOTE_LABEL}" for alias in "ABC"]
    assert speakers(result) == ["A", "B", "C", *votes]
    assert mmc.md_unescape(result).endswith("*🗳️ Vote: Tea 2 (A, C) · coffee 1 (B)*")
    for request in streamed(h)[3:]:
        assert request["messages"][-1]["content"].endswith(mmc.VOTE_PROMPT)


def test_votes_parse_and_tally_in_order_of_count_then_first_cast():
    assert mmc.parse_vote("I thought about it.\nVOTE: Option B - it is cheaper") == "Option B"
    # No VOTE line: an abstention (issue 19), not the reply's first words.
    assert mmc.parse_vote("Reject; too risky") == ""
    assert mmc.tally([("A", "no"), ("B", "Yes"), ("C", "yes!")]) == "Yes 2 (B, C) · no 1 (A)"


async def test_closing_and_endings_survive_a_follow_up_message():
    h = harness("a", "b", "judge")
    h.host.chat_configs["chat-1"] = config(
        "a", "b", rounds=1, pass_allowed=True, closing={"model": "judge", "alias": "Judge"}
    )
    h.host.scripts["b"] = Script(streams=[reply("PASS")])
    first = await h.run("Tea?")

    second = await h.run(
        "And coffee?",
        history=[{"role": "user", "content": "Tea?"}, {"role": "assistant", "content": first}],
    )

    assert speakers(second) == ["A", "B", "Judge"]
    a_view = streamed(h)[3]["messages"]
    assert [m["role"] for m in a_view] == ["system", "user", "assistant", "user"]
    assert a_view[3]["content"].startswith('Judge said: "judge reply 3"')
    assert "passed" not in json.dumps(a_view) and "🏁" not in json.dumps(a_view)


# -- issue 27: "@Name" at the start of the user's message picks the first speaker, in any order --


async def first_speakers(selection: str, text: str, turns: int = 3, **extra) -> list[str]:
    h = PipeHarness(models={"a": "Ada", "b": "Bob", "c": "Cy", "m": "Manager"})
    h.host.chat_configs["chat-1"] = config("a", "b", "c", selection=selection, **extra)
    h.host.scripts["m"] = Script(completions=["C", "A", "B"] * 3)
    result = await h.run(text)
    return re.findall(r"^### \S+ (.+)$", result, re.MULTILINE)[:turns]


@pytest.mark.parametrize(
    ("selection", "extra"),
    [("round_robin", {}), ("random", {}), ("mention", {}), ("manager", {"manager_model": "m"})],
)
async def test_a_message_starting_with_a_mention_lets_that_participant_speak_first(
    selection, extra
):
    for text in ("@B, you go first.", "  @b what do you think?"):
        spoken = await first_speakers(selection, text, **extra)
        assert spoken[0] == "B", (selection, text, spoken)
        assert sorted(spoken) == ["A", "B", "C"] or selection == "manager", spoken


async def test_a_mention_later_in_the_message_or_not_a_participant_leaves_round_robin_alone():
    for text in ("What do you think, @B?", "@Bobby first", "mail bob@b.com", "@Zed, go.", "B!"):
        assert await first_speakers("round_robin", text) == ["A", "B", "C"], text
    # Round robin keeps one order every round, the named one first.
    assert await first_speakers("round_robin", "@C start", turns=6, rounds=2) == [*"CAB", *"CAB"]
