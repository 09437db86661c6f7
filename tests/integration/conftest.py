"""Fixtures for tests against a real Open WebUI: one scripted backend and one server per session.

Fixtures: `scripted_backend` (session), `backend` (the same, reset for each test), `owui`
(session: the server plus its admin), `admin_socket` (a connected socket.io client per test),
`pipe` (the function installed from this checkout; its model id), `valves` (sets the pipe's
admin valves for one test, then puts the old ones back).
For Ollama: `scripted_ollama` (session; tests/ollama_backend.py), `ollama` (the same, reset for
each test) and `ollama_owui` (session: a second Open WebUI with both connections, the Ollama one
set as an admin sets it, `OLLAMA_BASE_URLS`; booted only when a test asks for it).
Every test in this directory is marked `integration`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.backend import BackendThread, ModelScript
from tests.integration.owui import OpenWebUIServer, Owui, SocketClient
from tests.ollama_backend import ollama_thread

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
FUNCTION_ID = "mmc"
PIPE_MODEL = f"{FUNCTION_ID}.Conversation-pipe"
# Backend models every test can use; a test may script more (then call owui.models()).
BACKEND_MODELS = ("model-a", "model-b", "model-c", "model-d", "model-e", "manager")
# Models the scripted Ollama server lists (named as Ollama names them, with a tag).
OLLAMA_MODELS = ("llama-a:latest", "llama-b:latest", "llama-c:latest", "llama-manager:latest")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Marks every test under tests/integration as `integration`."""
    for item in items:
        if HERE in Path(item.path).parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def scripted_backend() -> Iterator[BackendThread]:
    backend = BackendThread(scripts={m: ModelScript() for m in BACKEND_MODELS})
    backend.start()
    yield backend
    backend.stop()


@pytest.fixture
def backend(scripted_backend: BackendThread) -> BackendThread:
    """The session's backend with scripts, counters and recorded requests reset."""
    scripted_backend.reset()
    return scripted_backend


@pytest.fixture(scope="session")
def owui(
    scripted_backend: BackendThread, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Owui]:
    """Boots Open WebUI against the backend, signs up the admin; stopped at session end."""
    server = OpenWebUIServer(scripted_backend.url, tmp_path_factory.mktemp("open-webui"))
    server.start()
    try:
        instance = Owui(server, scripted_backend)
        instance.signup_admin_sync()
        yield instance
    finally:
        server.stop()


@pytest.fixture(scope="session")
def scripted_ollama() -> Iterator[BackendThread]:
    server = ollama_thread(*OLLAMA_MODELS)
    yield server
    server.stop()


@pytest.fixture
def ollama(scripted_ollama: BackendThread) -> BackendThread:
    """The session's Ollama server with scripts, counters and recorded requests reset."""
    scripted_ollama.reset()
    return scripted_ollama


@pytest.fixture(scope="session")
def ollama_owui(
    scripted_backend: BackendThread,
    scripted_ollama: BackendThread,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Owui]:
    """Open WebUI with the OpenAI-style backend and an Ollama connection, admin signed up."""
    env = {"ENABLE_OLLAMA_API": "true", "OLLAMA_BASE_URLS": scripted_ollama.url}
    workdir = tmp_path_factory.mktemp("open-webui-ollama")
    server = OpenWebUIServer(scripted_backend.url, workdir, extra_env=env)
    server.start()
    try:
        instance = Owui(server, scripted_backend)
        instance.signup_admin_sync()
        yield instance
    finally:
        server.stop()


@pytest_asyncio.fixture
async def admin_socket(owui: Owui) -> AsyncIterator[SocketClient]:
    """The admin's browser tab: connected and joined, disconnected after the test."""
    if not owui.server.running:  # a test that restarted the server and failed midway
        owui.server.start()
    client = await owui.connect()
    yield client
    await client.disconnect()


@pytest_asyncio.fixture
async def pipe(owui: Owui) -> str:
    """Installs (or updates) the pipe from this checkout; returns its model id. The usage
    table is off: these tests read the transcript's end (test_ollama_live.py checks it)."""
    await owui.install_function(ROOT / "multi_model_conversation.py", FUNCTION_ID)
    await owui.set_function_valves(FUNCTION_ID, {"SHOW_USAGE": False})
    return PIPE_MODEL


@pytest_asyncio.fixture
async def valves(owui: Owui, pipe):
    """Sets the pipe's admin valves for one test and puts the old ones back afterwards."""
    path = f"/api/v1/functions/id/{FUNCTION_ID}/valves"
    before = await owui.request("GET", path)

    async def set_valves(**values) -> None:
        await owui.set_function_valves(FUNCTION_ID, values)

    yield set_valves
    await owui.set_function_valves(FUNCTION_ID, before or {}, merge=False)
