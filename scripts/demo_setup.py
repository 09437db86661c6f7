"""Readies a running Open WebUI for the demo through its REST API (called by scripts/demo).

Waits for /health, signs the demo admin in (or signs it up on a fresh data dir), points the
OpenAI connection at the demo's endpoint and the Ollama connection at an Ollama server (or
switches it off), installs and enables the pipe from
multi_model_conversation.py (only when its code changed), and gives the admin user valves with a
ready three-participant setup so "Use defaults" works at once. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.integration.owui import parse_frontmatter  # noqa: E402  (one parser for both)

ROOT = Path(__file__).resolve().parents[1]

# Who talks in the demo: alias and persona for each of the three participants.
PERSONAS = [
    (
        "Ada",
        "You are Ada, an optimistic inventor. Argue for bold ideas. "
        "Answer in two or three sentences.",
    ),
    (
        "Grace",
        "You are Grace, a pragmatic engineer. Ask what an idea costs and how to test it. "
        "Answer in two or three sentences.",
    ),
    (
        "Linus",
        "You are Linus, a blunt reviewer. Name the weakest argument so far and say why. "
        "Answer in two or three sentences.",
    ),
]
DEMO_ROUNDS = 2


class ApiError(RuntimeError):
    def __init__(self, method: str, path: str, status: int, body: Any) -> None:
        super().__init__(f"{method} {path} -> {status}: {str(body)[:300]}")
        self.status = status


class Api:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = ""

    def call(self, method: str, path: str, body: Any = None, timeout: float = 60) -> Any:
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(  # noqa: S310 (our own local server)
            self.base_url + path, data=data, headers=headers, method=method
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
                text = response.read().decode()
        except urllib.error.HTTPError as error:
            text = error.read().decode(errors="replace")
            try:
                detail = json.loads(text)
            except json.JSONDecodeError:
                detail = text
            raise ApiError(method, path, error.code, detail) from None
        return json.loads(text) if text else None


def wait_healthy(api: Api, server_pid: int | None, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server_pid is not None and not _alive(server_pid):
            raise SystemExit("Open WebUI exited while starting; see its log.")
        try:
            if (api.call("GET", "/health", timeout=3) or {}).get("status"):
                return
        except (OSError, ApiError, ValueError):
            pass
        time.sleep(0.5)
    raise SystemExit(f"Open WebUI did not answer /health within {timeout:.0f} s; see its log.")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sign_in_or_up(api: Api, name: str, email: str, password: str) -> str:
    """Signs in; on a fresh data dir signs up instead (the first account is the admin)."""
    form = {"email": email, "password": password}
    try:
        user = api.call("POST", "/api/v1/auths/signin", form)
        action = "signed in as the existing admin"
    except ApiError as error:
        if error.status not in (400, 401, 403):
            raise
        try:
            user = api.call("POST", "/api/v1/auths/signup", {**form, "name": name})
        except ApiError as signup_error:
            raise SystemExit(
                f"Cannot sign in as {email} and cannot sign up ({signup_error}). Another "
                "admin owns .demo-data: sign in with that account, or delete .demo-data."
            ) from None
        action = "created the admin"
    if user.get("role") != "admin":
        raise SystemExit(f"{email} is not an admin of this Open WebUI (role {user.get('role')}).")
    api.token = user["token"]
    return action


def point_connection(api: Api, url: str, key: str) -> str:
    """Open WebUI stores its first OpenAI connection in its database: keep it on our endpoint."""
    config = api.call("GET", "/openai/config")
    urls = list(config.get("OPENAI_API_BASE_URLS") or [])
    keys = list(config.get("OPENAI_API_KEYS") or [])
    if config.get("ENABLE_OPENAI_API") and urls[:1] == [url] and keys[:1] == [key]:
        return "unchanged"
    keys += [""] * (len(urls) - len(keys))
    urls, keys = [url, *urls[1:]], [key, *keys[1:]]
    api.call(
        "POST",
        "/openai/config/update",
        {
            "ENABLE_OPENAI_API": True,
            "OPENAI_API_BASE_URLS": urls,
            "OPENAI_API_KEYS": keys,
            "OPENAI_API_CONFIGS": config.get("OPENAI_API_CONFIGS") or {},
        },
    )
    return "updated"


def point_ollama(api: Api, url: str) -> str:
    """The Ollama connection (stored in the database like the OpenAI one): on and at `url`, or
    off when no Ollama server is given, so a demo started without one lists no stale models."""
    config = api.call("GET", "/ollama/config")
    urls = list(config.get("OLLAMA_BASE_URLS") or [])
    enabled = bool(config.get("ENABLE_OLLAMA_API"))
    if (enabled, urls[:1]) == (bool(url), [url] if url else urls[:1]):
        return "unchanged"
    form = {
        "ENABLE_OLLAMA_API": bool(url),
        "OLLAMA_BASE_URLS": [url, *urls[1:]] if url else urls,
        "OLLAMA_API_CONFIGS": config.get("OLLAMA_API_CONFIGS") or {},
    }
    api.call("POST", "/ollama/config/update", form)
    return "updated" if url else "switched off"


def install_function(api: Api, path: Path, function_id: str) -> str:
    """Creates or updates the function only when its code differs; switches it on."""
    content = path.read_text()
    front = parse_frontmatter(content)
    form = {
        "id": function_id,
        "name": front.get("title") or function_id,
        "meta": {"description": front.get("description", "")},
        "content": content,
    }
    try:
        current = api.call("GET", f"/api/v1/functions/id/{function_id}")
    except ApiError as error:
        if error.status not in (401, 404):  # 0.12.4 answers an unknown id with 401
            raise
        current = None
    if current is None:
        function = api.call("POST", "/api/v1/functions/create", form)
        action = "installed"
    elif current.get("content") != content:
        function = api.call("POST", f"/api/v1/functions/id/{function_id}/update", form)
        action = "updated"
    else:
        function, action = current, "up to date"
    if not function.get("is_active"):
        function = api.call("POST", f"/api/v1/functions/id/{function_id}/toggle")
        action += ", switched on"
    if not function.get("is_active"):
        raise SystemExit(f"function {function_id} did not become active: {function}")
    return action


def list_models(api: Api, pipe_model: str, wanted: list[str], timeout: float = 30) -> list[dict]:
    """GET /api/models (refreshed) until the pipe and the wanted models are listed."""
    deadline = time.monotonic() + timeout
    while True:
        models = api.call("GET", "/api/models?refresh=true").get("data") or []
        ids = {m["id"] for m in models}
        if pipe_model in ids and set(wanted) <= ids:
            return models
        if time.monotonic() > deadline:
            missing = sorted(({pipe_model} | set(wanted)) - ids)
            raise SystemExit(f"Open WebUI does not list {missing}; it has {sorted(ids)}.")
        time.sleep(1)


def choose_models(
    models: list[dict], wanted: list[str], own_prefix: str, owner: str = ""
) -> list[str]:
    """The participants' models: those asked for, else the first three (of `owner`'s models,
    e.g. "ollama", when it has any)."""
    if wanted:
        chosen = wanted
    else:
        usable = [
            m
            for m in models
            if not m["id"].startswith(own_prefix) and not m.get("pipe") and not m.get("arena")
        ]
        owned = [m for m in usable if owner and m.get("owned_by") == owner]
        chosen = [m["id"] for m in owned or usable][:3]
    if not chosen:
        raise SystemExit("The endpoints list no models; set DEMO_MODELS=id1,id2,id3.")
    return [chosen[i % len(chosen)] for i in range(len(PERSONAS))]


def set_demo_valves(api: Api, function_id: str, models: list[str], available: set[str]) -> str:
    """Gives the admin a ready setup, unless the admin already configured working models."""
    base = f"/api/v1/functions/id/{function_id}/valves/user"
    current = api.call("GET", base) or {}
    count = int(current.get("NUM_PARTICIPANTS") or 0)
    configured = [current.get(f"Participant{i}Model") or "" for i in range(1, count + 1)]
    if configured and all(m in available for m in configured):
        return "kept (already configured)"
    valves = {**current, "NUM_PARTICIPANTS": len(PERSONAS), "ROUNDS_PER_CONVERSATION": DEMO_ROUNDS}
    for i, (model, (alias, persona)) in enumerate(zip(models, PERSONAS, strict=True), start=1):
        valves[f"Participant{i}Model"] = model
        valves[f"Participant{i}Alias"] = alias
        valves[f"Participant{i}SystemMessage"] = persona
    api.call("POST", f"{base}/update", valves)
    return "set"


def say(text: str) -> None:
    print(f"   {text}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="Open WebUI base URL")
    parser.add_argument("--server-pid", type=int, help="stop waiting if this process exits")
    parser.add_argument("--boot-timeout", type=float, default=240)
    parser.add_argument("--email", default="admin@example.com")
    parser.add_argument("--password", default="demo-password")
    parser.add_argument("--name", default="Demo Admin")
    parser.add_argument("--openai-url", required=True, help="the OpenAI-compatible endpoint")
    parser.add_argument("--openai-key", required=True)
    parser.add_argument("--ollama-url", default="", help="an Ollama server; empty: none")
    parser.add_argument("--models", default="", help="participant model ids, comma separated")
    parser.add_argument("--function-id", default="mmc")
    parser.add_argument("--function-file", default=str(ROOT / "multi_model_conversation.py"))
    args = parser.parse_args(argv)

    api = Api(args.url)
    wait_healthy(api, args.server_pid, args.boot_timeout)
    say(f"admin {args.email}: {sign_in_or_up(api, args.name, args.email, args.password)}")
    connection = point_connection(api, args.openai_url, args.openai_key)
    say(f"OpenAI connection {args.openai_url}: {connection}")
    say(f"Ollama connection {args.ollama_url or '(none)'}: {point_ollama(api, args.ollama_url)}")
    action = install_function(api, Path(args.function_file), args.function_id)
    say(f"function {args.function_id}: {action}")
    pipe_model = f"{args.function_id}.Conversation-pipe"
    wanted = [m.strip() for m in args.models.split(",") if m.strip()]
    models = list_models(api, pipe_model, wanted)
    owner = "ollama" if args.ollama_url else ""
    chosen = choose_models(models, wanted, f"{args.function_id}.", owner)
    result = set_demo_valves(api, args.function_id, chosen, {m["id"] for m in models})
    say(f"user valves ({', '.join(chosen)}): {result}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
