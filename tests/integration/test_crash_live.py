"""A server killed mid-conversation keeps what the save policy promised.

Open WebUI is killed with SIGKILL (its whole process group: no shutdown, no last write) while a
conversation streams, then restarted on the same data dir. The policy (README, "Saves"): a turn's
end is a save point, so the chat holds every turn that ended before the last save the server
finished writing. Which save that is, the test reads off the events: the pipe sends one stored
event at a time (a save or a status) and starts the next only once the host has written the one
before, so a save followed by any stored event was written.
"""

from __future__ import annotations

import asyncio
import os
import signal

from tests.backend import ModelScript
from tests.integration.owui import MessageView, SocketEvent, start_chat
from tests.integration.test_pipe_live import overlay_answer, speakers

MODELS = ("model-a", "model-b", "model-c")
STORED = ("replace", "status")  # the events the host writes into the chat


def turns_in(text: str, replies: list[str]) -> int:
    """How many of `replies`, in order, `text` holds whole (each under its own heading)."""
    count, at = 0, 0
    for reply in replies:
        found = text.find(reply, at)
        if found < 0:
            break
        count, at = count + 1, found + len(reply)
    return count


def kill(server) -> None:
    """SIGKILL to the server's process group, as a crash or an OOM kill would end it."""
    proc, server._proc = server._proc, None
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)


async def test_a_killed_server_keeps_every_turn_that_ended_before_the_last_save(
    owui, backend, pipe, admin_socket
):
    for model in MODELS:
        backend.set_script(model, ModelScript(tokens=120, delay=0.01))  # ~1.2 s a turn
    admin_socket.answer("execute", overlay_answer(*MODELS, rounds=3))
    run = await start_chat(admin_socket, None, pipe, "Talk, please.")
    mine = run.assistant_message_id

    def in_fifth_turn(event: SocketEvent) -> bool:
        view = MessageView()
        for e in admin_socket.events_for(mine):
            view.apply(e)
        return len(speakers(view.content)) >= 5

    await admin_socket.wait_for(in_fifth_turn, timeout=120, start=run.first_event_index)
    await asyncio.to_thread(kill, owui.server)
    events = admin_socket.events_for(mine)
    replies = [r.reply for r in backend.requests]

    stored = [e for e in events if e.type in STORED]
    # A save followed by another stored event was written (see the module's docstring).
    written = [e.data["content"] for e in stored[:-1] if e.type == "replace"]
    assert written, "a save was written before the kill (four turns had ended)"
    promised = turns_in(written[-1], replies)
    assert promised >= 2, "the first turns' ends were saved"

    await asyncio.to_thread(owui.server.start)
    row = await owui.get_chat(run.chat_id)
    kept = row["chat"]["history"]["messages"][mine].get("content") or ""
    # Every turn that ended before the last written save is there, whole, in order.
    assert turns_in(kept, replies) >= promised, (promised, kept[-300:])
    assert kept.startswith(written[-1])
    # And nothing the tab was not shown: the stored text is one of the saves sent.
    sent = [e.data["content"] for e in events if e.type == "replace"]
    assert kept in sent
    assert len(speakers(kept)) < 9, "killed mid-conversation"
