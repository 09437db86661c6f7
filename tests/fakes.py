"""A fake Open WebUI host for unit tests: scripted model streams, counted lookups, fake time."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import multi_model_conversation as mmc


class FakeClock(mmc.Clock):
    """Time moves only when a test (or a scripted stream) advances it."""

    def __init__(self) -> None:
        self.t = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future]] = []
        self._ids = itertools.count()

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.t + max(0.0, seconds), next(self._ids), future))
        await future

    def advance(self, seconds: float) -> None:
        self.t += seconds
        while self._sleepers and self._sleepers[0][0] <= self.t + 1e-12:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)


# The events Open WebUI 0.12.4's chat page applies to a message's content (Chat.svelte):
# `chat:message:delta` and `message` append, `chat:message` and `replace` set the whole text.
TAB_CONTENT_TYPES = ("replace", "chat:message", "chat:message:delta", "message")


def tab_apply(content: str, event: dict) -> str:
    """The message's content after the page applies `event` to it."""
    kind, text = event["type"], (event.get("data") or {}).get("content") or ""
    if kind in ("chat:message:delta", "message"):
        return content + text
    if kind in ("chat:message", "replace"):
        return text
    return content


def tab_copies(events: list[dict], start: str = "") -> list[str]:
    """The tab's copy after each of `events`, applied in order from `start`."""
    out, content = [], start
    for event in events:
        content = tab_apply(content, event)
        out.append(content)
    return out


class RecordingEmitter:
    """Stands in for __event_emitter__: records every event with the fake time it was sent."""

    def __init__(
        self,
        clock: FakeClock,
        delay: float = 0.0,
        fail: bool = False,
        save_delay: float = 0.0,
        fail_calls: frozenset[int] = frozenset(),
        status_delay: float = 0.0,
    ) -> None:
        self.clock = clock
        self.delay = delay  # every event arrives this late
        self.fail = fail
        # Like the host: a `replace` reaches the tab at once, then its database write takes
        # this long before the emitter call returns.
        self.save_delay = save_delay
        self.fail_calls = fail_calls  # these calls (0-based) fail without reaching the tab
        self.status_delay = status_delay  # the same for a `status` (the host stores it too)
        self.calls = 0
        self.events: list[tuple[float, dict]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.saves_in_flight = 0
        self.max_saves_in_flight = 0
        self.writes_in_flight = 0  # events the host stores (replace, status) not yet returned
        self.max_writes_in_flight = 0
        # For each save that failed: how many events had arrived when it was sent.
        self.failed_saves: list[int] = []

    async def __call__(self, event: dict) -> None:
        call, self.calls = self.calls, self.calls + 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        saving = event.get("type") == "replace"
        writing = saving or event.get("type") == "status"
        self.saves_in_flight += saving
        self.max_saves_in_flight = max(self.max_saves_in_flight, self.saves_in_flight)
        self.writes_in_flight += writing
        self.max_writes_in_flight = max(self.max_writes_in_flight, self.writes_in_flight)
        sent_after = len(self.events)
        try:
            if self.delay:
                await self.clock.sleep(self.delay)
            if self.fail or call in self.fail_calls:
                if saving:
                    self.failed_saves.append(sent_after)
                raise ConnectionError("socket gone")
            self.events.append((self.clock.now(), json.loads(json.dumps(event))))
            if saving and self.save_delay:
                await self.clock.sleep(self.save_delay)
            if event.get("type") == "status" and self.status_delay:
                await self.clock.sleep(self.status_delay)
        finally:
            self.in_flight -= 1
            self.saves_in_flight -= saving
            self.writes_in_flight -= writing

    def _content_events(self) -> list[tuple[float, dict]]:
        shown = [(t, e) for t, e in self.events if e["type"] in TAB_CONTENT_TYPES]
        if shown and shown[-1][1]["type"] == "chat:message" and not shown[-1][1]["data"]["content"]:
            shown.pop()  # the hand-over before the host's final delta, not a frame
        return shown

    def contents(self) -> list[str]:
        """The tab's copy after each frame (delta, chat:message or replace), as the page has it."""
        return tab_copies([e for _, e in self._content_events()])

    def content_times(self) -> list[float]:
        return [t for t, _ in self._content_events()]

    def content_bytes(self) -> int:
        """Bytes of content events, as the socket carries their data (JSON)."""
        return sum(len(json.dumps(e)) for _, e in self._content_events())

    def saved(self) -> list[tuple[float, str]]:
        """Every state the host was asked to store (replace), with its time."""
        return [(t, e["data"]["content"]) for t, e in self.events if e["type"] == "replace"]

    def statuses(self) -> list[str]:
        return [e["data"]["description"] for _, e in self.events if e["type"] == "status"]


def chunk(**delta: Any) -> str:
    """One SSE frame of an OpenAI chat.completion.chunk carrying `delta`."""
    frame = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}]}
    return f"data: {json.dumps(frame)}\n\n"


def tool_call_chunks(name: str, arguments: str, call_id: str = "call_1", index: int = 0) -> list:
    """A tool call split over several deltas, as OpenAI-compatible servers send it."""
    half = len(arguments) // 2
    return [
        chunk(tool_calls=[{"index": index, "id": call_id, "function": {"name": name}}]),
        chunk(tool_calls=[{"index": index, "function": {"arguments": arguments[:half]}}]),
        chunk(tool_calls=[{"index": index, "function": {"arguments": arguments[half:]}}]),
    ]


def reply(text: str, reasoning: str = "") -> list[str]:
    """A streamed reply: reasoning deltas word by word, then content word by word."""
    chunks = [chunk(reasoning_content=w) for w in _words(reasoning)]
    chunks += [chunk(content=w) for w in _words(text)]
    return chunks + ["data: [DONE]\n\n"]


def _words(text: str) -> list[str]:
    words = text.split(" ")
    return [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words) if text]


@dataclass
class Script:
    """What a fake model does on each call: streams (lists of chunks) or errors, in order."""

    streams: list[Any] = field(default_factory=list)
    completions: list[Any] = field(default_factory=list)
    chunk_delay: float = 0.0  # fake seconds between chunks
    default_text: str | None = None
    counted: tuple[int, int] | None = None  # (prompt, completion) a plain completion reports


class FakeHost(mmc.HostGateway):
    """Implements the gateway over in-memory models, records, chats and tools; counts calls."""

    def __init__(self, clock: FakeClock, models: dict[str, str] | None = None) -> None:
        super().__init__(request=None)
        self.clock = clock
        self.stores_returned = True  # as 0.12 does; 0.10 and 0.11 do not
        self.models = {
            mid: {"id": mid, "name": name, "owned_by": "openai", "info": {"meta": {}}}
            for mid, name in (models or {"m1": "Model One", "m2": "Model Two"}).items()
        }
        self.records: dict[str, Any] = {}
        self.denied: set[str] = set()
        self.scripts: dict[str, Script] = {}
        self.chat_configs: dict[str, Any] = {}
        self.tools: dict[str, dict] = {}
        self.calls: dict[str, int] = {
            "get_user": 0,
            "get_model_record": 0,
            "check_access": 0,
            "load_tools": 0,
            "runtime_models": 0,
        }
        self.requests: list[dict] = []  # every completion form, in order
        self.tool_loads: list[dict] = []  # what each load_tools call asked for
        self.task_model_setting = ("", "")  # (TASK_MODEL_EXTERNAL, TASK_MODEL)
        self.users = {"u1": SimpleNamespace(id="u1", role="user", name="Ann")}

    # -- host surface ----------------------------------------------------------------------
    def stores_returned_text(self) -> bool:  # type: ignore[override]
        return self.stores_returned

    async def get_user(self, user_id: str) -> Any:
        self.calls["get_user"] += 1
        return self.users.get(user_id)

    def runtime_models(self) -> dict[str, dict]:
        self.calls["runtime_models"] += 1
        return self.models

    async def get_model_record(self, model_id: str) -> Any:
        self.calls["get_model_record"] += 1
        await asyncio.sleep(0)
        return self.records.get(model_id)

    async def check_access(self, user: Any, model: dict, record: Any) -> bool:
        self.calls["check_access"] += 1
        return model["id"] not in self.denied

    async def task_models(self) -> tuple[str, str]:
        return self.task_model_setting

    async def load_chat_config(self, chat_id: str) -> Any:
        return self.chat_configs.get(chat_id)

    async def save_chat_config(self, chat_id: str, config: dict) -> None:
        self.chat_configs[chat_id] = json.loads(json.dumps(config))

    async def load_tools(
        self, user, model, tool_ids, features, terminal_id, extra_params, builtin=True
    ):
        self.calls["load_tools"] += 1
        self.tool_loads.append({"tool_ids": list(tool_ids), "builtin": builtin})
        return dict(self.tools)

    async def process_tool_result(self, name, result, tool_type, metadata, user):
        files = []
        if isinstance(result, dict) and "files" in result:
            files = result.pop("files")
        text = result if isinstance(result, str) else json.dumps(result)
        return text, files, []

    async def stream_chat(self, form: dict, user: Any):
        self.requests.append({**form, "stream": True})
        script = self.scripts.setdefault(form["model"], Script())
        item = script.streams.pop(0) if script.streams else None
        if item is None:
            text = script.default_text or f"{form['model']} reply {len(self.requests)}"
            item = reply(text)
        if isinstance(item, Exception):
            raise item
        last = item[-1] if item else ""
        last = last.decode("utf-8", "replace") if isinstance(last, bytes) else str(last)
        if not any(isinstance(p, Exception) for p in item) and "[DONE]" not in last:
            item = [*item, "data: [DONE]\n\n"]  # a real server ends every finished stream so
        for piece in item:
            if isinstance(piece, Exception):
                raise piece
            if script.chunk_delay:
                self.clock.advance(script.chunk_delay)
            for _ in range(4):  # a network read lets the loop run other tasks for a while
                await asyncio.sleep(0)
            yield piece

    async def complete_counted(self, form: dict, user: Any) -> tuple[str, tuple[int, int] | None]:
        """A plain completion; its counts are the script's `counted`, else none (estimated)."""
        text = await self.complete(form, user)
        return text, self.scripts[form["model"]].counted

    async def complete(self, form: dict, user: Any) -> str:
        self.requests.append({**form, "stream": False})
        script = self.scripts.setdefault(form["model"], Script())
        item = script.completions.pop(0) if script.completions else f"{form['model']} plain"
        if isinstance(item, Exception):
            raise item
        await asyncio.sleep(0)
        return item


def make_record(system: str = "", function_calling: str | None = None, tool_ids=None) -> Any:
    params = {"system": system} if system else {}
    if function_calling:
        params["function_calling"] = function_calling
    return SimpleNamespace(params=params, meta={"toolIds": tool_ids or []})


def config(*models: str, rounds: int = 1, **extra: Any) -> dict:
    """An overlay-shaped config with one participant per model id (alias = the id upper-cased)."""
    return {
        "rounds": rounds,
        "participants": [{"model": m, "alias": m.upper(), "system_message": ""} for m in models],
        **extra,
    }


class Overlay:
    """Answers __event_call__ like the browser's dialog does."""

    def __init__(self, answer):
        self.answer = answer
        self.calls: list[dict] = []

    async def __call__(self, event: dict):
        self.calls.append(event)
        return self.answer


async def streamed_text(result: Any) -> tuple[str, list[dict]]:
    """What the host makes of a pipe's answer: its text, and the frames (dicts) after it,
    which carry the message's usage. A streamed conversation is an async generator."""
    if isinstance(result, str):
        return result, []
    parts = [part async for part in result]
    frames = [part for part in parts if isinstance(part, dict)]
    return "".join(part for part in parts if isinstance(part, str)), frames


class PipeHarness:
    """A Pipe wired to a FakeHost and FakeClock, called the way Open WebUI calls it."""

    def __init__(self, models: dict[str, str] | None = None, interval: float = 1 / 30) -> None:
        self.clock = FakeClock()
        self.host = FakeHost(self.clock, models)
        self.pipe = mmc.Pipe()
        self.pipe.valves.EMIT_INTERVAL = interval
        # The fake host's tools play Open WebUI's built-ins unless a test picks tool ids.
        self.pipe.valves.BUILTIN_TOOLS = True
        # The usage table ends every transcript; tests of the ledger switch it on.
        self.pipe.valves.SHOW_USAGE = False
        self.pipe.gateway_factory = lambda request: self.host
        self.pipe.clock = self.clock
        self.usage_frames: list[dict] = []  # what the last run handed the host as its usage

    async def run(
        self,
        text: str = "Hello everyone",
        *,
        chat_id: str = "chat-1",
        emitter: RecordingEmitter | None = None,
        event_call: Any = None,
        history: list[dict] | None = None,
        user_valves: Any = None,
        task: str | None = None,
        metadata: dict | None = None,
        user_id: str = "u1",
    ) -> str:
        messages = [*(history or []), {"role": "user", "content": text}]
        meta = {"chat_id": chat_id, "message_id": "msg-1", "session_id": "s1", **(metadata or {})}
        user = self.host.users[user_id]
        result = await self.pipe.pipe(
            {"model": "mmc.Conversation-pipe", "messages": messages, "stream": True},
            __user__={
                "id": user.id,
                "name": user.name,
                "role": user.role,
                "valves": user_valves or self.pipe.UserValves(),
            },
            __request__=None,
            __event_emitter__=emitter,
            __event_call__=event_call,
            __metadata__=meta,
            __task__=task,
        )
        text, self.usage_frames = await streamed_text(result)
        return text
