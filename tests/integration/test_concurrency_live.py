"""Twenty conversations of five users at once through one real Open WebUI 0.12.4.

Each user has their own socket (browser tab) and runs four chats at the same time as everyone
else, each chat with its own participants, aliases, personas and a unique marker in the user
message and the personas. The scripted backend answers with words that carry the marker it
finds in the request's system prompt, so every piece of text says which conversation it
belongs to. A pipe that shared any state between requests (a transcript, an emitter, a
config, a turn list) would put one conversation's marker into another's events, its saved
message or a model's request, and one of the checks at the end names where. (Tried on copies
of the pipe with one leak each: a shared Transcript fails the turn-by-turn check, an event
emitter kept on the Pipe the streaming check, a shared turn list the request check.)

A barrier holds every setup dialog's answer until all twenty dialogs are open, so the
conversations start together rather than one after another as the server gets to them.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass

from tests.backend import ModelScript, RecordedRequest
from tests.integration.conftest import PIPE_MODEL
from tests.integration.owui import ChatResult, Owui, SocketClient, start_chat
from tests.integration.test_pipe_live import new_user, speakers

USERS = 5
CHATS_PER_USER = 4
MODELS = ("model-a", "model-b", "model-c", "model-d", "model-e")
NAMES = ("Ada", "Bo", "Cy", "Dee", "Eli", "Fay", "Gus")
TOKENS = 60
DELAY = 0.005
MARKER = re.compile(r"mk\d{4}x")  # fixed width: no marker is part of another


def marker_of(user: int, chat: int) -> str:
    return f"mk{user:02d}{chat:02d}x"


@dataclass
class Conversation:
    """One chat's setup, and what it should end up showing."""

    user: int
    chat: int
    marker: str
    models: list[str]
    aliases: list[str]
    rounds: int
    system: str | None
    result: ChatResult | None = None

    @property
    def text(self) -> str:
        return f"Talk about topic {self.marker}, please."

    @property
    def answer(self) -> dict:
        """The setup dialog's answer for this chat."""
        return {
            "rounds": self.rounds,
            "use_manager": False,
            "manager_model": "",
            "participants": [
                {"model": m, "alias": a, "system_message": f"You are {a} ({self.marker}), #{i}."}
                for i, (m, a) in enumerate(zip(self.models, self.aliases, strict=True))
            ],
        }


def conversations() -> list[Conversation]:
    """5 users x 4 chats: 2 or 3 participants, rotating models, own aliases, 1 or 2 rounds."""
    out = []
    for user in range(USERS):
        for chat in range(CHATS_PER_USER):
            k = user * CHATS_PER_USER + chat
            count = 2 + k % 2
            models = [MODELS[(k + i) % len(MODELS)] for i in range(count)]
            aliases = [f"{NAMES[(k + 2 * i) % len(NAMES)]}{k:02d}" for i in range(count)]
            marker = marker_of(user, chat)
            system = f"This chat is {marker}." if k % 3 == 0 else None
            out.append(Conversation(user, chat, marker, models, aliases, 1 + (k % 4 != 3), system))
    return out


def marked_reply(request: RecordedRequest) -> str:
    """A reply whose every word names the conversation found in the system prompt."""
    found = MARKER.findall(str(request.messages[0].get("content"))) or ["nomarker"]
    words = [f"{found[0]}-{request.model}-{request.n}"]
    # Every 25th word names the reply again: replies share no 40-word run (an echo, cut).
    words += [f"{found[0]}w{i}" if i % 25 else words[0] for i in range(1, TOKENS)]
    return " ".join(words)


class RoutedSocket(SocketClient):
    """A tab holding several chats at once: answers each chat's setup dialog with that chat's
    own answer, found through the marker in the chat's stored user message."""

    def __init__(
        self, owui: Owui, token: str, answers: dict[str, dict], barrier: asyncio.Barrier
    ) -> None:
        super().__init__(owui.url, token, owui=owui)
        self.by_marker = answers
        self.barrier = barrier

    async def _on_call(self, payload: dict):
        chat = await self.owui.get_chat(payload["chat_id"], self.token)
        (marker,) = set(MARKER.findall(json.dumps(chat["chat"]["history"])))
        async with asyncio.timeout(120):
            await self.barrier.wait()  # every dialog is open: all twenty set off together
        self.answers["execute"] = self.by_marker[marker]  # read at once by the base class
        return await super()._on_call(payload)


def turns_of(text: str) -> list[tuple[str, str]]:
    """(alias, body) for each `### <mark> <alias>` section of a transcript."""
    parts = re.split(r"^### \S+ (.+)$", text, flags=re.MULTILINE)
    return [(alias, body.strip()) for alias, body in zip(parts[1::2], parts[2::2], strict=True)]


def is_state_of(shown: str, final: str) -> bool:
    """What a tab showed on its way to `final`: empty, a prefix, or `final` before the
    trailing whitespace the pipe strips at the end."""
    return not shown or final.startswith(shown) or shown.rstrip() == final


async def test_twenty_conversations_of_five_users_at_once(owui, backend, pipe):
    for model in MODELS:
        backend.set_script(model, ModelScript(reply=marked_reply, delay=DELAY))
    convs = conversations()

    users = list(
        await asyncio.gather(*(new_user(owui, f"User{u}", grant_pipe=False) for u in range(USERS)))
    )

    async def grant(model: str) -> None:  # one model's grants in turn: each rewrites the list
        for user in users:
            await owui.grant_model_access(model, user.id)

    await asyncio.gather(*(grant(m) for m in (PIPE_MODEL, *MODELS)))
    barrier = asyncio.Barrier(len(convs))
    sockets = [
        RoutedSocket(owui, user.token, {c.marker: c.answer for c in convs if c.user == u}, barrier)
        for u, user in enumerate(users)
    ]
    await asyncio.gather(*(s.connect() for s in sockets))
    try:

        async def converse(conv: Conversation) -> None:
            sock = sockets[conv.user]
            run = await start_chat(sock, sock.token, pipe, conv.text, system=conv.system)
            conv.result = await run.wait(timeout=180)

        await asyncio.gather(*(converse(c) for c in convs))
    finally:
        await asyncio.gather(*(s.disconnect() for s in sockets))

    requests = backend.requests
    by_marker: dict[str, list[RecordedRequest]] = {c.marker: [] for c in convs}
    for request in requests:
        # Each model request carries its own conversation and nothing of any other.
        found = set(MARKER.findall(json.dumps(request.messages)))
        assert len(found) == 1, (request.model, sorted(found))
        by_marker[found.pop()].append(request)
    assert len(requests) == sum(len(c.models) * c.rounds for c in convs)

    # They really ran at once: at some moment (nearly) all twenty were talking to the backend.
    spans = [
        (min(r.received_at for r in rs), max(r.finished_at for r in rs))
        for rs in by_marker.values()
    ]
    peak = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
    assert peak >= len(convs) * 3 // 4, peak

    for conv in convs:
        result = conv.result
        assert result is not None
        own = by_marker[conv.marker]
        # The conversation this chat was configured for, turn by turn, in order.
        assert [r.model for r in own] == conv.models * conv.rounds, conv.marker
        assert f"({conv.marker})" in own[0].messages[0]["content"]
        assert conv.text in json.dumps(own[0].messages)
        assert turns_of(result.saved) == [
            (alias, r.reply) for alias, r in zip(conv.aliases * conv.rounds, own, strict=True)
        ], conv.marker
        assert speakers(result.saved) == conv.aliases * conv.rounds
        # Saved == delivered, and every state the tab went through led there.
        assert result.saved == result.delivered, conv.marker
        shown = [e.content for e in result.content_events]
        on_the_way = [s for s in shown if s and s.rstrip() != result.saved]
        assert on_the_way, (conv.marker, "the message should stream, not arrive at once")
        bad = [s[-120:] for s in shown if not is_state_of(s, result.saved)]
        assert not bad, (conv.marker, bad[:3])
        # Not one event about this message names another conversation.
        for event in result.events:
            assert set(MARKER.findall(json.dumps(event.raw))) <= {conv.marker}, (
                conv.marker,
                event.type,
            )
        assert {e.chat_id for e in result.events} == {conv.result.chat_id}

    # No socket heard of another user's chats, and its events are all about its own chats.
    for u, sock in enumerate(sockets):
        mine = [c for c in convs if c.user == u]
        chat_ids = {c.result.chat_id for c in mine}
        assert {e.chat_id for e in sock.events} == chat_ids, u
        everything = set(MARKER.findall(json.dumps([e.raw for e in sock.events])))
        assert everything == {c.marker for c in mine}, (u, sorted(everything))
        assert len(sock.calls) == len(mine)
