"""The harness works against the real host, without our pipe: plain model chats, users and
grants, a throwaway pipe answered through `__event_call__`, stop, and a server restart."""

from __future__ import annotations

import asyncio
import textwrap
import uuid

import pytest

from tests.backend import default_reply
from tests.integration.owui import OwuiHTTPError, run_chat, start_chat

ECHO_PIPE = textwrap.dedent(
    '''
    """
    title: Echo Pipe
    description: Harness self-test: asks the tab a question, then echoes.
    """
    from pydantic import BaseModel


    class Pipe:
        class Valves(BaseModel):
            PREFIX: str = "echo"

        class UserValves(BaseModel):
            SUFFIX: str = "!"

        def __init__(self):
            self.valves = self.Valves()

        async def pipe(self, body, __user__, __event_emitter__, __event_call__):
            answer = await __event_call__({"type": "execute", "data": {"code": "return 1"}})
            await __event_emitter__({"type": "status", "data": {"description": "asked"}})
            text = body["messages"][-1]["content"]
            return f"{self.valves.PREFIX}:{answer}:{text}{__user__['valves'].SUFFIX}"
    '''
)


async def test_plain_model_chat_is_delivered_saved_and_recorded(owui, backend, admin_socket):
    result = await run_chat(admin_socket, None, "model-a", "Hello there")

    assert result.delivered == default_reply("model-a", 1, 8)
    assert result.saved == result.delivered
    assert result.content_events and result.task_ids and result.done_event
    (request,) = backend.requests
    assert request.model == "model-a" and request.stream and request.completed
    assert request.messages[-1] == {"role": "user", "content": "Hello there"}

    # A second message in the same chat sees the first turn and extends the same branch.
    second = await run_chat(admin_socket, None, "model-b", "And you?", chat_id=result.chat_id)

    assert second.saved == second.delivered == default_reply("model-b", 1, 8)
    assert [m["content"] for m in backend.requests[-1].messages] == [
        "Hello there",
        result.delivered,
        "And you?",
    ]
    history = second.chat["history"]
    assert history["currentId"] == second.assistant_message_id
    assert history["messages"][second.user_message_id]["parentId"] == result.assistant_message_id


async def test_users_grants_and_model_params(owui, backend):
    user = await owui.add_user("Bob", f"bob-{uuid.uuid4().hex[:8]}@example.com", "bob-password")
    sock = await owui.connect(user.token)
    try:
        with pytest.raises(OwuiHTTPError):  # a connection model without a grant is admin-only
            await run_chat(sock, user.token, "model-c", "hi")

        await owui.grant_model_access("model-c", user.id)
        await owui.set_model_params("model-c", params={"system": "Be brief."})
        result = await run_chat(sock, user.token, "model-c", "hi")
    finally:
        await sock.disconnect()

    assert result.saved == result.delivered == default_reply("model-c", 1, 8)
    assert backend.requests[-1].messages[0] == {"role": "system", "content": "Be brief."}
    assert "model-c" in await owui.models(user.token)


async def test_function_valves_and_event_call(owui, backend, admin_socket, tmp_path):
    path = tmp_path / "echo_pipe.py"
    path.write_text(ECHO_PIPE)
    function = await owui.install_function(path, "echo_pipe")
    assert function["is_active"] and function["name"] == "Echo Pipe"
    await owui.install_function(path, "echo_pipe")  # the update path
    await owui.set_function_valves("echo_pipe", {"PREFIX": "P"})
    await owui.set_user_valves("echo_pipe", {"SUFFIX": "?"})
    admin_socket.answer("execute", lambda data: 42)

    result = await run_chat(admin_socket, None, "echo_pipe", "hi")

    assert result.delivered == result.saved == "P:42:hi?"
    (call,) = result.calls
    assert call.type == "execute" and call.data == {"code": "return 1"} and call.answer == 42
    assert backend.requests == []  # the pipe called no model


async def test_stop_then_restart_keeps_the_chat(owui, backend, admin_socket):
    backend.set_script("model-d", tokens=400, delay=0.02)
    run = await start_chat(admin_socket, None, "model-d", "talk a lot")
    await admin_socket.wait_for(
        lambda e: (
            e.message_id == run.assistant_message_id
            and (e.data or {}).get("type") == "response.output_text.delta"
        ),
        timeout=30,
        start=run.first_event_index,
    )
    await owui.stop(run.chat_id)
    stopped = await run.wait(30)
    assert stopped.view.cancelled
    assert 0 < len(stopped.delivered) < len(default_reply("model-d", 1, 400))
    assert not backend.requests[0].completed

    await asyncio.to_thread(owui.restart)

    sock = await owui.connect()
    try:
        again = await run_chat(sock, None, "model-a", "still there?", chat_id=run.chat_id)
    finally:
        await sock.disconnect()
    assert again.saved == again.delivered == default_reply("model-a", 1, 8)
    assert again.chat["history"]["messages"][run.assistant_message_id]["done"] is True
