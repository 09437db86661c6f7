"""The pipe in Open WebUI as a scaled deployment runs it: two uvicorn workers sharing one
PostgreSQL database, with Redis for the websocket manager and shared state.

The module starts its own PostgreSQL cluster (`initdb` in a temp dir, 127.0.0.1, a free port)
and redis-server, and stops both, every worker process and the cluster's files, at the end.
The first boot against the empty database runs with one worker, so Open WebUI's migrations and
default config are written once; the two workers then start on a database that is ready. (Two
workers booting on an empty database race to write the same default config rows, and one dies
with a unique-constraint error: `sqlite3.IntegrityError: UNIQUE constraint failed: config.key`
on SQLite, the same on PostgreSQL.)

Which worker serves what is not left to chance. Both workers accept on one shared listening
socket, so the kernel hands each new connection to one of them; the kernel's socket table
(psutil) says which process accepted it. A test opens connections until the worker it wants has
accepted one, and sends the request over that connection:

- `POST /api/chat/completions` pinned to a worker: Open WebUI runs the chat task, and so the
  pipe, as an asyncio task of the process that handled that request (`main.py` chat_completion
  -> `tasks.create_task`, an `asyncio.create_task` in that process).
- A socket.io tab pinned to a worker: its websocket connection is accepted by that worker.

So each check below runs the pipe on one worker while the browser tab that must see its events
(and, for the setup dialog, answer it) is connected to the other one. The host's log
corroborates it: the pipe's log lines name the module instance that ran, one per worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import re
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.backend import BackendThread, ModelScript
from tests.integration.owui import (
    MessageView,
    OpenWebUIServer,
    Owui,
    OwuiHTTPError,
    SocketClient,
    User,
    run_chat,
    start_chat,
)
from tests.integration.services import PostgresServer, RedisServer
from tests.integration.test_pipe_live import overlay_answer, speakers

ROOT = Path(__file__).resolve().parents[2]
FUNCTION_ID = "mmc"
PIPE_MODEL = f"{FUNCTION_ID}.Conversation-pipe"
CONFIG_KEY = "multi_model_config"
WORKERS = 2
BOOT_TIMEOUT = 400.0  # three processes import Open WebUI on a busy 2-core machine
# The whole module: a cluster, a first boot, a two-worker boot and both tests.
pytestmark = pytest.mark.timeout(1500)
PIN_TIMEOUT = 120.0
MESSAGE_TIMEOUT = 120.0


# ==========================================================================================
# Which worker accepted a connection
# ==========================================================================================


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


class Workers:
    """The server's worker processes and connections pinned to one of them."""

    def __init__(self, server: OpenWebUIServer) -> None:
        self.server = server
        self.pids: tuple[int, ...] = ()

    def discover(self, timeout: float) -> tuple[int, ...]:
        """The children of `open-webui serve` listening on the port (not the resource tracker)."""
        assert self.server._proc is not None
        parent = psutil.Process(self.server._proc.pid)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            listening = []
            for child in parent.children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    if any(
                        c.status == psutil.CONN_LISTEN and c.laddr.port == self.server.port
                        for c in child.net_connections("tcp")
                    ):
                        listening.append(child.pid)
            if len(listening) == WORKERS:
                self.pids = tuple(sorted(listening))
                return self.pids
            time.sleep(0.5)
        raise TimeoutError(f"expected {WORKERS} workers listening, found {listening}")

    def owner(self, local_port: int, timeout: float = 10.0) -> int | None:
        """The worker that accepted our connection from `local_port` (None: none yet)."""
        deadline = time.monotonic() + timeout
        while True:
            for pid in self.pids:
                try:
                    connections = psutil.Process(pid).net_connections("tcp")
                except psutil.NoSuchProcess:
                    continue
                for c in connections:
                    if c.raddr and c.raddr.port == local_port and c.laddr.port == self.server.port:
                        return pid
            if time.monotonic() > deadline:
                return None
            time.sleep(0.02)

    def connection_to(self, pid: int, timeout: float = PIN_TIMEOUT) -> http.client.HTTPConnection:
        """An HTTP connection that worker `pid` accepted (others are closed and retried)."""
        deadline = time.monotonic() + timeout
        tries = 0
        while True:
            if gone(pid):
                raise RuntimeError(f"worker {pid} is gone; log:\n{self.server.log_tail(40)}")
            tries += 1
            conn = http.client.HTTPConnection(
                "127.0.0.1", self.server.port, timeout=MESSAGE_TIMEOUT
            )
            conn.connect()
            if self.owner(conn.sock.getsockname()[1]) == pid:
                return conn
            conn.close()
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker {pid} accepted none of {tries} connections")

    def request_on(
        self, pid: int, method: str, path: str, token: str | None, body: Any = None
    ) -> tuple[int, Any]:
        """One HTTP request served by worker `pid`; (status, JSON body)."""
        conn = self.connection_to(pid)
        try:
            headers = {"Content-Type": "application/json", "Connection": "close"}
            if token:
                headers["Authorization"] = f"Bearer {token}"
            data = json.dumps(body).encode() if body is not None else None
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            text = response.read().decode()
            try:
                return response.status, json.loads(text) if text else None
            except json.JSONDecodeError:
                return response.status, text
        finally:
            conn.close()


class PinnedOwui(Owui):
    """The REST helpers, with the chat completion request sent to one chosen worker."""

    def __init__(self, base: Owui, workers: Workers, pin: int) -> None:
        super().__init__(base.server, base.backend)
        self.admin = base.admin
        self.workers = workers
        self.pin = pin

    async def request(
        self,
        method: str,
        path: str,
        token: str | None = None,
        json_body: Any = None,
        expect: tuple[int, ...] = (200,),
        timeout: float = 60.0,
    ) -> Any:
        if (method, path) != ("POST", "/api/chat/completions"):
            return await super().request(method, path, token, json_body, expect, timeout)
        token = self.admin_token if token is None else token
        status, body = await asyncio.to_thread(
            self.workers.request_on, self.pin, method, path, token, json_body
        )
        if status not in expect:
            raise OwuiHTTPError(method, path, status, body)
        return body


@dataclass
class Deployment:
    owui: Owui
    redis: RedisServer
    postgres: PostgresServer
    workers: Workers

    def on(self, pid: int) -> PinnedOwui:
        """REST helpers whose chat completion requests worker `pid` serves."""
        return PinnedOwui(self.owui, self.workers, pid)

    async def socket_on(self, pid: int, token: str | None = None) -> SocketClient:
        """A connected, joined browser tab whose websocket worker `pid` accepted."""
        for _ in range(200):
            client = SocketClient(self.owui.url, token or self.owui.admin_token, owui=self.owui)
            await client.connect()
            sockname = client._sio.eio.ws.get_extra_info("sockname")
            if sockname is None:
                await client.disconnect()
                raise RuntimeError("cannot read the websocket's local address")
            owner = await asyncio.to_thread(self.workers.owner, sockname[1])
            if owner == pid:
                return client
            await client.disconnect()
        raise TimeoutError(f"worker {pid} accepted none of 200 websocket connections")


def first_boot(server: OpenWebUIServer) -> None:
    """One worker boots once against the empty database: migrations and defaults, written once."""
    workers = server.extra_env["UVICORN_WORKERS"]
    server.extra_env["UVICORN_WORKERS"] = "1"
    try:
        server.start(BOOT_TIMEOUT)
    finally:
        server.stop()
        server.extra_env["UVICORN_WORKERS"] = workers


@pytest.fixture(scope="module")
def deployment(
    scripted_backend: BackendThread, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    workdir = tmp_path_factory.mktemp("multiworker")
    redis = RedisServer(workdir / "redis")
    postgres = PostgresServer()
    server = OpenWebUIServer(
        scripted_backend.url,
        workdir / "open-webui",
        extra_env={
            "UVICORN_WORKERS": str(WORKERS),
            "DATABASE_URL": postgres.url,
            "WEBSOCKET_MANAGER": "redis",
            "WEBSOCKET_REDIS_URL": redis.url,
            "REDIS_URL": redis.url,
            "ENABLE_WEBSOCKET_SUPPORT": "true",
        },
    )
    workers = Workers(server)
    pids: tuple[int, ...] = ()
    booted_at = 0  # the log's size once both workers answered
    try:
        redis.start()
        postgres.start()
        first_boot(server)
        server.start(BOOT_TIMEOUT)
        pids = workers.discover(60)
        # /health answered once one worker was up; wait for the other one too.
        for pid in pids:
            status, _ = workers.request_on(pid, "GET", "/health", None)
            assert status == 200, f"worker {pid} answered /health with {status}"
        booted_at = server.log_path.stat().st_size
        owui = Owui(server, scripted_backend)
        owui.signup_admin_sync()
        yield Deployment(owui, redis, postgres, workers)
    finally:
        server.stop()
        redis.stop()
        postgres.stop()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not all(gone(pid) for pid in pids):
            time.sleep(0.2)
        left = [pid for pid in pids if not gone(pid)]
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert not left, f"worker processes {left} outlived the server"
        # uvicorn's supervisor kills and replaces a worker that misses its 5 s health ping,
        # which a loaded machine can cause while a worker still imports Open WebUI. Before
        # `discover` that is harmless; after it, the tests' pinned worker ids would be stale.
        after_boot = ""
        if server.log_path.exists():
            with open(server.log_path, "rb") as log:
                log.seek(booted_at)
                after_boot = log.read().decode(errors="replace")
        restarts = re.findall(r"Child process \[\d+\] died", after_boot)
        assert not restarts, f"uvicorn restarted a worker mid-test: {restarts}"
        assert not postgres.workdir.exists(), "the PostgreSQL cluster's files were left behind"


@pytest.fixture
async def pipe(deployment: Deployment) -> str:
    await deployment.owui.install_function(ROOT / "multi_model_conversation.py", FUNCTION_ID)
    return PIPE_MODEL


def log_size(deployment: Deployment) -> int:
    return deployment.owui.server.log_path.stat().st_size


def pipe_modules_logged(deployment: Deployment, since: int) -> set[str]:
    """Names of the pipe modules whose logger wrote to the server log after offset `since`.

    Open WebUI loads a function as a module named `function_<id>_<uuid4 hex>`, once per
    process while its content is unchanged (`utils/plugin.py`), and its log lines carry that
    module name. Two names in step with the worker we picked say: two processes ran the pipe.
    """
    with open(deployment.owui.server.log_path, "rb") as log:
        log.seek(since)
        text = log.read().decode(errors="replace")
    return set(re.findall(rf"\| (function_{FUNCTION_ID}_[0-9a-f]{{32}}):", text))


def view_of(client: SocketClient, message_id: str) -> MessageView:
    """What that tab shows for the message, from the events it received."""
    view = MessageView()
    for event in client.events_for(message_id):
        view.apply(event)
    return view


async def ended(client: SocketClient, message_id: str) -> None:
    """Waits until that tab was told the message's task ended (chat:active false)."""
    await client.wait_for(
        lambda e: (
            e.message_id == message_id
            and e.type == "chat:active"
            and not (e.data or {}).get("active")
        ),
        MESSAGE_TIMEOUT,
    )


# ==========================================================================================
# The tests
# ==========================================================================================


async def test_saved_setup_and_events_reach_across_workers(deployment, backend, pipe):
    """A chat's setup, saved by one worker, is found by both; every event reaches both tabs.

    The first message runs on worker B and asks its setup from a tab on worker A (the
    `execute` call crosses Redis both ways). Six follow-ups then alternate A, B, A, B, A, B.
    Were the setup kept in a worker's memory (on the shared `Pipe` instance, or a module
    dict), the follow-ups on worker A, which never saw the first message, would open the
    dialog again; the tab would answer it with other models (model-c, model-d), and both the
    "no call" and the "model-a, model-b" checks below would fail. (Checked once by emptying the
    chat's meta column in the database after the first message: follow-up 1 then failed.)
    """
    worker_a, worker_b = deployment.workers.pids
    for model in ("model-a", "model-b", "model-c", "model-d"):
        backend.set_script(model, ModelScript(tokens=40, delay=0.005))
    tab_a = await deployment.socket_on(worker_a)  # sends the messages, answers the dialog
    tab_b = await deployment.socket_on(worker_b)  # the same user's second tab
    try:
        config = overlay_answer("model-a", "model-b")
        tab_a.answer("execute", config)
        modules: dict[int, set[str]] = {worker_a: set(), worker_b: set()}
        offset = log_size(deployment)
        first = await run_chat(
            tab_a,
            None,
            pipe,
            "Discuss tea.",
            owui=deployment.on(worker_b),
            timeout=MESSAGE_TIMEOUT,
        )
        assert [c.type for c in first.calls] == ["execute"]
        assert speakers(first.saved) == ["A", "B"]
        assert first.saved == first.delivered
        assert [r.model for r in backend.requests] == ["model-a", "model-b"]
        row = await deployment.owui.get_chat(first.chat_id)
        assert row["meta"][CONFIG_KEY] == config
        # The workers share PostgreSQL: the setup is in its chat row, and no SQLite file exists.
        [(meta,)] = deployment.postgres.query("SELECT meta FROM chat WHERE id = %s", first.chat_id)
        assert (json.loads(meta) if isinstance(meta, str) else meta)[CONFIG_KEY] == config
        assert not (deployment.owui.server.data_dir / "webui.db").exists()
        modules[worker_b] |= pipe_modules_logged(deployment, offset)

        # From now on the dialog would get other models: being asked again would show.
        tab_a.answer("execute", overlay_answer("model-c", "model-d"))
        served = []
        for n, worker in enumerate([worker_a, worker_b] * 3, start=1):
            before, offset = len(backend.requests), log_size(deployment)
            result = await run_chat(
                tab_a,
                None,
                pipe,
                f"Follow-up {n}.",
                chat_id=first.chat_id,
                owui=deployment.on(worker),
                timeout=MESSAGE_TIMEOUT,
            )
            served.append(worker)
            modules[worker] |= pipe_modules_logged(deployment, offset)
            mid = result.assistant_message_id
            # The saved setup was found: no dialog, the saved participants ran.
            assert result.calls == [] and tab_b.calls == [], f"follow-up {n} asked again"
            requests = backend.requests[before:]
            assert [r.model for r in requests] == ["model-a", "model-b"], n
            for request in requests:
                assert f"Persona {request.model}" in request.messages[0]["content"]
                assert request.completed and request.reply in result.saved
            assert speakers(result.saved) == ["A", "B"], result.saved
            # Both tabs, one on each worker, were given what the database kept.
            assert result.content_events, f"tab A got no content for follow-up {n}"
            assert result.delivered == result.saved
            await ended(tab_b, mid)
            other = view_of(tab_b, mid)
            assert other.content_events and other.content == result.saved, n
            assert (await deployment.owui.get_chat(first.chat_id))["meta"][CONFIG_KEY] == config
        assert set(served) == {worker_a, worker_b}
        # Corroboration from the host's log: one pipe module per worker, not the same one.
        assert len(modules[worker_a]) == 1 and len(modules[worker_b]) == 1, modules
        assert modules[worker_a] != modules[worker_b], modules
        assert not gone(worker_a) and not gone(worker_b)
    finally:
        await tab_a.disconnect()
        await tab_b.disconnect()


async def test_two_users_on_crossed_workers_see_only_their_own(deployment, backend, pipe):
    """Two users' conversations at once, each pipe on the worker its user's tab is not on."""
    worker_a, worker_b = deployment.workers.pids
    owui = deployment.owui
    for model in ("model-a", "model-b", "model-c", "model-d"):
        backend.set_script(model, ModelScript(tokens=60, delay=0.01))
    email = f"bea-{uuid.uuid4().hex[:8]}@example.com"
    bea: User = await owui.add_user("Bea", email, "pw-1234")
    for model in (PIPE_MODEL, "model-c", "model-d"):
        await owui.grant_model_access(model, bea.id)
    admin_tab = await deployment.socket_on(worker_a)
    bea_tab = await deployment.socket_on(worker_b, bea.token)
    try:
        admin_tab.answer("execute", overlay_answer("model-a", "model-b"))
        bea_tab.answer("execute", overlay_answer("model-c", "model-d"))
        admin_run = await start_chat(
            admin_tab, None, pipe, "Admin's topic.", owui=deployment.on(worker_b)
        )
        bea_run = await start_chat(
            bea_tab, bea.token, pipe, "Bea's topic.", owui=deployment.on(worker_a)
        )
        admin_result, bea_result = await asyncio.gather(
            admin_run.wait(MESSAGE_TIMEOUT), bea_run.wait(MESSAGE_TIMEOUT)
        )
        assert speakers(admin_result.saved) == ["A", "B"]
        assert speakers(bea_result.saved) == ["C", "D"]
        assert admin_result.saved == admin_result.delivered
        assert bea_result.saved == bea_result.delivered
        assert len(admin_result.calls) == 1 and len(bea_result.calls) == 1
        # Nothing of one conversation reached the other user's tab.
        for tab, foreign in ((bea_tab, admin_result), (admin_tab, bea_result)):
            ids = {foreign.chat_id, foreign.assistant_message_id}
            assert not [e for e in tab.events if e.chat_id in ids or e.message_id in ids]
            said = [r.reply for r in backend.requests if r.reply and r.reply in foreign.saved]
            assert len(said) == 2
            seen = json.dumps([e.raw for e in tab.events])
            assert not [s for s in said if s in seen]
        with pytest.raises(OwuiHTTPError):
            await owui.get_chat(admin_result.chat_id, bea.token)
    finally:
        await admin_tab.disconnect()
        await bea_tab.disconnect()
