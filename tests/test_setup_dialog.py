"""The setup dialog's ends on the Python side: cancelled, stopped while open, and its script."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess

import pytest

import multi_model_conversation as mmc
from tests.fakes import Overlay, PipeHarness, RecordingEmitter, config


async def test_a_cancelled_dialog_leaves_one_line_and_asks_again_next_time():
    h = PipeHarness()
    emitter = RecordingEmitter(h.clock)
    overlay = Overlay({"cancelled": True})  # Cancel, Escape or a click outside

    result = await h.run(event_call=overlay, emitter=emitter)

    assert result == mmc.SETUP_CANCELLED
    assert "Setup cancelled" in result and result.count("\n") == 0
    assert h.host.requests == [], "a model was called"
    assert "chat-1" not in h.host.chat_configs, "a cancelled setup was remembered"
    assert emitter.contents()[-1] == result, "the line was not saved with the message"
    # The line is a notice: it is not taken for anyone's turn in the chat's history.
    assert mmc.split_turns(result) == []

    overlay.answer = config("m1")
    again = await h.run("now for real", event_call=overlay, emitter=emitter)
    assert len(overlay.calls) == 2
    assert "### " in again and "Setup cancelled" not in again


async def test_a_stop_while_the_dialog_is_open_closes_it_and_says_so():
    h = PipeHarness()
    emitter = RecordingEmitter(h.clock)
    asked = asyncio.Event()
    never = asyncio.get_running_loop().create_future()

    async def open_dialog(event):
        asked.set()
        return await never

    run = asyncio.ensure_future(h.run(event_call=open_dialog, emitter=emitter))
    await asyncio.wait_for(asked.wait(), 5)
    run.cancel()  # the host cancels the request: the user pressed Stop
    with pytest.raises(asyncio.CancelledError):
        await run

    kinds = [e["type"] for _, e in emitter.events]
    closes = [e for _, e in emitter.events if e["type"] == "execute"]
    assert len(closes) == 1, kinds
    code = closes[0]["data"]["code"]
    assert mmc.OVERLAY_CLOSE_EVENT in code and '"msg-1"' in code
    # It closes the dialog before the last content lands, and that content is one line.
    assert kinds.index("execute") < max(i for i, k in enumerate(kinds) if k == "replace")
    assert emitter.contents()[-1] == mmc.STOPPED_IN_SETUP
    assert "chat-1" not in h.host.chat_configs


async def test_no_close_event_when_the_dialog_answered():
    h = PipeHarness()
    emitter = RecordingEmitter(h.clock)
    await h.run(event_call=Overlay(config("m1")), emitter=emitter)
    scripts = [e["data"]["code"] for _, e in emitter.events if e["type"] == "execute"]
    assert [c for c in scripts if mmc.OVERLAY_CLOSE_EVENT in c] == []
    assert scripts == [mmc.HOLD_SCROLL_SCRIPT]  # only the page's hold at the hand-over


def test_the_script_carries_its_inputs_as_literals():
    script = mmc.overlay_script(
        {"rounds": 2, "participants": []}, "mmc.", 60, 20, 400, message_id="</script>'\"x"
    )
    assert re.search(r"__[A-Z_]+__", script) is None, "a placeholder was left in"
    assert "</script>" not in script
    assert json.dumps(list(zip(mmc.COLOUR_MARKS, mmc.MARK_COLOURS, strict=True))) in script
    close = mmc.overlay_close_script("</script>")
    assert "</script>" not in close and mmc.OVERLAY_CLOSE_EVENT in close


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_scripts_parse_as_the_tab_runs_them():
    """Open WebUI wraps the code in an async function body; a syntax error would show nothing."""
    for code in (
        mmc.overlay_script({"rounds": 1, "participants": []}, "mmc.", 60, 20, 400, "m"),
        mmc.overlay_close_script("m"),
    ):
        wrapped = f"(async () => {{ {code} }});"
        done = subprocess.run(
            ["node", "--check", "-"], input=wrapped, capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 0, done.stderr


def test_a_placeholder_name_in_a_value_stays_as_typed():
    persona = "Say __OWN_PREFIX__, __MESSAGE_ID__ and __MARKS__ aloud."
    script = mmc.overlay_script(
        {"rounds": 1, "participants": [{"system_message": persona}]}, "mmc.", 60, 20
    )
    assert json.dumps(persona) in script


# -- issue 19: the dialog keeps what was typed ----------------------------------------------


def script_value(event: dict, name: str):
    """A value the dialog's script was opened with (`const NAME = <json>;`)."""
    match = re.search(rf"^const {name} = (.*);$", event["data"]["code"], re.MULTILINE)
    return json.loads(match.group(1))


class Answers:
    """A dialog that gives these answers in turn and records what each opening showed."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.calls: list[dict] = []

    async def __call__(self, event: dict):
        self.calls.append(event)
        return self.answers.pop(0)


async def test_a_refused_answer_opens_the_dialog_again_with_what_was_typed_and_why():
    h = PipeHarness()
    typed = config("m1", rounds=21)  # MAX_ROUNDS is 20
    typed["participants"][0]["system_message"] = "A persona typed with care."
    dialog = Answers(typed, {**typed, "rounds": 2})

    result = await h.run(event_call=dialog)

    assert len(dialog.calls) == 2
    assert script_value(dialog.calls[0], "PROBLEM") == ""
    shown = script_value(dialog.calls[1], "DEFAULTS")
    assert shown["participants"][0]["system_message"] == "A persona typed with care."
    assert shown["rounds"] == 21
    assert "Rounds must be between 1 and 20; got 21" in script_value(dialog.calls[1], "PROBLEM")
    assert "### " in result
    assert h.host.chat_configs["chat-1"]["rounds"] == 2


async def test_use_defaults_with_unusable_valves_asks_again_and_gives_up_after_a_few_tries():
    h = PipeHarness()
    dialog = Answers(*[None] * mmc.MAX_DIALOG_ASKS)  # "Use defaults"; the valves name no model

    result = await h.run(event_call=dialog)

    assert len(dialog.calls) == mmc.MAX_DIALOG_ASKS
    assert "Choose at least one participant" in script_value(dialog.calls[1], "PROBLEM")
    assert "Choose at least one participant" in result and h.host.requests == []
    assert "chat-1" not in h.host.chat_configs


async def test_a_timed_out_dialog_runs_the_valves_but_is_not_remembered():
    h = PipeHarness()
    valves = h.pipe.UserValves(NUM_PARTICIPANTS=1, Participant1Model="m2", Participant1Alias="V")
    dialog = Answers({"timed_out": True}, config("m1"))

    result = await h.run(event_call=dialog, user_valves=valves)

    assert "### 🔵 V" in result or "V" in result.split("\n")[0]
    assert "chat-1" not in h.host.chat_configs, "the fallback was remembered as the setup"
    again = await h.run("next", event_call=dialog, user_valves=valves)
    assert len(dialog.calls) == 2, "the next message did not ask again"
    assert "M1" in again and h.host.chat_configs["chat-1"]["participants"][0]["model"] == "m1"


async def test_use_defaults_is_a_choice_and_is_remembered():
    h = PipeHarness()
    valves = h.pipe.UserValves(NUM_PARTICIPANTS=1, Participant1Model="m2")
    await h.run(event_call=Answers(None), user_valves=valves)
    assert h.host.chat_configs["chat-1"]["participants"][0]["model"] == "m2"


async def test_reconfigure_opens_on_this_chats_setup_and_none_restores_the_valves():
    h = PipeHarness()
    h.host.chat_configs["chat-1"] = mmc.stored_form(
        mmc.parse_config(
            {"preset": "debate", "participants": [{"model": "m1"}, {"model": "m2"}]}, 20
        )
    )
    valves = h.pipe.UserValves(NUM_PARTICIPANTS=1, Participant1Model="m2", Participant1Alias="Val")
    dialog = Answers({"cancelled": True})
    history = [
        {"role": "user", "content": "Tea?"},
        {"role": "assistant", "content": "### 🔴 Pro\n\nyes"},
    ]

    await h.run("/reconfigure", event_call=dialog, user_valves=valves, history=history)

    shown = script_value(dialog.calls[0], "DEFAULTS")
    assert [p["alias"] for p in shown["participants"]] == ["Pro", "Con"]
    assert shown["preset"] == "debate" and shown["closing"]["alias"] == "Judge"
    settings = script_value(dialog.calls[0], "SETTINGS")
    assert [p["alias"] for p in settings["participants"]] == ["Val"] and "preset" not in settings
    # A new chat opens on the valves.
    fresh = Answers({"cancelled": True})
    await h.run(chat_id="chat-2", event_call=fresh, user_valves=valves)
    assert [p["alias"] for p in script_value(fresh.calls[0], "DEFAULTS")["participants"]] == ["Val"]


async def test_reconfigure_is_not_a_topic_the_conversation_goes_on_from_the_last_message():
    h = PipeHarness()
    h.host.chat_configs["chat-1"] = config("m1")
    history = [
        {"role": "user", "content": "Tea or coffee?"},
        {"role": "assistant", "content": "### 🔴 M1\n\nTea."},
    ]
    result = await h.run("/reconfigure", event_call=Overlay(config("m1", "m2")), history=history)

    assert "### " in result and "M2" in result
    for request in h.host.requests:
        sent = json.dumps(request["messages"])
        assert "/reconfigure" not in sent, "the command reached a model"
        assert "Tea or coffee?" in sent
    # Later messages: the command in the history reaches nobody either.
    later = [
        *history,
        {"role": "user", "content": "/reconfigure"},
        {"role": "assistant", "content": result},
    ]
    h.host.requests.clear()
    await h.run("And milk?", history=later)
    assert all("/reconfigure" not in json.dumps(r["messages"]) for r in h.host.requests)


def test_what_is_not_a_command():
    assert mmc.is_command(" /Reconfigure \n") and mmc.is_command(
        [{"type": "text", "text": "/reconfigure"}]
    )
    for text in ("/reconfigure please", "please /reconfigure", "reconfigure", "/reconfig", ""):
        assert not mmc.is_command(text), text


def test_every_button_of_the_dialog_answers():
    """Cancel, × and Use defaults each end the dialog (a button without a handler leaves it
    open forever)."""
    script = mmc.overlay_script({"rounds": 1, "participants": []}, "mmc.", 60, 20)
    for button, answer in (("cancel", "CANCELLED"), ("close", "CANCELLED")):
        assert f"{button}.addEventListener('click', () => finish({answer}))" in script, button
    # Use defaults answers at once, or, replacing a chat's saved setup, on its second click.
    handler = script[script.index("skip.addEventListener('click'") :]
    assert "if (!SAVED || replacing) return finish(null);" in handler[: handler.index("});")]


# -- issue 27: lines that are true ----------------------------------------------------------------


async def test_a_cancelled_reconfigure_says_the_saved_setup_stays_and_the_next_message_runs_it():
    h = PipeHarness()
    h.host.chat_configs["chat-1"] = config("m1", "m2")
    stored = dict(h.host.chat_configs["chat-1"])
    history = [
        {"role": "user", "content": "Tea?"},
        {"role": "assistant", "content": "### 🔴 M1\n\nyes"},
    ]
    dialog = Answers({"cancelled": True})

    result = await h.run("/reconfigure", event_call=dialog, history=history)

    assert result == mmc.SETUP_KEPT and "keeps its saved setup" in result
    assert "open it again" not in result  # the old line, untrue here
    assert script_value(dialog.calls[0], "SAVED") is True  # Use defaults asks first
    assert h.host.chat_configs["chat-1"] == stored and h.host.requests == []
    # ... and it is true: the next message runs the saved setup, no dialog.
    after = await h.run("Go on", event_call=dialog, history=history)
    assert len(dialog.calls) == 1 and "### 🔴 M1" in after
    # A first setup cancelled is not "kept": that line still says the dialog opens again.
    fresh = Answers({"cancelled": True})
    assert await h.run(chat_id="chat-2", event_call=fresh) == mmc.SETUP_CANCELLED
    assert script_value(fresh.calls[0], "SAVED") is False  # nothing to replace: no question
