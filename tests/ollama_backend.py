"""A scripted Ollama server for tests: Ollama's own API, the one Open WebUI's Ollama
connection (`OLLAMA_BASE_URLS`) talks to, with the same `ModelScript`s as tests/backend.py.

`POST /api/chat` answers NDJSON lines (`message.content`, `message.thinking`,
`message.tool_calls` with object arguments, a last line with `done_reason`,
`prompt_eval_count` and `eval_count`) or one JSON object; `GET /api/tags`, `/api/ps`,
`/api/version` and `POST /api/show` answer what Open WebUI lists models with. Like Ollama, it
reads sampling, `num_predict`, `stop` and `num_ctx` only from `options`, and a prompt longer than
the context is not refused: its oldest part is dropped (`OllamaRequest.truncated` says how much).
One token is one word, as in the OpenAI-style backend. Every request is recorded.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.backend import (
    BackendThread,
    ModelScript,
    RecordedRequest,
    ScriptedBackend,
    _drop_connection,
    _pause,
    _reasoning_of,
    bound_tokens,
    prompt_tokens,
    serve_cli,
    split_tokens,
    wants_tool_call,
)

OLLAMA_VERSION = "0.12.3"
# What Ollama gives a request without options.num_ctx on a machine with < 24 GiB of VRAM.
DEFAULT_CONTEXT_LENGTH = 4096
NS_PER_TOKEN = 10_000_000  # eval durations as if 100 tokens a second


@dataclass
class OllamaRequest(RecordedRequest):
    """One POST /api/chat as received (Ollama's shape), plus what the server read of it."""

    num_ctx: int = 0  # the context this request ran with
    prompt_eval_count: int = 0  # prompt tokens the server read (and reported)
    eval_count: int = 0  # tokens it generated (reasoning included) and reported
    truncated: int = 0  # prompt tokens dropped because the prompt did not fit num_ctx

    @property
    def options(self) -> dict:
        options = self.body.get("options")
        return options if isinstance(options, dict) else {}


class ScriptedOllama(ScriptedBackend):
    """The aiohttp server speaking Ollama's API; scripting and records as in ScriptedBackend."""

    record_type = OllamaRequest

    def __init__(self, *args: Any, context_length: int = DEFAULT_CONTEXT_LENGTH, **kw: Any):
        super().__init__(*args, **kw)
        self.context_length = context_length  # Ollama's OLLAMA_CONTEXT_LENGTH
        self.calls: list[tuple[str, str]] = []  # (method, path) of every request, in order

    @property
    def url(self) -> str:
        """Base URL to give Open WebUI as OLLAMA_BASE_URLS (Ollama has no /v1 prefix here)."""
        if not self._port:
            raise RuntimeError("backend not started")
        return f"http://{self._host}:{self._port}"

    def reset(self) -> None:
        super().reset()
        with self._lock:
            self.calls.clear()

    def _add_routes(self, app: web.Application) -> None:
        app.middlewares.append(self._log_call)
        app.router.add_get("/", self._handle_root)
        app.router.add_get("/api/version", self._handle_version)
        app.router.add_get("/api/tags", self._handle_tags)
        app.router.add_get("/api/ps", self._handle_ps)
        app.router.add_post("/api/show", self._handle_show)
        app.router.add_post("/api/chat", self._handle_chat)

    @web.middleware
    async def _log_call(self, request: web.Request, handler: Any) -> web.StreamResponse:
        with self._lock:
            self.calls.append((request.method, request.path))
        return await handler(request)

    # --- listing -------------------------------------------------------------------------

    async def _handle_root(self, request: web.Request) -> web.Response:
        return web.Response(text="Ollama is running")

    async def _handle_version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": OLLAMA_VERSION})

    async def _handle_tags(self, request: web.Request) -> web.Response:
        return web.json_response({"models": [_tag(m) for m in self.models]})

    async def _handle_ps(self, request: web.Request) -> web.Response:
        return web.json_response({"models": []})

    async def _handle_show(self, request: web.Request) -> web.Response:
        body = await request.json()
        name = str(body.get("model") or body.get("name") or "")
        if name not in self.models:
            return web.json_response({"error": f"model '{name}' not found"}, status=404)
        return web.json_response(
            {
                "modelfile": f"FROM {name}",
                "parameters": "",
                "template": "{{ .Prompt }}",
                "details": _tag(name)["details"],
                "model_info": {"general.architecture": "llama", "llama.context_length": 131072},
                "capabilities": ["completion", "tools", "thinking"],
            }
        )

    # --- chat ----------------------------------------------------------------------------

    async def _handle_chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return web.json_response({"error": "invalid JSON"}, status=400)
        record, script = self._record(body)
        assert isinstance(record, OllamaRequest)
        record.stream = body.get("stream") is not False  # Ollama streams unless told not to
        try:
            await _pause(script.answer_delay)
            if script.http_error:
                record.status = script.http_error
                message = f"scripted error for {record.model}"
                return web.json_response({"error": message}, status=script.http_error)
            self._read_prompt(record)
            wants_tool = wants_tool_call(record, script)
            if record.stream:
                return await self._stream(request, record, script, wants_tool)
            return self._complete(record, script, wants_tool)
        finally:
            record.finished_at = time.monotonic()
            await self._notify()

    def _read_prompt(self, record: OllamaRequest) -> None:
        """Like Ollama: a prompt longer than num_ctx loses its oldest tokens, silently."""
        num_ctx = record.options.get("num_ctx")
        record.num_ctx = num_ctx if isinstance(num_ctx, int) and num_ctx > 0 else 0
        record.num_ctx = record.num_ctx or self.context_length
        tokens = prompt_tokens(record.messages)
        record.prompt_eval_count = min(tokens, record.num_ctx)
        record.truncated = tokens - record.prompt_eval_count

    def _answer(self, record: OllamaRequest, script: ModelScript) -> tuple[list[str], str]:
        """The reply's content tokens, bounded by options.stop and options.num_predict."""
        options = record.options
        text = self._reply_text(record, script)
        return bound_tokens(
            split_tokens(text), options.get("stop"), options.get("num_predict"), script
        )

    def _complete(
        self, record: OllamaRequest, script: ModelScript, wants_tool: bool
    ) -> web.Response:
        """Non-streamed answer: one object holding the whole message."""
        message: dict[str, Any] = {"role": "assistant", "content": ""}
        reasoning = [] if script.empty else _reasoning_of(record.model, script)
        finish = "stop"
        if wants_tool:
            message["tool_calls"] = [_ollama_tool_call(script, record)]
            record.tool_call_sent = True
            record.eval_count = 1
        else:
            if script.manager_rule is not None:
                pieces = split_tokens(script.manager_rule(record.messages))
            else:
                pieces, finish = self._answer(record, script)
            message["content"] = record.reply = "".join(pieces)
            if reasoning:
                message["thinking"] = "".join(reasoning)
            record.eval_count = len(reasoning) + len(pieces)
        record.first_token_at = record.last_token_at = time.monotonic()
        record.status = 200
        record.completed = True
        record.finish_reason = finish
        return web.json_response(_line(record, message, done=True, **_final(record, finish)))

    async def _stream(
        self,
        request: web.Request,
        record: OllamaRequest,
        script: ModelScript,
        wants_tool: bool,
    ) -> web.StreamResponse:
        """Streamed answer: one JSON object a line, the last with `done: true` and the counts."""
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        record.status = 200
        try:
            await self._stream_lines(response, request, record, script, wants_tool)
        except ConnectionResetError:  # the client closed the stream (e.g. it cut the reply)
            record.client_closed = True
        return response

    async def _stream_lines(
        self,
        response: web.StreamResponse,
        request: web.Request,
        record: OllamaRequest,
        script: ModelScript,
        wants_tool: bool,
    ) -> None:
        async def send(message: dict, done: bool = False, **extra: Any) -> None:
            line = _line(record, {"role": "assistant", "content": "", **message}, done, **extra)
            await response.write(json.dumps(line).encode() + b"\n")
            now = time.monotonic()
            record.first_token_at = record.first_token_at or now
            record.last_token_at = now

        finish = "stop"
        if wants_tool:
            await _pause(script.delay)
            await send({"tool_calls": [_ollama_tool_call(script, record)]})
            record.tool_call_sent = True
            record.eval_count = 1
        else:
            content, finish = self._answer(record, script)
            reasoning = [] if script.empty else _reasoning_of(record.model, script)
            if script.think_tags and not script.empty:
                content = ["<think>", *(reasoning or ["thinking"]), "</think>", *content]
            else:
                for piece in reasoning:
                    await _pause(script.delay)
                    await send({"thinking": piece})
                    record.eval_count += 1
            for sent, piece in enumerate(content):
                if script.cut_after is not None and sent >= script.cut_after:
                    _drop_connection(request, record)
                    return
                if script.stall_after is not None and sent == script.stall_after:
                    record.stalled = True
                    await asyncio.sleep(script.stall_seconds)
                if script.end_after is not None and sent >= script.end_after:
                    await response.write_eof()  # no `done` line
                    return
                await _pause(script.delay)
                await send({"content": piece})
                record.reply += piece
                record.eval_count += 1
        record.finish_reason = finish
        await send({}, done=True, **_final(record, finish))
        await response.write_eof()
        record.completed = True


def _line(record: OllamaRequest, message: dict, done: bool, **extra: Any) -> dict:
    created = time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime())
    return {"model": record.model, "created_at": created, "message": message, "done": done, **extra}


def _final(record: OllamaRequest, finish: str) -> dict:
    """The last line's fields: why it ended and what it counted (durations in nanoseconds)."""
    return {
        "done_reason": finish,
        "total_duration": (record.prompt_eval_count + record.eval_count) * NS_PER_TOKEN,
        "load_duration": 1_000_000,
        "prompt_eval_count": record.prompt_eval_count,
        "prompt_eval_duration": record.prompt_eval_count * NS_PER_TOKEN,
        "eval_count": record.eval_count,
        "eval_duration": max(record.eval_count, 1) * NS_PER_TOKEN,
    }


def _ollama_tool_call(script: ModelScript, record: RecordedRequest) -> dict:
    """Ollama's shape: the whole call in one line, its arguments an object, not a string."""
    assert script.tool_call is not None
    call = script.tool_call
    try:
        arguments: Any = json.loads(call.arguments or "{}")
    except json.JSONDecodeError:
        arguments = call.arguments
    return {
        "id": call.id or f"call_{record.model}_{record.n}",
        "function": {"index": 0, "name": call.name, "arguments": arguments},
    }


def _tag(name: str) -> dict:
    """One /api/tags entry as Ollama lists a pulled model."""
    return {
        "name": name,
        "model": name,
        "modified_at": "2026-01-01T00:00:00Z",
        "size": 270_000_000,
        "digest": hashlib.sha256(name.encode()).hexdigest(),
        "details": {
            "parent_model": "",
            "format": "gguf",
            "family": "llama",
            "families": ["llama"],
            "parameter_size": "135M",
            "quantization_level": "Q8_0",
        },
    }


def ollama_thread(*models: str, **kwargs: Any) -> BackendThread:
    """A ScriptedOllama serving `models` with default scripts, on its own thread (started)."""
    server = ScriptedOllama({m: ModelScript() for m in models}, **kwargs)
    return BackendThread(server).start()


def main(argv: list[str] | None = None) -> None:
    """CLI: serve the given models as an Ollama server until interrupted."""
    models = "llama-a:latest,llama-b:latest,llama-c:latest"
    serve_cli(argv, ScriptedOllama, models, "Ollama", __doc__)


if __name__ == "__main__":
    main()
