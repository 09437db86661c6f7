"""What a user can do, driven through the whole Pipe on a fake host (issue items 1-11)."""

from __future__ import annotations

import asyncio
import json
import logging
import re

import pytest

import multi_model_conversation as mmc
from tests.fakes import (
    Overlay,
    PipeHarness,
    RecordingEmitter,
    Script,
    chunk,
    config,
    make_record,
    reply,
    tool_call_chunks,
)


def speakers(transcript: str) -> list[str]:
    return re.findall(r"^### \S+ (.+)$", transcript, re.MULTILINE)


def streamed(h: PipeHarness) -> list[dict]:
    return [r for r in h.host.requests if r["stream"]]


# -- 1. participants and their system prompts ---------------------------------------------------


async def test_system_prompt_is_model_prompt_then_persona_then_shared_instruction():
    h = PipeHarness()
    h.host.records["m1"] = make_record(system="MODEL PROMPT of m1")
    h.host.chat_configs["chat-1"] = {
        "rounds": 1,
        "participants": [
            {"model": "m1", "alias": "Ada", "system_message": "PERSONA: a pirate {not_a_field}"},
            {"model": "m2", "alias": "", "system_message": ""},
        ],
    }

    result = await h.run(history=[{"role": "system", "content": "CHAT PROMPT"}])

    system = streamed(h)[0]["messages"][0]
    assert system["role"] == "system"
    text = system["content"]
    order = [text.index(s) for s in ("MODEL PROMPT", "CHAT PROMPT", "PERSONA", "You are Ada")]
    assert order == sorted(order)
    assert [m["role"] for m in streamed(h)[0]["messages"]] == ["system", "user"]
    assert "{not_a_field}" in text, "a persona is not a template"
    assert "Model Two" in text, "the others are named"
    assert speakers(result) == ["Ada", "Model Two"], "the alias defaults to the model's name"


async def test_a_v2_shared_instruction_without_placeholder_gets_the_alias_appended():
    h = PipeHarness()
    h.host.chat_configs["chat-1"] = config("m1")
    valves = h.pipe.UserValves(AllParticipantsApendedMessage="Your acted response as")

    await h.run(user_valves=valves)

    assert streamed(h)[0]["messages"][0]["content"].endswith("Your acted response as M1")


# -- 2. configuration: saved, overlay, valves; validated; remembered ----------------------------


async def test_overlay_answer_is_used_remembered_and_not_asked_again():
    h = PipeHarness()
    overlay = Overlay(config("m2", "m1", rounds=2))

    first = await h.run(event_call=overlay)
    second = await h.run("and now?", event_call=overlay)

    assert len(overlay.calls) == 1
    assert (
        overlay.calls[0]["type"] == "execute"
        and "Start conversation" in (overlay.calls[0]["data"]["code"])
    )
    assert speakers(first) == ["M2", "M1", "M2", "M1"]
    assert speakers(second) == ["M2", "M1", "M2", "M1"]
    assert h.host.chat_configs["chat-1"]["participants"][0]["model"] == "m2"


async def test_saved_config_wins_over_overlay_and_valves():
    h = PipeHarness()
    h.host.chat_configs["chat-1"] = config("m2")
    overlay = Overlay(config("m1"))
    valves = h.pipe.UserValves(NUM_PARTICIPANTS=1, Participant1Model="m1")

    result = await h.run(event_call=overlay, user_valves=valves)

    assert overlay.calls == []
    assert speakers(result) == ["M2"]


async def test_use_defaults_falls_back_to_user_valves_and_is_remembered():
    h = PipeHarness()
    overlay = Overlay(None)  # the dialog's "Use defaults"
    valves = h.pipe.UserValves(
        NUM_PARTICIPANTS=2,
        ROUNDS_PER_CONVERSATION=1,
        Participant1Model="m1",
        Participant1Alias="Uno",
        Participant2Model="m2",
        Participant2Alias="Dos",
    )

    result = await h.run(event_call=overlay, user_valves=valves)
    await h.run("again", event_call=overlay, user_valves=valves)

    assert speakers(result) == ["Uno", "Dos"]
    assert len(overlay.calls) == 1
    assert [p["alias"] for p in h.host.chat_configs["chat-1"]["participants"]] == ["Uno", "Dos"]


async def test_an_unanswered_overlay_times_out_to_the_valves():
    h = PipeHarness()
    h.pipe.valves.OVERLAY_TIMEOUT = 60
    never = asyncio.get_running_loop().create_future()

    async def hanging(event):
        return await never

    valves = h.pipe.UserValves(
        NUM_PARTICIPANTS=1, ROUNDS_PER_CONVERSATION=1, Participant1Model="m1", Participant1Alias="V"
    )
    run = asyncio.ensure_future(h.run(event_call=hanging, user_valves=valves))
    for _ in range(10):
        await asyncio.sleep(0)
    assert not run.done()
    # issue 19: the tab's dialog times out after 60 quiet seconds; the server waits for its
    # answer up to the longest a dialog stays open (typing keeps it open), and the slack.
    h.clock.advance(mmc.DIALOG_MAX_OPEN + 4.9)
    await asyncio.sleep(0)
    assert not run.done(), "gave up before the overlay's timeout"
    h.clock.advance(0.2)

    result = await asyncio.wait_for(run, 5)

    assert speakers(result) == ["V"]


async def test_without_a_browser_the_valves_are_used():
    h = PipeHarness()
    valves = h.pipe.UserValves(
        NUM_PARTICIPANTS=1, ROUNDS_PER_CONVERSATION=1, Participant1Model="m2"
    )

    result = await h.run(event_call=None, emitter=None, user_valves=valves)

    assert speakers(result) == ["Model Two"]


async def _config_error(answer) -> tuple[str, PipeHarness, RecordingEmitter]:
    h = PipeHarness()
    emitter = RecordingEmitter(h.clock)
    result = await h.run(event_call=Overlay(answer), emitter=emitter)
    return result, h, emitter


async def test_each_bad_configuration_gives_one_clear_message_and_nothing_runs():
    cases = {
        "unknown model": (config("nope"), "Unknown model: 'nope'"),
        "empty list": ({"rounds": 1, "participants": []}, "Choose at least one participant"),
        "rounds 0": (config("m1", rounds=0), "Rounds must be at least 1"),
        "rounds too many": (config("m1", rounds=21), "between 1 and 20"),
        "malformed JSON": ('{"rounds": 1, "participants": [', "not valid JSON"),
        "six participants": (config(*["m1"] * 6), "At most 5"),
    }
    for name, (answer, expected) in cases.items():
        result, h, emitter = await _config_error(answer)
        assert expected in mmc.md_unescape(result), name
        assert result.count("⚠️") == 1, name
        assert h.host.requests == [], f"{name}: a model was called"
        assert "chat-1" not in h.host.chat_configs, f"{name}: a bad config was remembered"
        assert emitter.contents()[-1] == result


async def test_unknown_and_refused_models_are_named_with_their_rows():
    answer = config("m1", "m2", "nope", closing={"model": "gone"})
    answer["participants"][1] = {"model": "", "alias": "", "system_message": ""}  # left empty
    result, h, _ = await _config_error(answer)
    shown = mmc.md_unescape(result)
    assert "Unknown model: 'nope' (Participant 3), 'gone' (Closing model)." in shown
    assert h.host.requests == []

    h = PipeHarness()
    h.host.denied.add("m2")
    h.host.chat_configs["chat-1"] = config("m2", "m1", use_manager=True)
    result = await h.run()
    assert "You do not have access to 'm2' (Participant 1, Manager model)." in mmc.md_unescape(
        result
    )


async def test_a_broken_saved_config_says_how_to_choose_again():
    h = PipeHarness()
    h.host.chat_configs["chat-1"] = config("gone")
    result = await h.run()
    assert "Unknown model: 'gone'" in mmc.md_unescape(result) and "/reconfigure" in result

    overlay = Overlay(config("m1"))
    result = await h.run("/reconfigure", event_call=overlay)
    # issue 19: the command is not a topic; with nothing else in the chat nobody speaks yet
    assert len(overlay.calls) == 1 and result == mmc.SETUP_SAVED


async def test_the_pipe_cannot_be_its_own_participant():
    result, h, _ = await _config_error(config("mmc.Conversation-pipe"))
    assert "cannot take part" in result and h.host.requests == []


# -- 3. rounds ----------------------------------------------------------------------------------


async def test_round_robin_every_participant_once_per_round_in_order():
    h = PipeHarness(models={"a": "A", "b": "B", "c": "C"})
    h.host.chat_configs["chat-1"] = config("a", "b", "c", rounds=3)

    result = await h.run()

    assert speakers(result) == ["A", "B", "C"] * 3
    assert [r["model"] for r in streamed(h)] == ["a", "b", "c"] * 3


# -- 4. manager mode ----------------------------------------------------------------------------


async def test_manager_is_reasked_once_with_what_was_wrong_and_after_two_failures_the_order_picks():
    """Issue 29.10 changed this: a pick is re-asked once (not twice), and two failures in a
    run retire the manager for the run (one status line), so a manager that names nobody
    costs at most two requests per run."""
    h = PipeHarness(models={"a": "A", "b": "B", "c": "C", "boss": "Boss"})
    h.host.chat_configs["chat-1"] = config(
        "a", "b", "c", rounds=1, use_manager=True, manager_model="boss"
    )
    h.host.scripts["boss"] = Script(
        completions=[
            "I think **c!** should speak.",  # -> C at once
            "C",  # C has just spoken: asked again (failure 1)
            "Let A answer that",  # -> A on the re-ask
            "the weather is nice",  # names nobody (failure 2): round robin after A = B
            "A",  # never asked
        ]
    )
    emitter = RecordingEmitter(h.clock)

    result = await h.run(emitter=emitter)

    assert speakers(result) == ["C", "A", "B"]
    calls = [r for r in h.host.requests if not r["stream"]]
    assert len(calls) == 4 and {r["model"] for r in calls} == {"boss"}
    # The re-ask carries the wrong answer and what was wrong with it.
    again = calls[2]["messages"]
    assert again[-2] == {"role": "assistant", "content": "C"}
    assert "C has just spoken; pick someone else" in again[-1]["content"]
    assert "Answer with exactly one of: A, B, C" in again[-1]["content"]
    assert len(calls[1]["messages"]) == 2 and len(again) == 4 and len(calls[3]["messages"]) == 2
    fallbacks = [s for s in emitter.statuses() if "round robin" in s]
    assert fallbacks[0] == (
        "Manager named no participant (last: 'the weather is nice'); "
        "round robin from here (B next)."
    )
    assert all("Manager" not in s for s in fallbacks[1:])  # said once; then where it is
    assert "Turn 3 of 3 · B (round robin)" in emitter.statuses()
    # Why each picked speaker was chosen, collapsed under its turn; none for the fallback.
    blocks = re.findall(
        r'<details type="manager"[^>]*>\n<summary>([^<]*)</summary>\n(.*?)\n</details>', result
    )
    assert blocks == [
        ("Why this speaker", "> I think **c!** should speak."),
        ("Why this speaker", "> Let A answer that"),
    ]
    assert result.index("### 🔴 A") < result.index("Let A answer that") < result.index("a reply")


async def test_the_manager_reason_block_is_off_by_a_valve_and_out_of_history():
    h = PipeHarness()
    h.host.chat_configs["chat-1"] = config("m1", "m2", use_manager=True)
    h.host.scripts["m1"] = Script(completions=["M2", "M1", "M2", "M1"])

    shown = await h.run()
    hidden = await h.run(
        "again",
        history=[
            {"role": "user", "content": "Hello everyone"},
            {"role": "assistant", "content": shown},
        ],
        user_valves=h.pipe.UserValves(ShowManagerReason=False),
    )

    assert shown.count('<details type="manager"') == 2
    assert '<details type="manager"' not in hidden
    assert speakers(hidden) == ["M2", "M1"]
    # The earlier reasons are not part of what the participants read.
    assert not any("Why this speaker" in str(r["messages"]) for r in streamed(h))


async def test_a_manager_answering_end_ends_the_conversation_and_says_why():
    h = PipeHarness()
    h.host.chat_configs["chat-1"] = config("m1", "m2", rounds=3, use_manager=True)
    h.host.scripts["m1"] = Script(completions=["M2", "End."])
    emitter = RecordingEmitter(h.clock)

    result = await h.run(emitter=emitter)

    assert speakers(result) == ["M2"]
    assert "Conversation ended: the manager ended it." in emitter.statuses()
    assert result.endswith("*🏁 The conversation ended after 1 turn: the manager ended it.*")
    assert "answer END instead" in h.host.requests[0]["messages"][1]["content"]


async def test_manager_defaults_to_first_participant_and_fills_its_prompt():
    h = PipeHarness()
    h.host.chat_configs["chat-1"] = config("m2", "m1", rounds=1, use_manager=True)
    h.host.scripts["m2"] = Script(completions=["M1", "M2"])
    valves = h.pipe.UserValves(
        ManagerSystemMessage="BOSS RULES",
        ManagerSelectionPrompt="H={history} L={last_speaker} P={participant_list} {x}",
    )

    result = await h.run("Topic: tea", user_valves=valves)

    manager_calls = [r for r in h.host.requests if not r["stream"]]
    assert manager_calls[0]["model"] == "m2"
    assert manager_calls[0]["messages"][0] == {"role": "system", "content": "BOSS RULES"}
    prompt = manager_calls[0]["messages"][1]["content"]
    assert prompt.startswith("H=Ann: Topic: tea L=None P=M2, M1 {x}")
    assert "L=M1" in manager_calls[1]["messages"][1]["content"]
    assert speakers(result) == ["M1", "M2"]


async def test_a_failing_manager_falls_back_to_round_robin():
    h = PipeHarness()
    h.host.chat_configs["chat-1"] = config("m1", "m2", use_manager=True)
    h.host.scripts["m1"] = Script(completions=[mmc.ModelCallError("boom"), "M1"])
    emitter = RecordingEmitter(h.clock)

    result = await h.run(emitter=emitter)

    assert speakers(result) == ["M1", "M2"]
    assert any("Manager failed (boom)" in s for s in emitter.statuses())


async def test_a_first_pick_that_names_nobody_is_not_called_a_repeat():
    """Before anyone spoke there is no last speaker to repeat."""
    h = PipeHarness()
    h.host.chat_configs["chat-1"] = config("m1", "m2", use_manager=True)
    # Two answers naming nobody (issue 29.10: a re-ask, then the order picks for the run).
    h.host.scripts["m1"] = Script(completions=["nobody in particular", "none", "M2"])
    emitter = RecordingEmitter(h.clock)

    result = await h.run(emitter=emitter)

    assert speakers(result) == ["M1", "M2"]
    (fallback,) = [s for s in emitter.statuses() if s.startswith("Manager")]
    assert fallback == (
        "Manager named no participant (last: 'none'); round robin from here (M1 next)."
    )


# -- 5. rendering -------------------------------------------------------------------------------


async def test_reasoning_from_every_delta_key_and_inline_tags_closes_with_its_duration():
    h = PipeHarness(models={"a": "A", "b": "B", "c": "C", "d": "D"})
    h.host.chat_configs["chat-1"] = config("a", "b", "c", "d")
    for model, key in (("a", "reasoning_content"), ("b", "reasoning"), ("c", "thinking")):
        h.host.scripts[model] = Script(
            streams=[[chunk(**{key: f"pondering {model}"}), chunk(content=f"answer {model}")]],
            chunk_delay=1.5,
        )
    h.host.scripts["d"] = Script(
        streams=[
            [chunk(content="<thi"), chunk(content="nk>inner d"), chunk(content="</think>answer d")]
        ],
        chunk_delay=1.5,
    )
    emitter = RecordingEmitter(h.clock)

    result = await h.run(emitter=emitter)

    blocks = re.findall(r'<details type="reasoning" done="(\w+)" duration="(\d+)">', result)
    assert blocks == [("true", "1")] * 4
    for model in "abcd":
        assert re.search(rf"Thought for .*\n> (pondering|inner) {model}\n</details>", result)
        assert f"answer {model}" in result
    assert "<think>" not in result and "</think>" not in result


async def test_tool_calls_show_executing_then_done_with_their_result():
    h = PipeHarness()
    h.host.chat_configs["chat-1"] = config("m1")
    gate = asyncio.Event()

    async def lookup(city: str) -> str:
        await gate.wait()
        return f'sunny in {city} "quoted" <b>'

    h.host.tools = {
        "lookup": {
            "spec": {"name": "lookup", "parameters": {"properties": {"city": {}}}},
            "callable": lookup,
        }
    }
    h.host.scripts["m1"] = Script(
        streams=[tool_call_chunks("lookup", '{"city": "Oslo"}'), reply("It is sunny.")]
    )
    emitter = RecordingEmitter(h.clock)
    run = asyncio.ensure_future(h.run(emitter=emitter))
    for _ in range(50):
        await asyncio.sleep(0)
    h.clock.advance(1)
    for _ in range(10):
        await asyncio.sleep(0)
    executing = emitter.contents()[-1]
    gate.set()
    result = await run

    assert '<details type="tool_calls" done="false"' in executing
    assert "Executing..." in executing
    assert "<b>" not in result.split("It is sunny.")[0].replace("<br", "")
    done = re.search(r'<details type="tool_calls" done="true" ([^>]*)>', result)
    assert done, result
    attrs = dict(re.findall(r'(\w+)="([^"]*)"', done.group(1)))
    import html as _html

    assert json.loads(_html.unescape(attrs["arguments"])) == {"city": "Oslo"}
    assert json.loads(_html.unescape(attrs["result"])) == 'sunny in Oslo "quoted" <b>'
    assert result.index("Tool Executed") < result.index("It is sunny.")
    follow_up = streamed(h)[1]["messages"]
    assert follow_up[-2]["tool_calls"][0]["function"]["name"] == "lookup"
    assert follow_up[-1] == {
        "role": "tool",
        "tool_call_id": "call_1",
        "content": 'sunny in Oslo "quoted" <b>',
    }


async def test_aliases_show_literally_and_never_as_markup():
    h = PipeHarness()
    evil = '"><img src=x onerror=alert(1)> *b* [x](http://y) $m$ T&J'
    h.host.chat_configs["chat-1"] = {"rounds": 1, "participants": [{"model": "m1", "alias": evil}]}

    result = await h.run()

    head = result.split("\n", 1)[0]
    assert not re.search(r"(?<!\\)[<>*$&]", head), "an unescaped markup character"
    assert "&amp;" not in head and "&lt;" not in head, "entities show literally in Open WebUI"
    assert [mmc.md_unescape(s) for s in speakers(result)] == [evil]
    assert streamed(h)[0]["messages"][0]["content"].count(evil) >= 1, "models see the real name"


async def test_a_finished_tool_shows_once_while_later_calls_of_its_batch_run():
    h = PipeHarness(interval=0)  # every change is a frame
    h.host.chat_configs["chat-1"] = config("m1")
    gate, slow_started = asyncio.Event(), asyncio.Event()

    async def fast() -> str:
        return "FAST"

    async def slow() -> str:
        slow_started.set()
        await gate.wait()
        return "SLOW"

    h.host.tools = {
        name: {"spec": {"name": name, "parameters": {}}, "callable": fn}
        for name, fn in (("fast", fast), ("slow", slow))
    }
    batch = tool_call_chunks("fast", "{}", "call_f", 0) + tool_call_chunks(
        "slow", "{}", "call_s", 1
    )
    h.host.scripts["m1"] = Script(streams=[batch, reply("both done")])
    emitter = RecordingEmitter(h.clock)
    run = asyncio.ensure_future(h.run(emitter=emitter))
    await asyncio.wait_for(slow_started.wait(), 5)
    await asyncio.sleep(0)
    while_slow_runs = emitter.contents()[-1]
    gate.set()
    result = await run

    assert while_slow_runs.count('id="call_f"') == 1, "the finished call shows twice"
    assert re.search(r'done="true" id="call_f"', while_slow_runs)
    assert re.search(r'done="false" id="call_s"', while_slow_runs)
    for frame in emitter.contents():
        assert frame.count('id="call_f"') <= 1 and frame.count('id="call_s"') <= 1, frame
    assert result.count('done="true"') == 2 and result.endswith("both done")


# -- 6. history ---------------------------------------------------------------------------------


async def test_next_message_sees_earlier_turns_split_by_speaker_and_cleaned():
    h = PipeHarness(models={"a": "A", "b": "B"})
    h.host.chat_configs["chat-1"] = config("a", "b")
    earlier = (
        "### 🔴 A\n\n"
        '<details type="reasoning" done="true" duration="2">\n<summary>x</summary>\n'
        "> secret thoughts\n</details>\nA says hello\n\n"
        "### 🔵 B\n\n"
        '<details type="tool_calls" done="true" id="c" name="t" arguments="{}" result="1">\n'
        "<summary>Tool Executed</summary>\n</details>\nB answers <think>hidden</think>kindly\n"
    )
    history = [
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": earlier},
    ]

    await h.run("second question", history=history)

    a_view = streamed(h)[0]["messages"][1:]
    assert a_view == [
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "A says hello"},
        {"role": "user", "content": 'B said: "B answers kindly"\n\nAnn said: "second question"'},
    ]
    b_view = streamed(h)[1]["messages"][1:]
    assert [m["role"] for m in b_view] == ["user", "assistant", "user"]
    assert b_view[0]["content"] == 'first question\n\nA said: "A says hello"'
    assert b_view[1]["content"] == "B answers kindly"
    assert b_view[2]["content"].startswith('second question\n\nA said: "a reply')
    for request in streamed(h):
        text = json.dumps(request["messages"])
        assert "secret thoughts" not in text and "hidden" not in text and "<details" not in text


# -- 7. tools -----------------------------------------------------------------------------------


def _echo_tools(h: PipeHarness) -> None:
    async def echo(text: str = "") -> dict:
        return {"echo": text, "files": [{"type": "image", "url": "/f/1.png"}]}

    h.host.tools = {
        "echo": {
            "spec": {"name": "echo", "parameters": {"properties": {"text": {}}}},
            "callable": echo,
        }
    }


async def test_tools_are_offered_only_to_native_models_and_others_get_one_notice():
    h = PipeHarness()
    _echo_tools(h)
    h.host.records["m2"] = make_record(function_calling="legacy")
    h.host.chat_configs["chat-1"] = config("m1", "m2", rounds=2)

    result = await h.run(metadata={"tool_ids": ["echo_tool"]})

    by_model = {r["model"]: r for r in streamed(h)}
    assert by_model["m1"]["tools"][0]["function"]["name"] == "echo"
    assert "tools" not in by_model["m2"]
    assert result.count("Tools are unavailable for M2") == 1
    assert "unavailable for M1" not in result


async def test_no_notice_when_the_user_picked_no_tools():
    h = PipeHarness()
    h.host.records["m2"] = make_record(function_calling="legacy")
    h.host.chat_configs["chat-1"] = config("m2")
    result = await h.run()
    assert "unavailable" not in result


async def test_tool_rounds_are_bounded_and_files_show_once():
    h = PipeHarness()
    _echo_tools(h)
    h.pipe.valves.MAX_TOOL_ROUNDS = 2
    h.host.chat_configs["chat-1"] = config("m1")
    h.host.scripts["m1"] = Script(
        streams=[
            tool_call_chunks("echo", '{"text": "one"}'),
            tool_call_chunks("echo", '{"text": "two"}', call_id="call_2"),
            reply("done now"),
        ]
    )

    result = await h.run()

    calls = streamed(h)
    assert len(calls) == 3
    assert "tools" in calls[0] and "tools" in calls[1] and "tools" not in calls[2]
    assert result.count('done="true" id="call_') == 2
    assert result.count("/f/1.png") == 2, "each call's file shows once, in its own block"
    assert result.endswith("done now")


async def test_malformed_calls_get_a_silent_bounded_correction():
    h = PipeHarness()
    _echo_tools(h)
    h.host.chat_configs["chat-1"] = config("m1")
    h.host.scripts["m1"] = Script(
        streams=[
            tool_call_chunks("ecko", '{"text": "x"}'),  # unknown name
            tool_call_chunks("echo", "__import__('os').system('x')"),  # not JSON
            tool_call_chunks("echo", '{"text": "ok"}'),
            reply("fine"),
        ]
    )

    result = await h.run()

    calls = streamed(h)
    assert len(calls) == 4
    corrections = [calls[1]["messages"][-1]["content"], calls[2]["messages"][-1]["content"]]
    assert "no tool named 'ecko'" in corrections[0] and "Available tools: echo" in corrections[0]
    assert "not valid JSON" in corrections[1]
    assert "ecko" not in result and "__import__" not in result, "corrections are silent"
    assert result.count('type="tool_calls" done="true"') == 1


async def test_corrections_run_out_and_the_bad_call_is_answered_with_an_error():
    h = PipeHarness()
    _echo_tools(h)
    h.pipe.valves.MAX_TOOL_CORRECTIONS = 1
    h.host.chat_configs["chat-1"] = config("m1")
    h.host.scripts["m1"] = Script(
        streams=[tool_call_chunks("nope", "{}"), tool_call_chunks("nope", "{}"), reply("ok")]
    )

    result = await h.run()

    assert len(streamed(h)) == 3
    assert "there is no tool named" in streamed(h)[2]["messages"][-1]["content"]
    assert result.count('name="nope"') == 1 and result.endswith("ok")


async def test_a_model_that_keeps_calling_tools_gets_max_tool_rounds_and_then_a_line():
    h = PipeHarness()
    _echo_tools(h)
    h.pipe.valves.MAX_TOOL_ROUNDS = 1
    h.host.chat_configs["chat-1"] = config("m1", "m2")
    runaway = [tool_call_chunks("echo", f'{{"text": "{i}"}}', f"call_{i}") for i in range(40)]
    h.host.scripts["m1"] = Script(streams=runaway)

    result = await h.run()

    m1 = [r for r in streamed(h) if r["model"] == "m1"]
    assert len(m1) == 2 and "tools" in m1[0] and "tools" not in m1[1]
    assert result.count('type="tool_calls" done="true"') == 1
    assert "*⚠️ M1 still asked for tools after 1 tool round; its turn ends here.*" in result
    assert speakers(result) == ["M1", "M2"]


# -- 8. background tasks ------------------------------------------------------------------------


async def test_title_generation_is_one_plain_completion_from_the_first_participant():
    h = PipeHarness()
    h.host.chat_configs["chat-1"] = config("m2", "m1")
    h.host.scripts["m2"] = Script(completions=['<think>hmm</think>{"title": "A Fine Title"}'])
    emitter = RecordingEmitter(h.clock)

    result = await h.run("make a title", task="title_generation", emitter=emitter)

    assert result == '{"title": "A Fine Title"}'
    assert [(r["model"], r["stream"]) for r in h.host.requests] == [("m2", False)]
    assert emitter.events == []


# -- 9. failures --------------------------------------------------------------------------------


async def test_a_failing_participant_gets_one_plain_retry_then_a_clear_line_and_others_go_on():
    h = PipeHarness(models={"a": "A", "b": "B", "c": "C"})
    h.host.chat_configs["chat-1"] = config("a", "b", "c")
    h.host.scripts["a"] = Script(
        streams=[mmc.ModelCallError("HTTP 500 upstream")], completions=["recovered a"]
    )
    h.host.scripts["b"] = Script(
        streams=[["data: [DONE]\n\n"]], completions=[mmc.ModelCallError("still down")]
    )

    result = await h.run()

    assert speakers(result) == ["A", "B", "C"]
    assert "recovered a" in result
    assert "*⚠️ B could not answer: still down*" in result
    assert "c reply" in result
    assert [(r["model"], r["stream"]) for r in h.host.requests] == [
        ("a", True),
        ("a", False),
        ("b", True),
        ("b", False),
        ("c", True),
    ]


async def test_a_reply_cut_midway_keeps_what_arrived_and_adds_an_error_line():
    h = PipeHarness()
    h.host.chat_configs["chat-1"] = config("m1", "m2")
    h.host.scripts["m1"] = Script(
        streams=[[chunk(content="partial words "), mmc.ModelCallError("connection lost")]]
    )

    result = await h.run()

    assert "partial words" in result and "M1 could not answer: connection lost" in result
    assert speakers(result) == ["M1", "M2"]
    assert [r["stream"] for r in h.host.requests] == [True, True], "no retry after partial text"


def test_an_error_reply_names_its_http_status_and_message():
    class Reply:  # the shape of a Starlette Response, as Open WebUI returns it
        def __init__(self, status_code, body):
            self.status_code, self.body = status_code, body

    error = json.dumps({"error": {"message": "upstream down"}}).encode()
    assert mmc._error_text(Reply(500, error)) == "HTTP 500: upstream down"
    assert mmc._error_text(Reply(502, b"Bad Gateway")) == "HTTP 502: Bad Gateway"
    assert mmc._error_text(Reply(503, b"")) == "HTTP 503"
    assert mmc._error_text({"error": {"message": "quota"}}) == "quota"


async def test_unreadable_frames_are_skipped_and_counted_in_one_line():
    h = PipeHarness()
    h.host.chat_configs["chat-1"] = config("m1", "m2", rounds=2)
    garbage = ["data: {oops\n\n", "data: [1, 2]\n\n", "data: \ufffd\ufffd\n\n"]
    h.host.scripts["m1"] = Script(
        streams=[[chunk(content="kept "), *garbage, chunk(content="words"), "data: [DONE]\n\n"]]
    )

    result = await h.run()

    assert speakers(result) == ["M1", "M2", "M1", "M2"]
    assert "kept words" in result
    line = "*⚠️ M1's reply had 3 unreadable stream frame(s), skipped: some of its text may"
    assert result.count(line) == 1
    # The second M1 turn sees its first reply without the warning.
    second_m1 = [r for r in h.host.requests if r["model"] == "m1"][1]
    own = [m["content"] for m in second_m1["messages"] if m["role"] == "assistant"]
    assert own == ["kept words"]


async def test_a_character_split_across_network_reads_arrives_whole():
    h = PipeHarness()
    h.host.chat_configs["chat-1"] = config("m1")
    frame = chunk(content="tea 🍵 time").replace("\\ud83c\\udf75", "🍵").encode()
    cut = frame.index("🍵".encode()) + 2  # inside the emoji's four bytes
    h.host.scripts["m1"] = Script(streams=[[frame[:cut], frame[cut:], b"data: [DONE]\n\n"]])

    result = await h.run()

    assert result.endswith("tea 🍵 time") and "\ufffd" not in result


# -- 10. access ---------------------------------------------------------------------------------


async def test_a_refused_model_gives_a_clear_message_and_no_model_is_called():
    h = PipeHarness()
    h.host.denied = {"m2"}
    h.host.chat_configs["chat-1"] = config("m1", "m2")

    result = await h.run()

    assert "You do not have access to 'm2'" in result
    assert h.host.requests == []


async def test_a_refused_manager_model_is_refused_too():
    h = PipeHarness(models={"m1": "M1", "boss": "Boss"})
    h.host.denied = {"boss"}
    h.host.chat_configs["chat-1"] = config("m1", use_manager=True, manager_model="boss")
    result = await h.run()
    assert "'boss'" in result and h.host.requests == []


async def test_a_failing_access_check_is_shown_as_such_and_logged_once(caplog):
    h = PipeHarness()
    h.host.chat_configs["chat-1"] = config("m1", "m2")
    h.host.chat_configs["chat-2"] = config("m1")

    async def broken(user, model, record):
        raise mmc.AccessCheckError(model["id"], RuntimeError("database is locked"))

    h.host.check_access = broken
    with caplog.at_level(logging.DEBUG, logger=mmc.__name__):
        result = await h.run()
        title = await h.run(chat_id="chat-2", task="title_generation")

    assert "You do not have access" not in result
    assert "Could not check your access to 'm" in result and "database is locked" in result
    assert h.host.requests == [] and title == ""
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 2 and all("database is locked" in w for w in warnings)


# -- 11. upgrade from Multi Model Conversations v2 ----------------------------------------------


V2_SAVED_USER_VALVES = {
    "NUM_PARTICIPANTS": 2,
    "ROUNDS_PER_CONVERSATION": 1,
    "Participant1Model": "m1",
    "Participant1Alias": "Alice",
    "Participant1SystemMessage": "You are Alice.",
    "Participant2Model": "m2",
    "Participant2Alias": "Bob",
    "Participant2SystemMessage": "You are Bob.",
    "Participant3Model": "",
    "Participant3Alias": "",
    "Participant3SystemMessage": "",
    "AllParticipantsApendedMessage": "Respond only as your character, Your acted response as",
    "UseGroupChatManager": False,
    "ManagerModel": "",
    "ManagerSystemMessage": "You are a group chat manager.",
    "ManagerSelectionPrompt": "History {history}; choose from {participant_list}",
    "Temperature": 0.7,
    "Top_k": 40,
    "Top_p": 0.9,
}


async def test_v2_saved_user_valves_load_and_run():
    h = PipeHarness()
    valves = h.pipe.UserValves(**V2_SAVED_USER_VALVES)

    result = await h.run(user_valves=valves, event_call=None)

    assert speakers(result) == ["Alice", "Bob"]
    first = streamed(h)[0]
    assert first["temperature"] == 0.7 and first["top_p"] == 0.9 and "top_k" not in first
    assert "You are Alice." in first["messages"][0]["content"]
    assert first["messages"][0]["content"].endswith("Your acted response as Alice")


async def test_v2_pipe_id_and_overlay_answer_shape_are_kept():
    h = PipeHarness()
    assert h.pipe.type == "manifold"
    assert h.pipe.pipes()[0]["id"] == "Conversation-pipe"
    v2_answer = {
        "rounds": 1,
        "use_manager": False,
        "manager_model": "",
        "participants": [
            {"model": "m1", "alias": "Alice", "system_message": "x"},
            {"model": "", "alias": "", "system_message": ""},
        ],
    }
    result = await h.run(event_call=Overlay(v2_answer))
    assert speakers(result) == ["Alice"]


async def test_v2_transcripts_split_into_turns():
    h = PipeHarness(models={"m1": "Alice", "m2": "Bob"})
    h.host.chat_configs["chat-1"] = {
        "rounds": 1,
        "participants": [{"model": "m1", "alias": "Alice"}, {"model": "m2", "alias": "Bob"}],
    }
    v2_message = (
        '\n\n### 🔴 Alice\n\n<details type="reasoning" done="true" duration="3">\n'
        "<summary>Thought for 3 seconds</summary>\n> plan\n</details>\n\nHello from Alice"
        "\n\n### 🔵 Bob\n\n<think>mull</think>Hi Alice, Bob here"
    )
    await h.run(
        "continue",
        history=[
            {"role": "user", "content": "start"},
            {"role": "assistant", "content": v2_message},
        ],
    )

    alice_view = streamed(h)[0]["messages"][1:]
    assert alice_view[1] == {"role": "assistant", "content": "Hello from Alice"}
    assert alice_view[2]["content"].startswith('Bob said: "Hi Alice, Bob here"')


# -- timeouts and oversized results -------------------------------------------------------------


async def test_a_stalled_model_ends_its_turn_and_the_next_one_speaks():
    h = PipeHarness()
    h.pipe.valves.TURN_TIMEOUT = 0.2  # real seconds of silence
    h.host.chat_configs["chat-1"] = config("m1", "m2")
    stall = asyncio.Event()  # never set

    original = h.host.stream_chat

    async def stalling(form, user):
        if form["model"] == "m1":
            yield chunk(content="I was saying ")
            await stall.wait()
        else:
            async for piece in original(form, user):
                yield piece

    h.host.stream_chat = stalling

    result = await asyncio.wait_for(h.run(), 5)

    assert "I was saying" in result
    assert "M1 could not answer: the model sent nothing for 0.2 s" in result
    assert speakers(result) == ["M1", "M2"] and "m2 reply" in result


async def test_a_slow_but_steady_model_is_not_cut_off():
    h = PipeHarness()
    h.pipe.valves.TURN_TIMEOUT = 0.2
    h.host.chat_configs["chat-1"] = config("m1")

    async def steady(form, user):
        for i in range(8):
            await asyncio.sleep(0.05)  # 0.4 s in all, never 0.2 s silent
            yield chunk(content=f"w{i} ")
        yield "data: [DONE]\n\n"

    h.host.stream_chat = steady
    result = await asyncio.wait_for(h.run(), 5)
    assert "w7" in result and "could not answer" not in result


async def test_a_hanging_tool_times_out_and_a_huge_result_is_clipped():
    h = PipeHarness()
    h.pipe.valves.TOOL_TIMEOUT = 30
    h.host.chat_configs["chat-1"] = config("m1")
    never = asyncio.Event()

    async def hang() -> str:
        await never.wait()
        return "never"

    async def huge() -> str:
        return "x" * 1_000_000

    h.host.tools = {
        "hang": {"spec": {"name": "hang", "parameters": {}}, "callable": hang},
        "huge": {"spec": {"name": "huge", "parameters": {}}, "callable": huge},
    }
    h.host.scripts["m1"] = Script(
        streams=[
            tool_call_chunks("hang", "{}"),
            tool_call_chunks("huge", "{}", call_id="call_2"),
            reply("done"),
        ]
    )
    run = asyncio.ensure_future(h.run())
    for _ in range(50):
        await asyncio.sleep(0)
    h.clock.advance(31)
    result = await asyncio.wait_for(run, 5)

    calls = streamed(h)
    assert "did not finish within 30 s" in calls[1]["messages"][-1]["content"]
    to_model = calls[2]["messages"][-1]["content"]
    assert len(to_model) < 101_000 and "more characters cut" in to_model
    assert len(result) < 40_000, "the block in the chat shows a clipped result"
    assert result.endswith("done")


async def test_a_manager_that_times_out_hands_the_turn_to_round_robin():
    h = PipeHarness()
    h.pipe.valves.MANAGER_TIMEOUT = 10
    h.host.chat_configs["chat-1"] = config("m1", "m2", use_manager=True)
    original = h.host.complete
    never = asyncio.Event()

    async def slow_manager(form, user):
        if form["messages"][0]["content"].startswith("You are a group chat manager"):
            await never.wait()
        return await original(form, user)

    h.host.complete = slow_manager
    emitter = RecordingEmitter(h.clock)
    run = asyncio.ensure_future(h.run(emitter=emitter))
    for _ in range(3):
        for _ in range(50):
            await asyncio.sleep(0)
        h.clock.advance(10.5)
    result = await asyncio.wait_for(run, 5)

    assert speakers(result) == ["M1", "M2"]
    assert sum("Manager took too long" in s for s in emitter.statuses()) == 2


async def test_stop_during_a_tool_call_cancels_the_tool_and_keeps_the_transcript():
    h = PipeHarness()
    h.host.chat_configs["chat-1"] = config("m1")
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def slow() -> str:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    h.host.tools = {"slow": {"spec": {"name": "slow", "parameters": {}}, "callable": slow}}
    h.host.scripts["m1"] = Script(
        streams=[[chunk(content="Let me check. ")] + tool_call_chunks("slow", "{}")]
    )
    emitter = RecordingEmitter(h.clock)
    run = asyncio.ensure_future(h.run(emitter=emitter))
    await asyncio.wait_for(started.wait(), 5)
    run.cancel()
    try:
        await run
        raise AssertionError("the cancellation must reach the host")
    except asyncio.CancelledError:
        pass

    assert cancelled.is_set(), "the tool kept running after Stop"
    assert "Let me check." in emitter.contents()[-1]
    assert 'done="false"' not in emitter.contents()[-1], "no block left executing forever"


async def test_a_synchronous_tool_runs_in_a_thread_and_its_timeout_holds():
    """Open WebUI wraps a sync tool in a coroutine that would block the event loop."""
    import threading
    import time

    h = PipeHarness()
    h.pipe.valves.TOOL_TIMEOUT = 5
    h.host.chat_configs["chat-1"] = config("m1")
    release, threads = threading.Event(), []

    def nap() -> str:  # what the tool's author wrote: plain, blocking code
        threads.append(threading.get_ident())
        release.wait(30)
        return "NAP"

    async def wrapped() -> str:  # how the host hands it over (get_async_tool_function...)
        return nap()

    wrapped.__function__ = nap
    h.host.tools = {"nap": {"spec": {"name": "nap", "parameters": {}}, "callable": wrapped}}
    h.host.scripts["m1"] = Script(streams=[tool_call_chunks("nap", "{}"), reply("woke")])
    run = asyncio.ensure_future(h.run())
    deadline = time.monotonic() + 10
    while not threads and time.monotonic() < deadline:
        await asyncio.sleep(0.01)  # the loop keeps running while the tool blocks
    assert threads and threads[0] != threading.get_ident()
    for _ in range(20):
        await asyncio.sleep(0)
    h.clock.advance(5)
    result = await asyncio.wait_for(run, 5)
    release.set()

    assert "did not finish within 5 s" in streamed(h)[1]["messages"][-1]["content"]
    assert "NAP" not in result and result.endswith("woke")


# -- the end of a run: the last status says what happened --------------------------------------

END_STATUS = re.compile(r"^\d+ participants?, \d+ turns?, \d+ s")


def last_status(emitter: RecordingEmitter) -> dict:
    return [e["data"] for _, e in emitter.events if e["type"] == "status"][-1]


async def test_a_finished_run_ends_on_participants_turns_and_seconds():
    h = PipeHarness(models={"a": "A", "b": "B", "c": "C"})
    h.host.chat_configs["chat-1"] = config("a", "b", "c", rounds=2)
    for m in ("a", "b", "c"):  # "a reply N": 3 chunks and [DONE], 1.75 fake s each: 7 s a turn
        h.host.scripts[m] = Script(chunk_delay=1.75)
    emitter = RecordingEmitter(h.clock)

    await h.run(emitter=emitter)

    assert last_status(emitter) == {"description": "3 participants, 6 turns, 42 s", "done": True}


async def test_the_managers_last_fallback_is_not_the_final_status():
    h = PipeHarness(models={"a": "A", "b": "B", "boss": "Boss"})
    h.host.chat_configs["chat-1"] = config(
        "a", "b", rounds=1, use_manager=True, manager_model="boss"
    )
    h.host.scripts["boss"] = Script(completions=["A", "nobody", "no one", "none"])
    emitter = RecordingEmitter(h.clock)

    await h.run(emitter=emitter)

    assert any(s.startswith("Manager named no participant") for s in emitter.statuses())
    assert last_status(emitter) == {"description": "2 participants, 2 turns, 0 s", "done": True}


async def test_an_end_condition_says_how_it_ended_in_the_final_status():
    h = PipeHarness(models={"a": "A", "b": "B"})
    h.host.chat_configs["chat-1"] = config("a", "b", rounds=3, stop_phrase="We agree")
    h.host.scripts["b"] = Script(streams=[reply("Fine.\nWe agree.")])  # a line of its own
    emitter = RecordingEmitter(h.clock)

    await h.run(emitter=emitter)

    assert emitter.statuses()[-1] == "2 participants, 2 turns, 0 s · stop phrase said"


async def test_an_error_and_a_bad_setup_end_on_a_status_too():
    h = PipeHarness()
    h.host.chat_configs["chat-1"] = config("m1", "m2")
    h.host.scripts["m2"] = Script(streams=[RuntimeError("the host broke")])
    emitter = RecordingEmitter(h.clock)

    result = await h.run(emitter=emitter)

    assert "The conversation stopped: the host broke" in result
    # M2's turn began (its heading shows) when the error struck: it counts, as a stopped one does.
    assert emitter.statuses()[-1] == "2 participants, 2 turns, 0 s · stopped by an error"

    bad = PipeHarness()
    bad.host.chat_configs["chat-1"] = config("nope")
    emitter = RecordingEmitter(bad.clock)
    await bad.run(emitter=emitter)
    assert emitter.statuses() == ["Not started: the setup needs fixing"]


async def test_stop_marks_the_turn_it_cut_and_the_final_status():
    h = PipeHarness()
    h.host.chat_configs["chat-1"] = config("m1", "m2", rounds=2)
    words = [chunk(content=f"tok{i} ") for i in range(10_000)]
    h.host.scripts["m2"] = Script(streams=[words], chunk_delay=0.01)
    emitter = RecordingEmitter(h.clock)
    run = asyncio.ensure_future(h.run(emitter=emitter))
    for _ in range(2000):
        await asyncio.sleep(0)
        if "tok20 " in "".join(emitter.contents()[-1:]):
            break
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run

    final = emitter.contents()[-1]
    assert speakers(final) == ["M1", "M2"] and "tok20 " in final
    assert final.endswith("\n\n*⏹️ …(stopped)*") and final.count("⏹️") == 1
    assert re.fullmatch(r"2 participants, 2 turns, \d+ s · stopped", emitter.statuses()[-1])
    # What later speakers read leaves the line out, like the other notices.
    cut = [t.content for t in mmc.split_turns(final) if t.speaker == "M2"]
    assert cut[0].startswith("tok0 tok1") and "stopped" not in cut[0] and "⏹" not in cut[0]


async def test_stop_between_turns_adds_no_line_but_the_status_says_stopped():
    h = PipeHarness(models={"a": "A", "b": "B", "boss": "Boss"})
    h.host.chat_configs["chat-1"] = config(
        "a", "b", rounds=2, use_manager=True, manager_model="boss"
    )
    asked = asyncio.Event()

    async def hang(form: dict, user) -> str:
        asked.set()
        await asyncio.Event().wait()
        return "A"

    h.host.complete = hang  # the manager never answers
    emitter = RecordingEmitter(h.clock)
    run = asyncio.ensure_future(h.run(emitter=emitter))
    await asyncio.wait_for(asked.wait(), 5)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run

    assert "⏹️" not in "".join(emitter.contents())
    assert emitter.statuses()[-1] == "2 participants, 0 turns, 0 s · stopped"
