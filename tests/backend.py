"""A scripted OpenAI-compatible backend for tests, the demo and the benchmark.

Each model id gets a `ModelScript` that decides how its replies look: length, pace, reasoning,
tool calls, errors, dropped connections. Every request is recorded so a test can check what the
host (Open WebUI) or the pipe actually sent. Run it standalone with
`python -m tests.backend --port 8099 --models a,b,c`.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import re
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from aiohttp import web

REASONING_KEYS = ("reasoning_content", "reasoning", "thinking")


@dataclass(frozen=True)
class ToolCallScript:
    """The tool call a model makes when the request offers tools (OpenAI function calling)."""

    name: str
    arguments: str = "{}"
    id: str | None = None  # default: "call_<model>_<n>"
    pieces: int = 3  # how many deltas the arguments string is split into


@dataclass(frozen=True)
class ModelScript:
    """How one model answers. Defaults give a quick, deterministic 8-word reply."""

    # str template ({model}, {n}, {last_user}) or callable(RecordedRequest) -> str;
    # None: `tokens` words starting with "<model>#<n>" so every reply is distinct.
    reply: str | Callable[[RecordedRequest], str] | None = None
    tokens: int = 8  # reply length when `reply` is None; one token = one word (+ space) per chunk
    delay: float = 0.0  # seconds slept before each streamed token (0 = as fast as possible)
    reasoning_tokens: int = 0  # reasoning deltas sent before the content
    # Exactly these reasoning deltas instead of the generated `reasoning_tokens` ones.
    reasoning_pieces: tuple[str, ...] = ()
    reasoning_key: str = "reasoning_content"  # or "reasoning" / "thinking"
    think_tags: bool = False  # put the reasoning inside the content as <think>...</think>
    tool_call: ToolCallScript | None = None
    # A runaway model: it makes `tool_call` this many times in a row in one turn (counting the
    # assistant tool calls already in the request since the last user message), whether tools
    # are offered or not. 0: one call, and only when tools are offered.
    tool_calls_in_a_row: int = 0
    http_error: int | None = None  # answer with this status and an OpenAI-style JSON error
    cut_after: int | None = None  # drop the connection after this many content tokens
    stall_after: int | None = None  # go silent (connection open) after this many content tokens
    stall_seconds: float = 600.0  # how long a stall lasts before the reply carries on
    answer_delay: float = 0.0  # seconds before any answer, streamed or not (a slow manager)
    # Frames that are not valid chunks (not JSON, not an object, not UTF-8), one after each
    # of the first len(...) content tokens; the reply's text still arrives whole.
    malformed_frames: tuple[bytes, ...] = ()
    empty: bool = False  # stream (or return) no content at all
    # Like real servers: stop after the request's max_tokens content tokens with finish_reason
    # "length". False plays a server that ignores max_tokens (a runaway reply).
    honor_max_tokens: bool = True
    # Refuse (HTTP 400, the OpenAI wording) a request whose prompt, counted as words, plus its
    # max_tokens exceeds this; None: no limit.
    context_limit: int | None = None
    honor_stop: bool = True  # end the reply before the first of the request's `stop` strings
    # End the stream cleanly (no finish_reason, no [DONE]) after this many content tokens, as a
    # proxy or server that gives up midway does.
    end_after: int | None = None
    # Non-streamed calls answer manager_rule(messages) when set (e.g. a manager picking a
    # speaker); without it they answer the normal reply text.
    manager_rule: Callable[[list[dict]], str] | None = None

    def __post_init__(self) -> None:
        if self.reasoning_key not in REASONING_KEYS:
            raise ValueError(f"reasoning_key must be one of {REASONING_KEYS}")


@dataclass
class RecordedRequest:
    """One POST /v1/chat/completions as received, plus when its tokens went out."""

    model: str
    messages: list[dict]
    stream: bool
    tools: list[dict] | None
    body: dict
    n: int  # 1-based count of requests for this model since the last reset
    received_at: float  # time.monotonic()
    first_token_at: float | None = None
    last_token_at: float | None = None
    status: int = 0  # HTTP status answered (0 until then)
    reply: str = ""  # content text sent (for tool calls: "")
    tool_call_sent: bool = False
    completed: bool = False  # the whole answer went out
    cut: bool = False  # the connection was dropped on purpose (cut_after)
    stalled: bool = False  # the reply went silent on purpose (stall_after)
    finish_reason: str = ""  # what the last frame said ("stop", "length", "tool_calls")
    client_closed: bool = False  # the client closed the stream before it ended
    finished_at: float | None = None  # when handling ended, however it ended

    @property
    def last_user(self) -> str:
        """Text of the last user message (handy in reply templates)."""
        for message in reversed(self.messages):
            if message.get("role") == "user":
                return _text_of(message.get("content"))
        return ""


def _text_of(content: Any) -> str:
    """Flattens OpenAI content (str or list of parts) to text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def split_tokens(text: str) -> list[str]:
    """Splits text into word tokens that keep their trailing whitespace, so join == text."""
    tokens = re.findall(r"\s*\S+\s*", text)
    return tokens or ([text] if text else [])


ECHO_BREAK = 25  # every 25th word names the reply again (below)


def default_reply(model: str, n: int, tokens: int) -> str:
    """The deterministic default reply: "<model>#<n> w1 w2 ..." with `tokens` words.

    Every ECHO_BREAK-th word is "<model>#<n>" again, so no two replies share a run of 40
    words: a reply copying an earlier one word for word is an echo the pipe cuts."""
    words = [f"{model}#{n}"] + [
        f"w{i}" if i % ECHO_BREAK else f"{model}#{n}" for i in range(1, max(tokens, 1))
    ]
    return " ".join(words)


def _reasoning_tokens(model: str, count: int) -> list[str]:
    """Deterministic reasoning words, one per delta."""
    return [f"think{i}-{model} " for i in range(1, count + 1)]


def _reasoning_of(model: str, script: ModelScript) -> list[str]:
    """The reasoning deltas a reply sends: the scripted pieces, else generated words."""
    return list(script.reasoning_pieces) or _reasoning_tokens(model, script.reasoning_tokens)


def _tool_calls_this_turn(messages: list[dict]) -> int:
    """Assistant messages with tool calls after the last user message."""
    count = 0
    for message in reversed(messages):
        if message.get("role") == "user":
            break
        count += bool(message.get("role") == "assistant" and message.get("tool_calls"))
    return count


def wants_tool_call(record: RecordedRequest, script: ModelScript) -> bool:
    """Whether this reply is the script's tool call rather than text."""
    return script.tool_call is not None and (
        _tool_calls_this_turn(record.messages) < script.tool_calls_in_a_row
        if script.tool_calls_in_a_row
        else bool(record.tools)
        and (not record.messages or record.messages[-1].get("role") != "tool")
    )


def _split_pieces(text: str, pieces: int) -> list[str]:
    """Cuts text into up to `pieces` non-empty consecutive parts."""
    pieces = max(1, min(pieces, len(text) or 1))
    size = -(-len(text) // pieces) if text else 1
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


class ScriptedBackend:
    """The aiohttp server. Public methods are thread-safe so a test thread can script it."""

    record_type: type[RecordedRequest] = RecordedRequest  # what each chat request is kept as

    def __init__(
        self,
        scripts: dict[str, ModelScript] | Iterable[str] = (),
        default: ModelScript | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if not isinstance(scripts, dict):
            scripts = {model: ModelScript() for model in scripts}
        self._initial = (dict(scripts), default or ModelScript())
        self._scripts: dict[str, ModelScript] = dict(scripts)
        self.default: ModelScript = default or ModelScript()
        self._records: list[RecordedRequest] = []
        self._counters: dict[str, int] = {}
        self._lock = threading.Lock()
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        self._changed: asyncio.Condition | None = None

    # --- scripting (thread-safe) -------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL to give Open WebUI as OPENAI_API_BASE_URL."""
        if not self._port:
            raise RuntimeError("backend not started")
        return f"http://{self._host}:{self._port}/v1"

    @property
    def port(self) -> int:
        return self._port

    @property
    def models(self) -> list[str]:
        """Model ids listed by GET /v1/models."""
        with self._lock:
            return list(self._scripts)

    def set_script(self, model: str, script: ModelScript | None = None, **changes: Any) -> None:
        """Sets a model's script; keyword changes are applied on top (adds the model if new)."""
        with self._lock:
            base = script or self._scripts.get(model) or ModelScript()
            self._scripts[model] = replace(base, **changes) if changes else base

    def set_default(self, script: ModelScript | None = None, **changes: Any) -> None:
        """Sets the script used for model ids that have none."""
        with self._lock:
            base = script or self.default
            self.default = replace(base, **changes) if changes else base

    def script_for(self, model: str) -> ModelScript:
        with self._lock:
            return self._scripts.get(model, self.default)

    def reset(self) -> None:
        """Forgets recorded requests and counters and restores the construction-time scripts."""
        with self._lock:
            self._records.clear()
            self._counters.clear()
            self._scripts = dict(self._initial[0])
            self.default = self._initial[1]

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of all chat completion requests received, oldest first."""
        with self._lock:
            return list(self._records)

    def requests_for(self, model: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.model == model]

    # --- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Binds 127.0.0.1 (on a free port unless one was given) and starts serving."""
        app = web.Application()
        self._add_routes(app)
        # A short shutdown grace: a test may stop us while a slow stream is still running.
        self._runner = web.AppRunner(
            app, handle_signals=False, access_log=None, shutdown_timeout=1.0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        server = site._server  # aiohttp has no public accessor for the bound port
        self._port = server.sockets[0].getsockname()[1]
        self._changed = asyncio.Condition()

    def _add_routes(self, app: web.Application) -> None:
        """The API this server speaks: OpenAI's; the scripted Ollama server adds its own."""
        app.router.add_get("/v1/models", self._handle_models)
        app.router.add_post("/v1/chat/completions", self._handle_chat)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def wait_for_requests(self, count: int, timeout: float = 10.0) -> list[RecordedRequest]:
        """Waits (on the backend's loop) until `count` requests completed or were cut."""
        assert self._changed is not None
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(
                lambda: sum(1 for r in self.requests if r.finished_at is not None) >= count
            )
        return self.requests

    # --- handlers ---------------------------------------------------------------------

    async def _handle_models(self, request: web.Request) -> web.Response:
        created = 1_700_000_000
        data = [
            {"id": m, "object": "model", "created": created, "owned_by": "scripted"}
            for m in self.models
        ]
        return web.json_response({"object": "list", "data": data})

    def _record(self, body: dict) -> tuple[RecordedRequest, ModelScript]:
        model = str(body.get("model", ""))
        with self._lock:
            n = self._counters[model] = self._counters.get(model, 0) + 1
            script = self._scripts.get(model, self.default)
            record = self.record_type(
                model=model,
                messages=copy.deepcopy(body.get("messages") or []),
                stream=bool(body.get("stream")),
                tools=copy.deepcopy(body.get("tools")),
                body=copy.deepcopy(body),
                n=n,
                received_at=time.monotonic(),
            )
            self._records.append(record)
        return record, script

    async def _notify(self) -> None:
        if self._changed is not None:
            async with self._changed:
                self._changed.notify_all()

    async def _handle_chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error_response(400, "request body is not JSON")
        record, script = self._record(body)
        try:
            await _pause(script.answer_delay)
            if script.http_error:
                record.status = script.http_error
                return _error_response(script.http_error, f"scripted error for {record.model}")
            if script.context_limit is not None:
                wanted = prompt_tokens(record.messages) + int(record.body.get("max_tokens") or 0)
                if wanted > script.context_limit:
                    record.status = 400
                    return _error_response(
                        400,
                        f"This model's maximum context length is {script.context_limit} "
                        f"tokens. However, you requested {wanted} tokens. Please reduce the "
                        "length of the messages or completion.",
                    )
            wants_tool = wants_tool_call(record, script)
            if record.stream:
                return await self._stream(request, record, script, wants_tool)
            return self._complete(record, script, wants_tool)
        finally:
            record.finished_at = time.monotonic()
            await self._notify()

    def _reply_text(self, record: RecordedRequest, script: ModelScript) -> str:
        if script.empty:
            return ""
        if callable(script.reply):
            return script.reply(record)
        if isinstance(script.reply, str):
            return script.reply.format(model=record.model, n=record.n, last_user=record.last_user)
        return default_reply(record.model, record.n, script.tokens)

    def _complete(
        self, record: RecordedRequest, script: ModelScript, wants_tool: bool
    ) -> web.Response:
        """Non-streamed answer: one chat.completion object."""
        message: dict[str, Any] = {"role": "assistant"}
        finish = "stop"
        if wants_tool:
            assert script.tool_call is not None
            message["content"] = None
            message["tool_calls"] = [_tool_call_object(script.tool_call, record)]
            finish = "tool_calls"
            record.tool_call_sent = True
        else:
            if script.manager_rule is not None:
                text = script.manager_rule(record.messages)
            else:
                pieces, finish = _bounded(
                    split_tokens(self._reply_text(record, script)), record, script
                )
                text = "".join(pieces)
            reasoning = "".join(_reasoning_of(record.model, script))
            if script.think_tags and not script.empty:
                text = f"<think>{reasoning or 'thinking'}</think>{text}"
            elif reasoning and not script.empty:
                message[script.reasoning_key] = reasoning
            message["content"] = text
            record.reply = text
        now = time.monotonic()
        record.first_token_at = record.last_token_at = now
        record.status = 200
        record.completed = True
        record.finish_reason = finish
        return web.json_response(
            {
                "id": f"chatcmpl-{record.model}-{record.n}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": record.model,
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                "usage": _usage(record, record.reply),
            }
        )

    async def _stream(
        self,
        request: web.Request,
        record: RecordedRequest,
        script: ModelScript,
        wants_tool: bool,
    ) -> web.StreamResponse:
        """Streamed answer: SSE chat.completion.chunk frames, then [DONE]."""
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        record.status = 200
        try:
            await self._stream_body(response, request, record, script, wants_tool)
        except ConnectionResetError:  # the client closed the stream (e.g. it cut the reply)
            record.client_closed = True
        return response

    async def _stream_body(
        self,
        response: web.StreamResponse,
        request: web.Request,
        record: RecordedRequest,
        script: ModelScript,
        wants_tool: bool,
    ) -> None:
        chunk_id = f"chatcmpl-{record.model}-{record.n}"

        async def send(delta: dict, finish: str | None = None, **extra: Any) -> None:
            frame = {
                "id": chunk_id,
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": record.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                **extra,
            }
            await response.write(f"data: {json.dumps(frame)}\n\n".encode())

        async def token_sent() -> None:
            now = time.monotonic()
            record.first_token_at = record.first_token_at or now
            record.last_token_at = now

        await send({"role": "assistant", "content": ""})
        if wants_tool:
            assert script.tool_call is not None
            await self._stream_tool_call(send, record, script)
            await token_sent()
            finish = "tool_calls"
        else:
            reasoning = _reasoning_of(record.model, script)
            content, finish = _bounded(
                split_tokens(self._reply_text(record, script)), record, script
            )
            if script.think_tags and not script.empty:
                content = ["<think>", *(reasoning or ["thinking"]), "</think>", *content]
            elif not script.empty:
                for piece in reasoning:
                    await _pause(script.delay)
                    await send({script.reasoning_key: piece})
                    await token_sent()
            sent = 0
            for piece in content:
                if script.cut_after is not None and sent >= script.cut_after:
                    _drop_connection(request, record)
                    return
                if script.stall_after is not None and sent == script.stall_after:
                    record.stalled = True
                    await asyncio.sleep(script.stall_seconds)
                if script.end_after is not None and sent >= script.end_after:
                    await response.write_eof()  # no finish_reason, no [DONE]
                    return
                await _pause(script.delay)
                await send({"content": piece})
                await token_sent()
                record.reply += piece
                if sent < len(script.malformed_frames):
                    await response.write(script.malformed_frames[sent])
                sent += 1
            if script.cut_after is not None and sent >= script.cut_after:
                _drop_connection(request, record)
                return
        record.finish_reason = finish
        await send({}, finish)
        if (record.body.get("stream_options") or {}).get("include_usage"):
            frame = {
                "id": chunk_id,
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": record.model,
                "choices": [],
                "usage": _usage(record, record.reply),
            }
            await response.write(f"data: {json.dumps(frame)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        record.completed = True

    async def _stream_tool_call(self, send, record: RecordedRequest, script: ModelScript) -> None:
        """Streams one tool call as several delta.tool_calls pieces with the same index."""
        call = _tool_call_object(script.tool_call, record)
        await send(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": call["id"],
                        "type": "function",
                        "function": {"name": call["function"]["name"], "arguments": ""},
                    }
                ]
            }
        )
        for piece in _split_pieces(call["function"]["arguments"], script.tool_call.pieces):
            await _pause(script.delay)
            await send({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
        record.tool_call_sent = True


async def _cancel_all(tasks: set[asyncio.Task]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _pause(delay: float) -> None:
    if delay > 0:
        await asyncio.sleep(delay)


def _drop_connection(request: web.Request, record: RecordedRequest) -> None:
    """Closes the socket mid-stream, without the final chunk, like a crashed backend."""
    record.cut = True
    if request.transport is not None:
        request.transport.abort()


def _tool_call_object(tool_call: ToolCallScript, record: RecordedRequest) -> dict:
    return {
        "id": tool_call.id or f"call_{record.model}_{record.n}",
        "type": "function",
        "function": {"name": tool_call.name, "arguments": tool_call.arguments},
    }


def prompt_tokens(messages: list[dict]) -> int:
    """The backend's token count of a prompt: its words."""
    return sum(len(_text_of(m.get("content")).split()) for m in messages)


def _bounded(
    pieces: list[str], record: RecordedRequest, script: ModelScript
) -> tuple[list[str], str]:
    """The reply's tokens as a real server sends them: up to a stop string or max_tokens."""
    return bound_tokens(pieces, record.body.get("stop"), record.body.get("max_tokens"), script)


def bound_tokens(
    pieces: list[str], stops: Any, limit: Any, script: ModelScript
) -> tuple[list[str], str]:
    """Tokens up to the first stop string, at most `limit` of them ("length" when cut)."""
    stops = stops or []
    stops = [stops] if isinstance(stops, str) else [s for s in stops if isinstance(s, str) and s]
    if script.honor_stop and stops:
        text = "".join(pieces)
        cut = min((i for s in stops if (i := text.find(s)) >= 0), default=-1)
        if cut >= 0:
            pieces = split_tokens(text[:cut])
    if script.honor_max_tokens and isinstance(limit, int) and 0 < limit < len(pieces):
        return pieces[:limit], "length"
    return pieces, "stop"


def _usage(record: RecordedRequest, text: str) -> dict:
    prompt = prompt_tokens(record.messages)
    completion = len(text.split())
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _error_response(status: int, message: str) -> web.Response:
    return web.json_response(
        {"error": {"message": message, "type": "scripted_error", "code": status}}, status=status
    )


class BackendThread:
    """Runs a ScriptedBackend on its own event loop in a daemon thread, for sync code."""

    def __init__(self, backend: ScriptedBackend | None = None, **kwargs: Any) -> None:
        self.backend = backend or ScriptedBackend(**kwargs)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self, timeout: float = 10.0) -> BackendThread:
        self._thread = threading.Thread(target=self._run, name="scripted-backend", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("scripted backend did not start")
        if self._error is not None:
            raise RuntimeError("scripted backend failed to start") from self._error
        return self

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self.backend.start())
        except BaseException as exc:  # reported to start()
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self.backend.stop())
            # Handlers still in a scripted stall or delay end here, not when the loop is gone.
            loop.run_until_complete(_cancel_all(asyncio.all_tasks(loop)))
            loop.close()

    def stop(self, timeout: float = 10.0) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)

    def wait_for_requests(self, count: int, timeout: float = 10.0) -> list[RecordedRequest]:
        """Blocks until `count` requests finished (or were cut or failed)."""
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(
            self.backend.wait_for_requests(count, timeout), self._loop
        )
        return future.result(timeout + 1)

    def __enter__(self) -> BackendThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # Thread-safe pass-throughs to the backend.
    url = property(lambda self: self.backend.url)
    port = property(lambda self: self.backend.port)
    requests = property(lambda self: self.backend.requests)
    models = property(lambda self: self.backend.models)

    def set_script(self, model: str, script: ModelScript | None = None, **changes: Any) -> None:
        self.backend.set_script(model, script, **changes)

    def set_default(self, script: ModelScript | None = None, **changes: Any) -> None:
        self.backend.set_default(script, **changes)

    def requests_for(self, model: str) -> list[RecordedRequest]:
        return self.backend.requests_for(model)

    def reset(self) -> None:
        self.backend.reset()


def serve_cli(
    argv: list[str] | None, make: Callable[..., Any], models: str, what: str, doc: str
) -> None:
    """A scripted server's command line: serve the given models until interrupted.

    `make(scripts, default=..., port=...)` builds the server (ScriptedBackend, ScriptedOllama).
    """
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--models", default=models, help="comma separated")
    parser.add_argument("--tokens", type=int, default=ModelScript.tokens)
    parser.add_argument("--delay", type=float, default=ModelScript.delay)
    parser.add_argument("--reasoning-tokens", type=int, default=0)
    args = parser.parse_args(argv)
    script = ModelScript(
        tokens=args.tokens, delay=args.delay, reasoning_tokens=args.reasoning_tokens
    )
    names = [m.strip() for m in args.models.split(",") if m.strip()]

    async def serve() -> None:
        server = make({m: script for m in names}, default=script, port=args.port)
        await server.start()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):  # also when started in the background
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        print(f"scripted {what} serving {', '.join(names)} at {server.url}", flush=True)
        try:
            await stop.wait()
        finally:
            await server.stop()

    asyncio.run(serve())


def main(argv: list[str] | None = None) -> None:
    """CLI: serve the given models until interrupted."""
    serve_cli(argv, ScriptedBackend, "model-a,model-b,model-c", "backend", __doc__)


if __name__ == "__main__":
    main()
