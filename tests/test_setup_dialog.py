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
    assert [e for _, e in emitter.events if e["type"] == "execute"] == []


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
