"""Drive a real Open WebUI 0.12.4 the way the browser does: boot it, call its REST API, listen
on its socket.io channel and send chat messages.

Everything here follows the installed host's own code (`open_webui/main.py` `chat_completion`,
`socket/main.py`, `routers/*.py`) and the 0.12.4 frontend (`Chat.svelte`, `structuredOutput.ts`),
not older releases: the server builds chat turns itself and streams replies as
`response:completion` events, so the client mirrors that.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import socketio
from socketio import packet

ADMIN_EMAIL = "admin@example.com"
ADMIN_PASSWORD = "admin-password"
ADMIN_NAME = "Admin"
BOOT_TIMEOUT = 180.0


class OwuiHTTPError(RuntimeError):
    """A REST call answered with an unexpected status."""

    def __init__(self, method: str, path: str, status: int, body: Any) -> None:
        super().__init__(f"{method} {path} -> {status}: {str(body)[:500]}")
        self.status = status
        self.body = body


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_process_group(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM to the process's whole group, SIGKILL if it lingers, then to any stragglers."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(wait)
            break
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def start_logged(
    argv: list[str],
    log_path: Path,
    name: str,
    ready: Callable[[], bool],
    timeout: float,
    **popen: Any,
) -> subprocess.Popen:
    """Starts a server in its own process group, output appended to `log_path`, and polls
    `ready()` until it answers; one that exits or is not ready in time is stopped and reported
    with the end of its log."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            **popen,
        )
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with {proc.returncode} while starting; log {log_path}:\n"
                    f"{log_tail(log_path)}"
                )
            if ready():
                return proc
            time.sleep(0.2)
        raise TimeoutError(
            f"{name} not ready in {timeout:g} s; log {log_path}:\n{log_tail(log_path)}"
        )
    except BaseException:
        stop_process_group(proc)
        raise


def log_tail(path: Path, lines: int = 60) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def open_webui_executable() -> str:
    """The venv's `open-webui` script, next to the running interpreter."""
    path = Path(sys.executable).parent / "open-webui"
    if not path.exists():
        raise FileNotFoundError(f"open-webui not found next to {sys.executable}")
    return str(path)


# ==========================================================================================
# The server process
# ==========================================================================================


class OpenWebUIServer:
    """One `open-webui serve` process on 127.0.0.1, restartable on the same port and DATA_DIR."""

    def __init__(
        self,
        backend_url: str,
        workdir: Path,
        port: int | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.backend_url = backend_url
        self.workdir = Path(workdir)
        self.data_dir = self.workdir / "data"
        self.log_path = self.workdir / "open-webui.log"
        self.port = port or free_port()
        self.extra_env = dict(extra_env or {})
        self.secret_key = uuid.uuid4().hex
        self.boot_seconds: list[float] = []  # one entry per (re)start
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        no_proxy = ",".join(filter(None, [os.environ.get("NO_PROXY", ""), "127.0.0.1,localhost"]))
        return {
            **os.environ,
            "DATA_DIR": str(self.data_dir),
            "OFFLINE_MODE": "true",
            "HF_HUB_OFFLINE": "1",
            "ENABLE_OLLAMA_API": "false",
            "OPENAI_API_BASE_URL": self.backend_url,
            "OPENAI_API_KEY": "x",
            "WEBUI_SECRET_KEY": self.secret_key,
            "ANONYMIZED_TELEMETRY": "false",
            "DO_NOT_TRACK": "true",
            "SCARF_NO_ANALYTICS": "true",
            "PYTHONUNBUFFERED": "1",
            "NO_PROXY": no_proxy,
            "no_proxy": no_proxy,
            **self.extra_env,
        }

    def start(self, timeout: float = BOOT_TIMEOUT) -> None:
        """Launches the server in its own process group and waits for /health."""
        if self.running:
            raise RuntimeError("server already running")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== start on port {self.port} =====\n".encode())
        self._proc = start_logged(
            [open_webui_executable(), "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            self.log_path,
            "Open WebUI",
            self._healthy,
            timeout,
            cwd=self.workdir,
            env=self.env(),
        )
        self.boot_seconds.append(time.monotonic() - started)

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:  # noqa: S310
                return response.status == 200 and bool(json.loads(response.read()).get("status"))
        except (OSError, urllib.error.URLError, ValueError):
            return False

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM to the whole process group, SIGKILL if it lingers."""
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_process_group(proc, timeout)

    def restart(self, timeout: float = BOOT_TIMEOUT) -> None:
        """Stops and starts again on the same DATA_DIR, port and secret key (tokens stay valid)."""
        self.stop()
        self.start(timeout)

    def log_tail(self, lines: int = 60) -> str:
        return log_tail(self.log_path, lines)


# ==========================================================================================
# REST API
# ==========================================================================================


@dataclass
class User:
    id: str
    name: str
    email: str
    role: str
    token: str


def parse_frontmatter(source: str) -> dict[str, str]:
    """The `key: value` header of a function/tool file's leading docstring."""
    text = source.lstrip()
    if not text.startswith('"""'):
        return {}
    body = text[3 : text.find('"""', 3)]
    result: dict[str, str] = {}
    key = None
    for line in body.splitlines():
        if line[:1].isspace() and key:
            result[key] = f"{result[key]} {line.strip()}".strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            key = key.strip()
            result[key] = value.strip()
    return result


class Owui:
    """A running server plus its admin account. Methods open a fresh HTTP session per call,
    so one instance can serve tests that each run on their own event loop."""

    def __init__(self, server: OpenWebUIServer, backend: Any = None) -> None:
        self.server = server
        self.backend = backend
        self.admin: User | None = None

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def admin_token(self) -> str:
        assert self.admin is not None, "admin not signed up"
        return self.admin.token

    def restart(self, timeout: float = BOOT_TIMEOUT) -> None:
        """Restarts the server (blocking). From async code: `await asyncio.to_thread(...)`."""
        self.server.restart(timeout)

    # --- raw calls -----------------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        token: str | None = None,
        json_body: Any = None,
        expect: tuple[int, ...] = (200,),
        timeout: float = 60.0,
    ) -> Any:
        """One REST call as `token` (None: the admin, "": anonymous); returns the JSON body."""
        if token is None and self.admin is not None:
            token = self.admin.token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http:
            async with http.request(
                method, self.url + path, json=json_body, headers=headers
            ) as response:
                text = await response.text()
                try:
                    body = json.loads(text) if text else None
                except json.JSONDecodeError:
                    body = text
                if response.status not in expect:
                    raise OwuiHTTPError(method, path, response.status, body)
                return body

    def signup_admin_sync(self) -> User:
        """First sign-up becomes the admin (sync: used while booting the session fixture)."""
        form = {"name": ADMIN_NAME, "email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
        request = urllib.request.Request(  # noqa: S310
            f"{self.url}/api/v1/auths/signup",
            data=json.dumps(form).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            body = json.loads(response.read())
        if body.get("role") != "admin":
            raise RuntimeError(f"first sign-up did not become admin: {body}")
        self.admin = User(body["id"], body["name"], body["email"], body["role"], body["token"])
        return self.admin

    # --- users ---------------------------------------------------------------------------

    async def signin(self, email: str, password: str) -> User:
        body = await self.request(
            "POST",
            "/api/v1/auths/signin",
            token="",
            json_body={"email": email, "password": password},
        )
        return User(body["id"], body["name"], body["email"], body["role"], body["token"])

    async def add_user(self, name: str, email: str, password: str, role: str = "user") -> User:
        """Admin adds an account (POST /api/v1/auths/add), then it signs in for its own token."""
        await self.request(
            "POST",
            "/api/v1/auths/add",
            json_body={"name": name, "email": email, "password": password, "role": role},
        )
        return await self.signin(email, password)

    # --- models --------------------------------------------------------------------------

    async def models(self, token: str | None = None, refresh: bool = True) -> dict[str, dict]:
        """GET /api/models as that user (refreshing the server's model cache); id -> model."""
        path = "/api/models?refresh=true" if refresh else "/api/models"
        body = await self.request("GET", path, token=token)
        return {m["id"]: m for m in body["data"]}

    async def get_model_entry(self, model_id: str) -> dict | None:
        """The model's DB entry (GET /api/v1/models/model?id=...), None if it has none."""
        try:
            return await self.request("GET", f"/api/v1/models/model?id={quote(model_id)}")
        except OwuiHTTPError as error:
            if error.status == 404:
                return None
            raise

    async def set_model_params(
        self,
        model_id: str,
        params: dict | None = None,
        meta: dict | None = None,
        name: str | None = None,
        base_model_id: str | None = None,
    ) -> dict:
        """Creates or updates a model entry, merging `params`/`meta` into what is stored.

        e.g. params={"function_calling": "native", "system": "..."}, meta={"toolIds": [...]}.
        """
        entry = await self.get_model_entry(model_id)
        form = {
            "id": model_id,
            "name": name or (entry or {}).get("name") or model_id,
            "base_model_id": base_model_id or (entry or {}).get("base_model_id"),
            "params": {**((entry or {}).get("params") or {}), **(params or {})},
            "meta": {**((entry or {}).get("meta") or {}), **(meta or {})},
        }
        path = "/api/v1/models/model/update" if entry else "/api/v1/models/create"
        result = await self.request("POST", path, json_body=form)
        await self.models()
        return result

    async def grant_model_access(
        self, model_id: str, user_id: str, permission: str = "read"
    ) -> dict:
        """Adds a user grant to a model (creating its minimal entry if needed), keeping others."""
        entry = await self.get_model_entry(model_id)
        grants = [
            {k: g[k] for k in ("principal_type", "principal_id", "permission")}
            for g in (entry or {}).get("access_grants") or []
        ]
        grants.append({"principal_type": "user", "principal_id": user_id, "permission": permission})
        result = await self.request(
            "POST",
            "/api/v1/models/model/access/update",
            json_body={"id": model_id, "name": (entry or {}).get("name"), "access_grants": grants},
        )
        await self.models()
        return result

    # --- functions and tools ------------------------------------------------------------

    async def install_function(
        self, path: str | Path, function_id: str, name: str | None = None
    ) -> dict:
        """Creates (or updates) a function from a file, makes sure it is active, refreshes models.

        The name comes from the file's frontmatter `title:` unless given.
        """
        content = Path(path).read_text()
        front = parse_frontmatter(content)
        form = {
            "id": function_id,
            "name": name or front.get("title") or function_id,
            "meta": {"description": front.get("description", "")},
            "content": content,
        }
        try:
            await self.request("GET", f"/api/v1/functions/id/{function_id}")
            exists = True
        except OwuiHTTPError as error:
            if error.status not in (401, 404):  # 0.12.4 answers a missing id with 401
                raise
            exists = False
        if exists:
            function = await self.request(
                "POST", f"/api/v1/functions/id/{function_id}/update", json_body=form
            )
        else:
            function = await self.request("POST", "/api/v1/functions/create", json_body=form)
        if not function.get("is_active"):
            function = await self.request("POST", f"/api/v1/functions/id/{function_id}/toggle")
        if not function.get("is_active"):
            raise RuntimeError(f"function {function_id} did not become active: {function}")
        await self.models()
        return function

    async def set_function_valves(self, function_id: str, valves: dict, merge: bool = True) -> dict:
        """Admin valves. The host stores exactly what it gets, so by default we merge first."""
        if merge:
            current = await self.request("GET", f"/api/v1/functions/id/{function_id}/valves")
            valves = {**(current or {}), **valves}
        return await self.request(
            "POST", f"/api/v1/functions/id/{function_id}/valves/update", json_body=valves
        )

    async def set_user_valves(
        self, function_id: str, valves: dict, token: str | None = None, merge: bool = True
    ) -> dict:
        """The calling user's valves for a function (needs the function active)."""
        base = f"/api/v1/functions/id/{function_id}/valves/user"
        if merge:
            current = await self.request("GET", base, token=token)
            valves = {**(current or {}), **valves}
        return await self.request("POST", f"{base}/update", token=token, json_body=valves)

    async def create_tool(self, tool_id: str, python_source: str, name: str | None = None) -> dict:
        """Creates (or updates) a workspace tool from Python source."""
        front = parse_frontmatter(python_source)
        form = {
            "id": tool_id,
            "name": name or front.get("title") or tool_id,
            "meta": {"description": front.get("description", tool_id)},
            "content": python_source,
        }
        try:
            await self.request("GET", f"/api/v1/tools/id/{tool_id}")
            exists = True
        except OwuiHTTPError as error:
            if error.status not in (401, 404):
                raise
            exists = False
        path = f"/api/v1/tools/id/{tool_id}/update" if exists else "/api/v1/tools/create"
        return await self.request("POST", path, json_body=form)

    # --- chats ---------------------------------------------------------------------------

    async def get_chat(self, chat_id: str, token: str | None = None) -> dict:
        """GET /api/v1/chats/{id} (the row; the chat JSON is under "chat")."""
        return await self.request("GET", f"/api/v1/chats/{chat_id}", token=token)

    async def browser_save(self, chat_id: str, token: str | None = None) -> dict:
        """Re-saves the chat JSON like the browser's saveChatHandler (models, history, messages)."""
        chat = (await self.get_chat(chat_id, token))["chat"]
        history = chat.get("history") or {"messages": {}, "currentId": None}
        patch = {
            "models": chat.get("models", []),
            "history": history,
            "messages": message_chain(history, history.get("currentId")),
            "files": chat.get("files", []),
        }
        return await self.request(
            "POST", f"/api/v1/chats/{chat_id}", token=token, json_body={"chat": patch}
        )

    async def stop(self, chat_id: str, token: str | None = None) -> Any:
        """Stops a chat's running tasks, as the owner's Stop button does."""
        return await self.request("POST", f"/api/tasks/chat/{chat_id}/stop", token=token)

    async def stop_task(self, task_id: str) -> Any:
        """Admin-only stop of one task id."""
        return await self.request("POST", f"/api/tasks/stop/{task_id}")

    async def connect(self, token: str | None = None) -> SocketClient:
        """A connected, joined socket.io client for that user (default: the admin)."""
        client = SocketClient(self.url, token or self.admin_token, owui=self)
        await client.connect()
        return client


def message_chain(history: dict, message_id: str | None) -> list[dict]:
    """The messages from the root to `message_id` (the UI's createMessagesList)."""
    messages = history.get("messages") or {}
    chain: list[dict] = []
    while message_id and message_id in messages:
        chain.append(messages[message_id])
        message_id = messages[message_id].get("parentId")
    return chain[::-1]


# ==========================================================================================
# socket.io client
# ==========================================================================================

NO_ANSWER = object()  # answer value meaning "never acknowledge" (a tab that ignores the call)
# A value, or callable(event_data) returning the value (or an awaitable of it).
Answer = Any


@dataclass
class SocketEvent:
    """One `events` message from the server, stamped on arrival (time.monotonic())."""

    t: float
    chat_id: str | None
    message_id: str | None
    type: str | None
    data: Any  # the inner event data (event["data"]["data"])
    raw: dict
    shared: bool = False
    is_call: bool = False  # the server used sio.call: it waits for our answer
    answer: Any = None  # what we answered to a call (NO_ANSWER if we did not)


class _RecordingClient(socketio.AsyncClient):
    """AsyncClient that tells plain emits from calls (which carry an ack id) on `events`."""

    def __init__(self, owner: SocketClient, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._owner = owner

    async def _handle_event(self, namespace, id, data):  # noqa: A002 (python-socketio's name)
        if data and data[0] == "events" and id is not None:
            payload = data[1] if len(data) > 1 else {}
            task = asyncio.create_task(self._answer(namespace or "/", id, payload))
            self._owner._tasks.add(task)
            task.add_done_callback(self._owner._tasks.discard)
            return
        await super()._handle_event(namespace, id, data)

    async def _answer(self, namespace: str, ack_id: int, payload: dict) -> None:
        answer = await self._owner._on_call(payload)
        if answer is NO_ANSWER:
            return
        await self._send_packet(
            self.packet_class(packet.ACK, namespace=namespace, id=ack_id, data=[answer])
        )


HEARTBEAT_INTERVAL = 30.0  # the 0.12.4 frontend's default websocket_heartbeat_interval


class SocketClient:
    """The browser tab's socket: connects with the JWT, joins, records every event with a
    timestamp and answers `__event_call__` requests with configured answers."""

    def __init__(
        self,
        base_url: str,
        token: str,
        owui: Owui | None = None,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
    ) -> None:
        self.base_url = base_url
        self.token = token
        self.owui = owui  # lets run_chat reach the REST API without another argument
        self.heartbeat_interval = heartbeat_interval
        self.user_id: str | None = None
        self.events: list[SocketEvent] = []
        self.calls: list[SocketEvent] = []
        self.answers: dict[str, Answer] = {}
        self.default_answer: Answer = NO_ANSWER
        self._sio = _RecordingClient(self, reconnection=False, handle_sigint=False)
        self._sio.on("events", self._on_event)
        self._changed: asyncio.Condition | None = None
        self._tasks: set[asyncio.Task] = set()

    @property
    def sid(self) -> str:
        """The socket.io session id: what the UI sends as `session_id`."""
        sid = self._sio.get_sid("/")
        if not sid:
            raise RuntimeError("socket not connected")
        return sid

    @property
    def connected(self) -> bool:
        return self._sio.connected

    async def connect(self, timeout: float = 15.0) -> None:
        self._changed = asyncio.Condition()
        await self._sio.connect(
            self.base_url,
            socketio_path="/ws/socket.io",
            transports=["websocket"],
            auth={"token": self.token},
            wait_timeout=timeout,
        )
        joined = await self._sio.call("user-join", {"auth": {"token": self.token}}, timeout=timeout)
        if not joined or "id" not in joined:
            raise RuntimeError(f"user-join was refused: {joined!r}")
        self.user_id = joined["id"]
        task = asyncio.create_task(self._heartbeats())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _heartbeats(self) -> None:
        """`heartbeat` every interval while connected, as the browser does: Open WebUI 0.12.4
        reaps a session unheard for 120 s, and a long message must not lose its tab."""
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            if self._sio.connected:
                await self._sio.emit("heartbeat", {})

    async def join_chat(self, chat_id: str) -> bool:
        """Opens a chat like the browser (room `chat:<id>`: presence and shared events)."""
        return bool(
            await self._sio.call("events:chat", {"chat_id": chat_id, "data": {"type": "join"}})
        )

    async def disconnect(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._sio.connected:
            await self._sio.disconnect()
        # After the server went away the engine.io session can still hold its HTTP client.
        http = getattr(self._sio.eio, "http", None)
        if http is not None and not http.closed:
            await http.close()

    async def __aenter__(self) -> SocketClient:
        if not self.connected:
            await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.disconnect()

    def answer(self, event_type: str, answer: Answer) -> None:
        """Answers calls of that type (e.g. "execute", "input", "confirmation") with a value or
        with callable(event_data) -> value (may be async); NO_ANSWER to ignore them."""
        self.answers[event_type] = answer

    def events_for(self, message_id: str) -> list[SocketEvent]:
        return [e for e in self.events if e.message_id == message_id]

    async def wait_for(
        self, predicate: Callable[[SocketEvent], bool], timeout: float = 30.0, start: int = 0
    ) -> SocketEvent:
        """The first event from index `start` on that matches, waiting up to `timeout` s."""
        assert self._changed is not None, "not connected"
        seen = start
        async with asyncio.timeout(timeout):
            while True:
                for event in self.events[seen:]:
                    if predicate(event):
                        return event
                seen = count = len(self.events)
                async with self._changed:
                    await self._changed.wait_for(lambda count=count: len(self.events) > count)

    async def _record(self, event: SocketEvent) -> None:
        self.events.append(event)
        if self._changed is not None:
            async with self._changed:
                self._changed.notify_all()

    async def _on_event(self, payload: dict) -> None:
        await self._record(_make_event(payload))

    async def _on_call(self, payload: dict) -> Any:
        event = _make_event(payload)
        event.is_call = True
        answer = self.answers.get(event.type or "", self.default_answer)
        if callable(answer):
            answer = answer(event.data)
            if inspect.isawaitable(answer):
                answer = await answer
        event.answer = answer
        self.calls.append(event)
        await self._record(event)
        return answer


def _make_event(payload: Any) -> SocketEvent:
    payload = payload if isinstance(payload, dict) else {"data": payload}
    inner = payload.get("data") if isinstance(payload.get("data"), dict) else {}
    return SocketEvent(
        t=time.monotonic(),
        chat_id=payload.get("chat_id"),
        message_id=payload.get("message_id"),
        type=inner.get("type"),
        data=inner.get("data"),
        raw=payload,
        shared=bool(payload.get("shared")),
    )


# ==========================================================================================
# What the browser shows: a port of Chat.svelte's event handling for one message
# ==========================================================================================


def get_output_text(output: Any) -> str:
    """Text of the `message` output items (utils/misc.py and structuredOutput.ts agree)."""
    if not isinstance(output, list):
        return ""
    texts = []
    for item in output:
        if not isinstance(item, dict) or item.get("type") != "message":
            continue
        parts = item.get("content") or []
        if not isinstance(parts, list):
            continue
        text = "".join(
            str(p.get("text")) for p in parts if isinstance(p, dict) and p.get("text") is not None
        )
        if text.strip():
            texts.append(text)
    return "\n".join(texts)


def _append(current: Any, delta: Any) -> Any:
    if isinstance(current, str) or isinstance(delta, str):
        return f"{current or ''}{delta or ''}"
    if isinstance(current, dict) and isinstance(delta, dict):
        return {**current, **delta}
    return delta if delta is not None else (current if current is not None else "")


def _ensure(items: list, index: int, fallback: dict) -> dict:
    while len(items) <= index:
        items.append(dict(fallback))
    items[index] = dict(items[index])
    return items[index]


def apply_response_event(output: list, event: dict) -> list:
    """structuredOutput.ts `applyResponseStreamEvent`: folds one Responses-API stream event."""
    kind = event.get("type") or ""
    if not kind.startswith("response."):
        return output
    output = list(output)

    def find(item: dict) -> int:
        for i, existing in enumerate(output):
            if item.get("id") and existing.get("id") == item["id"]:
                return i
            if (
                item.get("call_id")
                and existing.get("type") == item.get("type")
                and existing.get("call_id") == item["call_id"]
            ):
                return i
        return -1

    if kind == "response.completed":
        for item in (event.get("response") or {}).get("output") or []:
            index = find(item)
            if index >= 0:
                output[index] = item
            else:
                output.append(item)
        return output
    item_index = -1
    if event.get("item_id"):
        item_index = next(
            (
                i
                for i, it in enumerate(output)
                if event["item_id"] in (it.get("id"), it.get("call_id"))
            ),
            -1,
        )
    default_index = event.get("output_index")
    if default_index is None:
        default_index = max(len(output) - 1, 0)
    index = item_index if item_index >= 0 else default_index
    if kind in ("response.output_item.added", "response.output_item.done"):
        if not event.get("item"):
            return output
        item = dict(event["item"])
        existing = find(item)
        if existing >= 0:
            output[existing] = item
        elif index < len(output):
            if kind.endswith("added"):
                output.insert(index, item)
            else:
                output[index] = item
        else:
            output.append(item)
        return output
    updates = (
        kind in ("response.content_part.added", "response.reasoning_summary_part.added")
        or kind.endswith(".delta")
        or kind.endswith(".done")
    )
    if not updates:
        return output
    item_type = (
        "reasoning"
        if "reasoning" in kind
        else "function_call"
        if "function_call" in kind
        else "message"
    )
    filler = {"type": "message", "status": "in_progress", "role": "assistant", "content": []}
    while len(output) < index:
        output.append(dict(filler))
    if len(output) == index:
        output.append(
            {
                "id": event.get("item_id"),
                "type": item_type,
                "status": "in_progress",
                "role": "assistant",
                "content": [],
            }
        )
    item = output[index] = dict(output[index])
    text_part = {"type": "output_text", "text": ""}
    if kind == "response.content_part.added":
        if item.get("type") != "reasoning" and event.get("part"):
            item["content"] = list(item.get("content") or [])
            ci = event.get("content_index", len(item["content"]))
            _ensure(item["content"], ci, text_part)
            item["content"][ci] = dict(event["part"])
        return output
    if kind == "response.reasoning_summary_part.added":
        if event.get("part"):
            item["summary"] = list(item.get("summary") or [])
            si = event.get("summary_index", len(item["summary"]))
            _ensure(item["summary"], si, {"type": "summary_text", "text": ""})
            item["summary"][si] = dict(event["part"])
        return output
    name = kind.split(".")[1]
    if kind.endswith(".delta"):
        if name == "function_call_arguments":
            item["arguments"] = _append(item.get("arguments", ""), event.get("delta"))
        elif name == "reasoning_summary_text":
            item["summary"] = list(item.get("summary") or [])
            part = _ensure(item["summary"], event.get("summary_index", 0), {"type": "summary_text"})
            part["text"] = _append(part.get("text", ""), event.get("delta"))
        elif item.get("type") == "open_webui:code_interpreter":
            item["code"] = f"{item.get('code', '')}{event.get('delta', '')}"
        else:
            key = "text" if name in ("output_text", "reasoning_text") else name
            item["content"] = list(item.get("content") or [])
            part = _ensure(item["content"], event.get("content_index", 0), text_part)
            part[key] = _append(part.get(key), event.get("delta"))
        return output
    if name == "content_part" and event.get("part"):
        item["content"] = list(item.get("content") or [])
        ci = event.get("content_index", max(len(item["content"]) - 1, 0))
        _ensure(item["content"], ci, text_part)
        item["content"][ci] = dict(event["part"])
    elif name == "function_call_arguments" and "arguments" in event:
        item["arguments"] = event["arguments"]
    elif name in ("output_text", "text", "reasoning_text") and "text" in event:
        item["content"] = list(item.get("content") or [])
        _ensure(item["content"], event.get("content_index", 0), text_part)["text"] = event["text"]
    return output


@dataclass
class ContentEvent:
    """An event that set what the message shows, and the text it showed afterwards."""

    t: float
    type: str
    content: str


@dataclass
class MessageView:
    """The assistant message as the open tab holds it, fed event by event."""

    content: str = ""
    output: list | None = None
    error: Any = None
    done: bool = False
    cancelled: bool = False
    statuses: list = field(default_factory=list)
    content_events: list[ContentEvent] = field(default_factory=list)

    def apply(self, event: SocketEvent) -> None:
        kind, data = event.type, event.data if isinstance(event.data, dict) else {}
        before = self.content
        touched = False
        if kind == "chat:completion":
            if data.get("error"):
                self.error = data["error"]
            output = data.get("output")
            choices = data.get("choices")
            if output is not None:
                self.output, self.content, touched = output, get_output_text(output), True
            elif data.get("content"):
                self.content, touched = data["content"], True
            elif choices:
                first = choices[0] or {}
                text = (first.get("message") or {}).get("content") or (
                    first.get("delta") or {}
                ).get("content")
                if not (self.content == "" and text == "\n"):  # the page drops a leading "\n"
                    self.content += text or ""
                    touched = bool(text)
            if data.get("done"):
                self.done = True
        elif kind == "response:completion":
            self.output = apply_response_event(self.output or [], data)
            sub = data.get("type") or ""
            if sub == "response.output_text.delta":
                delta = data.get("delta") or ""
                if not (self.content == "" and delta == "\n"):  # as the page does
                    self.content += delta
                    touched = True
            elif sub == "response.completed" or sub.endswith(".done"):
                self.content = get_output_text(self.output) or self.content
                touched = True
        elif kind in ("message", "chat:message:delta"):
            self.content += data.get("content") or ""
            touched = True
        elif kind in ("replace", "chat:message"):
            self.content = data.get("content") or ""
            touched = True
        elif kind == "chat:message:error":
            self.error = data.get("error")
        elif kind == "chat:tasks:cancel":
            self.cancelled = self.done = True
            if data.get("output"):
                self.output = data["output"]
        elif kind == "status":
            self.statuses.append(data)
        if touched and (kind != "response:completion" or self.content != before):
            self.content_events.append(ContentEvent(event.t, kind or "", self.content))


# ==========================================================================================
# Sending a message like Chat.svelte
# ==========================================================================================


@dataclass
class ChatResult:
    """What one sent message produced: events, what the tab showed, what the DB kept."""

    chat_id: str
    user_message_id: str
    assistant_message_id: str
    model: str
    task_ids: list[str]
    sent_at: float
    events: list[SocketEvent]  # every event about the assistant message
    view: MessageView
    saved_message: dict  # the message from GET /api/v1/chats/{id}
    chat: dict  # that chat's JSON
    finished_at: float | None  # chat:active false for this message

    @property
    def content_events(self) -> list[ContentEvent]:
        return self.view.content_events

    @property
    def delivered(self) -> str:
        """The last content the browser was given."""
        return self.view.content

    @property
    def saved(self) -> str:
        """The content stored in the DB."""
        return self.saved_message.get("content") or ""

    @property
    def done_event(self) -> SocketEvent | None:
        return next(
            (e for e in self.events if e.type == "chat:completion" and (e.data or {}).get("done")),
            None,
        )

    @property
    def calls(self) -> list[SocketEvent]:
        return [e for e in self.events if e.is_call]


@dataclass
class ChatRun:
    """A message that was sent; `await run.wait()` for its ChatResult."""

    owui: Owui
    client: SocketClient
    token: str
    chat_id: str
    user_message_id: str
    assistant_message_id: str
    model: str
    task_ids: list[str]
    sent_at: float
    first_event_index: int

    async def wait(self, timeout: float = 60.0) -> ChatResult:
        """Waits for the end (chat:active false for this message), then reads the DB."""
        mid = self.assistant_message_id

        def ended(e: SocketEvent) -> bool:
            return (
                e.message_id == mid and e.type == "chat:active" and not (e.data or {}).get("active")
            )

        try:
            end = await self.client.wait_for(ended, timeout, start=self.first_event_index)
        except TimeoutError as exc:
            seen = [
                (e.type, (e.data or {}).get("type") if isinstance(e.data, dict) else None)
                for e in self.client.events[self.first_event_index :]
                if e.message_id == mid
            ][-15:]
            raise TimeoutError(
                f"no end of message {mid} in {timeout}s; last events {seen}; server log "
                f"{self.owui.server.log_path}:\n{self.owui.server.log_tail(30)}"
            ) from exc
        events = [e for e in self.client.events[self.first_event_index :] if e.message_id == mid]
        view = MessageView()
        for event in events:
            view.apply(event)
        row = await self.owui.get_chat(self.chat_id, self.token)
        chat = row["chat"]
        saved = (chat.get("history") or {}).get("messages", {}).get(mid) or {}
        return ChatResult(
            chat_id=self.chat_id,
            user_message_id=self.user_message_id,
            assistant_message_id=mid,
            model=self.model,
            task_ids=self.task_ids,
            sent_at=self.sent_at,
            events=events,
            view=view,
            saved_message=saved,
            chat=chat,
            finished_at=end.t,
        )


def _now() -> int:
    return int(time.time())


def _build_history(
    previous: list[dict], user_id: str | None, model: str
) -> tuple[dict[str, dict], str | None]:
    """A history.messages tree (one branch) from earlier {role, content} turns."""
    messages: dict[str, dict] = {}
    parent: str | None = None
    for turn in previous:
        mid = turn.get("id") or str(uuid.uuid4())
        message = {
            "id": mid,
            "parentId": parent,
            "childrenIds": [],
            "role": turn["role"],
            "content": turn.get("content", ""),
            "timestamp": _now(),
        }
        if turn["role"] == "assistant":
            message.update(done=True, model=turn.get("model", model), modelIdx=0)
        else:
            message.update(user_id=user_id, models=[model])
        message.update({k: v for k, v in turn.items() if k not in message})
        if parent:
            messages[parent]["childrenIds"].append(mid)
        messages[mid] = message
        parent = mid
    return messages, parent


async def start_chat(
    client: SocketClient,
    token: str | None,
    model: str,
    user_text: str,
    chat_id: str | None = None,
    previous_messages: list[dict] | None = None,
    owui: Owui | None = None,
    system: str | None = None,
    tool_ids: list[str] | None = None,
    background_tasks: dict | None = None,
    extra: dict | None = None,
    on_created: Callable[[str], Awaitable[None]] | None = None,
) -> ChatRun:
    """Sends one user message like the 0.12.4 UI and returns at once (the work runs on).

    New chat: created first with POST /api/v1/chats/new holding `previous_messages`, the user
    message and an empty assistant placeholder (as the UI's initChatHandler does). Existing
    chat: the new user message hangs under history.currentId and the server inserts the turn
    itself (insert_chat_turn), as the 0.12.4 UI relies on. `on_created(chat_id)` runs once the
    chat exists, before the message is sent (a browser tab can open it then).
    """
    owui = owui or client.owui
    if owui is None:
        raise ValueError("pass owui= or use a client from Owui.connect()")
    token = token or client.token
    user_id = client.user_id
    user_message_id, assistant_id = str(uuid.uuid4()), str(uuid.uuid4())
    user_message = {
        "id": user_message_id,
        "parentId": None,
        "childrenIds": [],
        "role": "user",
        "content": user_text,
        "timestamp": _now(),
        "models": [model],
        "user_id": user_id,
    }
    if chat_id is None:
        history_messages, parent = _build_history(previous_messages or [], user_id, model)
        user_message["parentId"] = parent
        if parent:
            history_messages[parent]["childrenIds"].append(user_message_id)
        user_message["childrenIds"] = [assistant_id]
        history_messages[user_message_id] = user_message
        history_messages[assistant_id] = {
            "id": assistant_id,
            "parentId": user_message_id,
            "childrenIds": [],
            "role": "assistant",
            "content": "",
            "done": False,
            "model": model,
            "modelName": model,
            "modelIdx": 0,
            "user_id": user_id,
            "timestamp": _now(),
        }
        history = {"messages": history_messages, "currentId": assistant_id}
        chat = {
            "id": "",
            "title": "New Chat",
            "models": [model],
            "params": {"system": system} if system else {},
            "history": history,
            "messages": message_chain(history, assistant_id),
            "tags": [],
            "timestamp": int(time.time() * 1000),
        }
        created = await owui.request("POST", "/api/v1/chats/new", token, {"chat": chat})
        chat_id = created["id"]
    else:
        if previous_messages:
            raise ValueError("previous_messages only applies to a new chat")
        stored = (await owui.get_chat(chat_id, token))["chat"]
        user_message["parentId"] = (stored.get("history") or {}).get("currentId")
    user_message["childrenIds"] = [assistant_id]  # as the UI sends it
    await client.join_chat(chat_id)
    if on_created is not None:
        await on_created(chat_id)
    body: dict[str, Any] = {
        "stream": True,
        "model": model,
        **({"messages": [{"role": "system", "content": system}]} if system else {}),
        "params": {},
        "tool_ids": tool_ids or [],
        "tool_servers": [],
        "features": {
            "voice": False,
            "image_generation": False,
            "code_interpreter": False,
            "web_search": False,
        },
        "variables": {},
        "session_id": client.sid,
        "chat_id": chat_id,
        "id": assistant_id,
        "message_ids": [{"model_id": model, "message_id": assistant_id, "modelIdx": 0}],
        "parent_id": user_message["parentId"],
        "user_message": user_message,
        **({"background_tasks": background_tasks} if background_tasks is not None else {}),
        **(extra or {}),
    }
    first_event_index = len(client.events)
    sent_at = time.monotonic()
    response = await owui.request("POST", "/api/chat/completions", token, body)
    if not isinstance(response, dict) or not response.get("status"):
        raise RuntimeError(f"chat completion refused: {response}")
    return ChatRun(
        owui=owui,
        client=client,
        token=token,
        chat_id=chat_id,
        user_message_id=user_message_id,
        assistant_message_id=assistant_id,
        model=model,
        task_ids=list(response.get("task_ids") or []),
        sent_at=sent_at,
        first_event_index=first_event_index,
    )


async def run_chat(
    client: SocketClient,
    token: str | None,
    model: str,
    user_text: str,
    chat_id: str | None = None,
    previous_messages: list[dict] | None = None,
    timeout: float = 60.0,
    **kwargs: Any,
) -> ChatResult:
    """Sends one message (see start_chat) and waits for its result."""
    run = await start_chat(client, token, model, user_text, chat_id, previous_messages, **kwargs)
    return await run.wait(timeout)
