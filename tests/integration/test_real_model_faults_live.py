"""What real models do, played by the scripted backend in a real Open WebUI 0.12.4 (issue 10).

Runaway replies, replies cut by length or by the server, context-length errors, models writing
other participants' lines, a manager naming several people, background tasks answering prose.
Each test checks what was saved, what was delivered and what each model was sent.
"""

from __future__ import annotations

import re

import pytest_asyncio

from tests.integration.conftest import FUNCTION_ID
from tests.integration.owui import Owui, run_chat
from tests.integration.test_faults_live import NOTICE, turns_of
from tests.integration.test_pipe_live import overlay_answer, speakers, text_of


@pytest_asyncio.fixture
async def admin_valves(owui: Owui, pipe):
    """Sets the pipe's admin valves for one test and puts the old ones back afterwards."""
    path = f"/api/v1/functions/id/{FUNCTION_ID}/valves"
    before = await owui.request("GET", path)

    async def set_valves(**values) -> None:
        await owui.set_function_valves(FUNCTION_ID, values)

    yield set_valves
    await owui.set_function_valves(FUNCTION_ID, before or {}, merge=False)


def view(request) -> str:
    """Everything one request showed its model, as one text."""
    return "\n".join(text_of(m.get("content")) for m in request.messages)


# ==========================================================================================
# 1. Turn bounds
# ==========================================================================================


async def test_runaway_replies_are_bounded_by_tokens_or_time_and_marked(
    owui, backend, admin_socket, pipe, admin_valves
):
    await admin_valves(MAX_TOKENS=40, TURN_TIME_LIMIT=2)
    backend.set_script("model-a", tokens=100_000)  # would never end; stops at max_tokens
    # Ignores max_tokens and streams on: only the wall-clock limit ends it.
    backend.set_script("model-b", tokens=100_000, delay=0.01, honor_max_tokens=False)
    answer = overlay_answer("model-a", "model-b", "model-c")
    answer["participants"][2]["max_tokens"] = 5  # its own limit from the dialog
    admin_socket.answer("execute", answer)

    result = await run_chat(admin_socket, None, pipe, "Talk as long as you like.", timeout=90)

    saved = result.saved
    assert speakers(saved) == ["A", "B", "C"] and saved == result.delivered
    turn = turns_of(saved)
    a, b, c = (backend.requests_for(m)[0] for m in ("model-a", "model-b", "model-c"))
    assert [a.body.get("max_tokens"), b.body.get("max_tokens"), c.body.get("max_tokens")] == [
        40,
        40,
        5,
    ]
    # A: the server stopped at 40 tokens and said "length"; the turn shows it.
    assert a.finish_reason == "length" and len(a.reply.split()) == 40
    assert turn["A"].endswith("*✂️ …(cut at 40 tokens)*") and a.reply.strip() in turn["A"]
    # B: cut by time; the stream was closed, so the backend stopped sending.
    assert turn["B"].endswith("*✂️ …(cut after 2 s)*") and not b.completed
    assert b.finished_at is not None and len(b.reply.split()) < 100_000
    assert turn["C"].endswith("*✂️ …(cut at 5 tokens)*")
    # The marks are not part of what the next speakers read; the text is.
    c_view = view(c)
    assert "✂️" not in c_view and "cut at" not in c_view and "cut after" not in c_view
    assert a.reply.strip() in c_view
    assert len(backend.requests) == 3, "a cut reply is not retried"


async def test_a_stream_the_server_ends_midway_keeps_its_text_and_says_so(
    owui, backend, admin_socket, pipe
):
    backend.set_script("model-a", tokens=30, end_after=6)  # clean close, no finish, no [DONE]
    admin_socket.answer("execute", overlay_answer("model-a", "model-b"))

    result = await run_chat(admin_socket, None, pipe, "Go.")

    saved = result.saved
    assert speakers(saved) == ["A", "B"] and saved == result.delivered
    turn = turns_of(saved)
    (a,) = backend.requests_for("model-a")
    assert re.match(re.escape(a.reply.strip()), turn["A"]) and len(a.reply.split()) == 6
    assert turn["A"].endswith(
        f"{NOTICE}A could not answer: the stream ended before the model finished*"
    )
    assert a.reply.strip() in view(backend.requests_for("model-b")[0])
