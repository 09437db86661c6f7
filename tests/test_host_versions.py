"""The gateway on the Open WebUI lines it supports, and the one line an older host shows.

Each host double below copies the signature (and, where it matters, the behaviour) of the named
release's own function, read off its `open_webui/` source; the live proof on a real server is
`scripts/test --owui VERSION` (tests marked `smoke`).
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest

import multi_model_conversation as mmc

ROOT = Path(__file__).resolve().parents[1]
FRONT_MATTER_KEY = "required_open_webui_version:"


def host_modules(monkeypatch: pytest.MonkeyPatch, **modules: types.ModuleType | None) -> None:
    """Puts host modules in sys.modules for one test; None makes an import fail (missing)."""
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name.replace("__", "."), module)


def module(**attrs) -> types.ModuleType:
    made = types.ModuleType("host_double")
    made.__dict__.update(attrs)
    return made


def env(version: str) -> types.ModuleType:
    return module(VERSION=version)


USER = SimpleNamespace(id="u1", role="user")
MODEL = {"id": "model-a"}
RECORD = SimpleNamespace(id="model-a", user_id="admin")


# -- the version check ----------------------------------------------------------------------
@pytest.mark.parametrize("version", ["0.10.0", "0.10.2", "0.11.4", "0.12.4", "1.0.0"])
def test_supported_hosts_pass_the_check(monkeypatch, version):
    # "0.10.0" sorts before "0.9.6" as a string: the check must compare numbers.
    host_modules(monkeypatch, open_webui__env=env(version))
    mmc.HostGateway.require_supported_host()


@pytest.mark.parametrize("version", ["dev", "", "main-abc123"])
def test_a_host_of_unknown_version_is_not_turned_away(monkeypatch, version):
    host_modules(monkeypatch, open_webui__env=env(version))
    mmc.HostGateway.require_supported_host()


@pytest.mark.parametrize(
    ("version", "stores"),
    [("0.10.0", False), ("0.11.4", False), ("0.12.0", True), ("0.12.4", True), ("dev", False)],
)
def test_only_a_host_known_to_store_the_returned_text_is_left_the_final_save(
    monkeypatch, version, stores
):
    """0.10 keeps what the pipe's events stored (the smoke run lost the last turn there); an
    unknown version is not trusted with it either: one write more, nothing lost."""
    host_modules(monkeypatch, open_webui__env=env(version))
    assert mmc.HostGateway.stores_returned_text() is stores


@pytest.mark.parametrize("version", ["0.9.6", "0.9.0", "0.8.12", "0.6.43"])
def test_an_older_host_gets_one_line_naming_the_version_needed(monkeypatch, version):
    host_modules(monkeypatch, open_webui__env=env(version))
    with pytest.raises(mmc.HostTooOldError) as raised:
        mmc.HostGateway.require_supported_host()
    message = str(raised.value)
    assert "\n" not in message
    assert f"needs Open WebUI {mmc.OLDEST_OPEN_WEBUI} or newer" in message
    assert f"this server runs {version}" in message


def test_front_matter_and_readme_name_the_same_oldest_version():
    source = (ROOT / "multi_model_conversation.py").read_text()
    (line,) = [x for x in source.splitlines() if x.startswith(FRONT_MATTER_KEY)]
    assert line.split(":", 1)[1].strip() == mmc.OLDEST_OPEN_WEBUI
    readme = (ROOT / "README.md").read_text()
    oldest_line = ".".join(mmc.OLDEST_OPEN_WEBUI.split(".")[:2])
    assert f"| {oldest_line} | {mmc.OLDEST_OPEN_WEBUI} |" in readme
    assert f"Open WebUI {mmc.OLDEST_OPEN_WEBUI} or later" in readme


# -- access: 0.11+ take the record read at setup, 0.10 reads it again itself --------------------
def access_check_0_12(calls: list):
    async def check_model_access(user, model, model_info=None, db=None):  # 0.11.0-0.12.4
        calls.append(model_info)
        if model["id"] == "hidden":
            raise Exception("Model not found")

    return check_model_access


def access_check_0_10(calls: list):
    async def check_model_access(user, model, db=None):  # 0.10.0-0.10.2 (and 0.9)
        calls.append(None)
        if model["id"] == "hidden":
            raise Exception("Model not found")

    return check_model_access


@pytest.mark.parametrize("make_check", [access_check_0_12, access_check_0_10])
async def test_access_is_checked_with_the_hosts_own_signature(monkeypatch, make_check):
    calls: list = []
    host_modules(
        monkeypatch, open_webui__utils__models=module(check_model_access=make_check(calls))
    )
    gateway = mmc.HostGateway(request=None)

    assert await gateway.check_access(USER, MODEL, RECORD) is True
    assert await gateway.check_access(USER, {"id": "hidden"}, RECORD) is False
    # The record is handed over where the host takes it, and only there.
    expected = RECORD if make_check is access_check_0_12 else None
    assert calls == [expected, expected]


async def test_a_fault_in_the_old_access_check_is_no_refusal(monkeypatch):
    async def check_model_access(user, model, db=None):
        raise RuntimeError("database is locked")

    host_modules(
        monkeypatch, open_webui__utils__models=module(check_model_access=check_model_access)
    )
    with pytest.raises(mmc.AccessCheckError, match="database is locked"):
        await mmc.HostGateway(request=None).check_access(USER, MODEL, RECORD)


# -- task models: the Config table (0.10 and later) ---------------------------------------------
async def test_task_models_from_the_config_table(monkeypatch):
    class Config:  # 0.10.0-0.12.4: open_webui/models/config.py
        @staticmethod
        async def get_many(*keys: str) -> dict:
            return {"task.model.external": "ext", "task.model.default": "local"}

    host_modules(monkeypatch, open_webui__models__config=module(Config=Config))
    assert await mmc.HostGateway(request=None).task_models() == ("ext", "local")


# -- an unsupported host loads and runs the function as 0.8.12 and 0.9.6 do --------------------
def load_as_old_host(function_id: str) -> object:
    """utils/plugin.py load_function_module_by_id of 0.8.12 and 0.9.6: exec in a new module."""
    content = (ROOT / "multi_model_conversation.py").read_text()
    loaded = types.ModuleType(f"function_{function_id}")
    sys.modules[loaded.__name__] = loaded
    try:
        exec(content, loaded.__dict__)  # noqa: S102 - exactly what the host does
        return loaded.Pipe()
    finally:
        del sys.modules[loaded.__name__]


async def chat_as_old_host(pipe: object, params: dict) -> list[str]:
    """functions.py stream_content of 0.8.12 and 0.9.6: an exception becomes one error frame."""
    try:
        result = await pipe.pipe(**params)
    except Exception as e:
        return [f"data: {json.dumps({'error': {'detail': str(e)}})}\n\n"]
    return [f"data: {json.dumps({'content': str(result)})}\n\n"]


def users_of_0_8_12() -> type:
    class Users:  # 0.8.12 reads its database synchronously
        @staticmethod
        def get_user_by_id(id: str):
            return SimpleNamespace(id=id, role="admin", name="Ann")

    return Users


def users_of_0_9_6() -> type:
    class Users:  # 0.9 reads it asynchronously, as 0.10 does; its Stop is what fails
        @staticmethod
        async def get_user_by_id(id: str):
            return SimpleNamespace(id=id, role="admin", name="Ann")

    return Users


@pytest.mark.parametrize(
    ("version", "users"), [("0.8.12", users_of_0_8_12), ("0.9.6", users_of_0_9_6)]
)
async def test_an_older_host_installs_the_function_and_the_chat_says_what_is_needed(
    monkeypatch, version, users
):
    host_modules(
        monkeypatch,
        open_webui__env=env(version),
        open_webui__models__users=module(Users=users()),
    )
    pipe = load_as_old_host("mmc")  # loading never touches the host: every import is lazy
    assert [p["id"] for p in pipe.pipes()] == ["Conversation-pipe"]

    body = {"model": "mmc.Conversation-pipe", "stream": True, "messages": []}
    frames = await chat_as_old_host(pipe, {"body": body, "__user__": {"id": "u1"}})

    (frame,) = frames
    detail = json.loads(frame.removeprefix("data: "))["error"]["detail"]
    assert detail == (
        f"Multi-Model Conversation needs Open WebUI {mmc.OLDEST_OPEN_WEBUI} or newer; "
        f"this server runs {version}. Ask an admin to update Open WebUI."
    )
