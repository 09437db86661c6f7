"""The test harness's own rules: what the real-model check measures and blames, and the test
tab's heartbeats. A check that miscounts or blames the wrong thing sends people chasing bugs
that are not there."""

from __future__ import annotations

import asyncio
import sys
import textwrap
import urllib.error
from pathlib import Path

import pytest
import socketio
from aiohttp import web

from tests.integration import real_model
from tests.integration.owui import SocketClient, free_port

NAMES = ["Mia", "Tom", "Priya", "Admin", "User"]


# ------------------------------------------------------------------------------------------
# What a turn said: the pipe's notice lines are not part of it
# ------------------------------------------------------------------------------------------


def test_the_end_line_is_not_part_of_the_last_turn():
    saved = (
        "### 🔴 Mia\n\nLet us go hiking.\n\n\n### 🔵 Tom\n\nToo expensive.\n\n"
        "*✂️ …(cut at 400 tokens)*\n\n*🏁 The conversation ended after 2 turns: the manager "
        "ended it.*"
    )
    turns = real_model.turns_of(saved)
    assert [name for name, _ in turns] == ["Mia", "Tom"]
    assert [real_model.spoken(said) for _, said in turns] == ["Let us go hiking.", "Too expensive."]


@pytest.mark.parametrize(
    "line",
    ["*⏭️ Tom passed.*", "*🗳️ Vote: hiking (2)*", "*⏹️ …(stopped)*", "*⚠️ Tom could not answer*"],
)
def test_every_notice_of_the_pipe_is_left_out(line):
    assert real_model.spoken(f"Fine by me.\n\n{line}") == "Fine by me."


@pytest.mark.parametrize(
    "said",
    ["*smiles* Fine by me.", "*laughs*", "Fine *by* me.", "*🏁 is my favourite flag* I said."],
)
def test_a_participants_own_italics_stay(said):
    assert real_model.spoken(said) == said


# ------------------------------------------------------------------------------------------
# Imitation: a line where one participant speaks as another
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    ["Tom: I agree.", "**Tom:** I agree.", "Tom said: fine", "Tom says: fine", "  tom says : ok"],
)
def test_a_line_spoken_as_someone_else_is_caught(line):
    assert real_model.imitation_lines(f"I think so.\n{line}", "Mia", NAMES) == [line]


@pytest.mark.parametrize(
    "line",
    [
        "Mia: my own name",  # the speaker herself
        "Tomorrow: we leave early.",
        "Tom's plan: camping.",
        "I told Tom: no.",
        "Tom says hello: yes",  # says what, not a label
        "Priyanka: someone else",
    ],
)
def test_lines_that_only_mention_someone_are_not_caught(line):
    assert real_model.imitation_lines(line, "Mia", NAMES) == []


# ------------------------------------------------------------------------------------------
# A llama server that exits is reported as such, before a request is blamed
# ------------------------------------------------------------------------------------------

DYING_SERVER = textwrap.dedent(
    """
    import http.server, json, os, signal, sys
    port = int(sys.argv[1])
    print("llama_model_loader: loaded meta data; system_info: AVX2 = 1 | AMX_INT8 = 1", flush=True)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"data": []}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            os.kill(os.getpid(), signal.SIGILL)  # what a CPU without AMX does at the first token

    http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
    """
)


class DyingServer(real_model.LlamaServer):
    """Answers /v1/models, then dies of SIGILL at its first POST, as the native build did."""

    def argv(self, config_path: Path) -> list[str]:
        script = self.workdir / "dying_server.py"
        script.write_text(DYING_SERVER)
        return [sys.executable, str(script), str(self.port)]


def test_a_server_that_died_is_reported_with_its_signal_and_log(tmp_path):
    server = DyingServer(tmp_path)
    server.start(timeout=30)
    try:
        with pytest.raises(real_model.LlamaServerExited) as caught:
            server.tokens("Hello there")
    finally:
        server.stop()
    message = str(caught.value)
    assert "signal SIGILL (exit 132 in a shell)" in message
    assert "AMX_INT8 = 1" in message  # the end of its log comes with it


def test_a_running_server_is_not_blamed(tmp_path):
    server = DyingServer(tmp_path)
    server.start(timeout=30)
    try:
        assert server.exited() is None
        server.ensure_running()
    finally:
        server.stop()


def test_a_refused_connection_to_a_live_server_stays_a_connection_error(tmp_path):
    server = DyingServer(tmp_path)
    server.start(timeout=30)
    server.port = free_port()  # nobody listens there; the server itself still runs
    try:
        with pytest.raises(urllib.error.URLError):
            server.tokens("Hello there")
    finally:
        server.stop()


# ------------------------------------------------------------------------------------------
# The test tab sends heartbeats as the browser does
# ------------------------------------------------------------------------------------------


async def test_the_test_tab_sends_heartbeats_until_it_disconnects():
    sio = socketio.AsyncServer(async_mode="aiohttp")
    app = web.Application()
    sio.attach(app, socketio_path="/ws/socket.io")
    beats: list[str] = []
    sio.on("user-join", lambda sid, data: {"id": "u1", "name": "U"})
    sio.on("heartbeat", lambda sid, data: beats.append(sid))
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    client = SocketClient(f"http://127.0.0.1:{port}", "token", heartbeat_interval=0.05)
    try:
        await client.connect()
        async with asyncio.timeout(10):
            while len(beats) < 3:
                await asyncio.sleep(0.05)
        assert set(beats) == {client.sid}
        await client.disconnect()
        sent = len(beats)
        await asyncio.sleep(0.3)
        assert len(beats) == sent  # none after the tab closed
    finally:
        await client.disconnect()
        await runner.cleanup()


# ------------------------------------------------------------------------------------------
# A tab whose socket dropped mid-message: the result comes from the database
# ------------------------------------------------------------------------------------------


class DroppedRun:
    """A ChatRun whose end event never comes; the database has the message (done or not)."""

    def __init__(self, connected: bool, done: bool) -> None:
        self.chat_id, self.token, self.assistant_message_id = "c1", "t", "m1"
        self.user_message_id, self.model, self.task_ids, self.sent_at = "u1", "mmc", [], 0.0
        self.client = type("Client", (), {"connected": connected})()
        self.owui = self
        self.waits = 0
        self.message = {"id": "m1", "content": "### 🔴 Mia\n\nHi.", "done": done}

    async def wait(self, timeout: float):
        self.waits += 1
        raise TimeoutError("no end")

    async def get_chat(self, chat_id: str, token: str | None = None) -> dict:
        return {"chat": {"history": {"messages": {"m1": self.message}}}}


async def test_a_dropped_socket_reads_the_finished_message_from_the_database():
    run = DroppedRun(connected=False, done=True)
    result = await real_model.finished(run, timeout=30, poll=0.01)
    assert result.saved == "### 🔴 Mia\n\nHi." and run.waits == 1


async def test_a_live_socket_or_an_unfinished_message_keeps_waiting_until_the_timeout():
    for run in (DroppedRun(connected=True, done=True), DroppedRun(connected=False, done=False)):
        with pytest.raises(TimeoutError):
            await real_model.finished(run, timeout=0.05, poll=0.01)
        assert run.waits >= 2
