"""The pipe inside a real Open WebUI 0.12.4, driven like the browser drives it.

Every test sends its messages through POST /api/chat/completions on a saved chat, answers the
configuration overlay (an `execute` event call) on the socket, and checks three things the
design promises: what the socket delivered, what the database kept, and what each model was
actually sent (the scripted backend records every request).
"""

from __future__ import annotations

import asyncio
import html
import json
import re
import sqlite3
import textwrap
import time
import uuid

import pytest

from tests.backend import ModelScript, RecordedRequest, ToolCallScript
from tests.integration.conftest import FUNCTION_ID, PIPE_MODEL, ROOT  # noqa: F401 (re-exported)
from tests.integration.owui import Owui, SocketClient, User, run_chat, start_chat

CONFIG_KEY = "multi_model_config"
# Frames the default EMIT_INTERVAL (0.033 s) lets into any 1 s window: 0, 0.033, ..., 0.99.
EMIT_RATE = 31


# The last status line of a finished run (the browser test checks the same pattern).
END_STATUS = re.compile(r"^\d+ participants?, \d+ turns?, \d+ s")


def speakers(text: str) -> list[str]:
    return re.findall(r"^### \S+ (.+)$", text, re.MULTILINE)


def overlay_answer(*models: str, rounds: int = 1, **extra) -> dict:
    """The overlay's answer: alias = the model id's last part upper-cased (model-a -> A)."""
    return {
        "rounds": rounds,
        "use_manager": False,
        "manager_model": "",
        "participants": [
            {"model": m, "alias": alias_of(m), "system_message": f"Persona {m}"} for m in models
        ],
        **extra,
    }


def alias_of(model: str) -> str:
    return model.split("-")[-1].upper()


def said_by(alias: str, text: str) -> str:
    """How a participant reads another's turn: as reported speech (the pipe's speaker_label)."""
    return f'{alias} said: "{text}"'


def text_of(content) -> str:
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def roles(request: RecordedRequest) -> list[str]:
    return [m["role"] for m in request.messages]


def assert_alternating(request: RecordedRequest) -> None:
    """One system message, then user/assistant alternating, ending on a user message."""
    got = roles(request)
    assert got[0] == "system", got
    rest = got[1:]
    assert rest and rest[0] == "user" and rest[-1] == "user", got
    assert all(a != b for a, b in zip(rest, rest[1:], strict=False)), got


def max_in_window(times: list[float], window: float = 1.0) -> int:
    """The most timestamps that fall inside any half-open window of `window` seconds."""
    times = sorted(times)
    best = start = 0
    for end, t in enumerate(times):
        while t - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


def details_tags(text: str, kind: str) -> list[str]:
    """The opening tags of `<details type="kind" ...>` blocks."""
    return re.findall(rf'<details type="{kind}"[^>]*>', text)


def script_models(backend, models, **changes) -> None:
    """Scripts each model (set_default would not reach the fixture's pre-scripted models)."""
    for model in models:
        backend.set_script(model, ModelScript(**changes))


async def new_user(owui: Owui, name: str, *models: str, grant_pipe: bool = True) -> User:
    """A role-`user` account granted `models` (and the pipe model unless told otherwise)."""
    user = await owui.add_user(
        name, f"{name.lower()}-{uuid.uuid4().hex[:8]}@example.com", "pw-1234"
    )
    for model in ((PIPE_MODEL,) if grant_pipe else ()) + models:
        await owui.grant_model_access(model, user.id)
    return user


# ==========================================================================================
# 1. Turns, history, persistence and the frame rate
# ==========================================================================================


@pytest.mark.smoke
async def test_three_participants_two_rounds(owui, backend, admin_socket: SocketClient, pipe):
    # 3 participants x 2 rounds x 150 tokens x 5 ms: a stream of several seconds, at ~200
    # tokens a second, so an uncoalesced pipe would send far more than 31 events a second.
    script_models(backend, ("model-a", "model-b", "model-c"), tokens=150, delay=0.005)
    admin_socket.answer("execute", overlay_answer("model-a", "model-b", "model-c", rounds=2))

    result = await run_chat(admin_socket, owui.admin_token, pipe, "Discuss tea.", timeout=90)

    # Speakers in order, and what the tab was last given is what the DB kept.
    assert speakers(result.saved) == ["A", "B", "C", "A", "B", "C"]
    assert result.saved == result.delivered
    # The pipe saved at turn ends (issue 28: the host's save of the returned text is the
    # final one, no save of its own at the end): each save is a state on the way there.
    saves = [e.data["content"] for e in result.events if e.type == "replace"]
    assert saves and all(result.saved.startswith(s) for s in saves)
    assert len(saves) < 6
    (call,) = result.calls
    assert call.type == "execute"

    # Each participant was sent what the design says.
    requests = backend.requests
    assert [r.model for r in requests] == ["model-a", "model-b", "model-c"] * 2
    assert all(r.stream and r.completed for r in requests)
    said = [r.reply for r in requests]
    assert all(s and s in result.saved for s in said)
    for turn, request in enumerate(requests):
        alias, others = alias_of(request.model), [a for a in "ABC" if a != alias_of(request.model)]
        system = request.messages[0]["content"]
        assert f"Persona {request.model}" in system
        assert f"You are {alias}, one participant in a group conversation with " in system
        assert ", ".join(others) in system and f"Reply only as {alias}" in system
        assert_alternating(request)
        body = [(m["role"], text_of(m["content"])) for m in request.messages[1:]]
        # Own earlier turns come back as assistant messages, exactly as said ...
        own = [said[t] for t in range(turn) if requests[t].model == request.model]
        assert [c for r, c in body if r == "assistant"] == own
        # ... and everyone else's as user messages: 'Alias said: "..."'.
        user_text = "\n\n".join(c for r, c in body if r == "user")
        for t in range(turn):
            if requests[t].model != request.model:
                assert said_by(alias_of(requests[t].model), said[t]) in user_text
        assert "Discuss tea." in user_text and "###" not in user_text
    # One exact view: A's second turn.
    assert [(m["role"], text_of(m["content"])) for m in requests[3].messages[1:]] == [
        ("user", "Discuss tea."),
        ("assistant", said[0]),
        ("user", f"{said_by('B', said[1])}\n\n{said_by('C', said[2])}"),
    ]

    # At most one content event per frame, however fast the models stream: frames are
    # chat:message:delta (the new text, shown, not stored), saves are replace (stored) about once
    # a second. The tab's copy only grew (no reasoning here): each one leads to the saved text.
    frames = [
        e for e in result.events if e.type in ("replace", "chat:message", "chat:message:delta")
    ]
    times = [e.t for e in frames if e.data.get("content")]
    assert sum(e.type == "chat:message:delta" for e in frames) > len(frames) / 2
    assert all(result.saved.startswith(e.content) for e in result.content_events)
    assert times[-1] - times[0] > 2.0, "the stream should last a few seconds"
    assert len(times) < sum(150 for _ in requests) / 4
    assert max_in_window(times) <= EMIT_RATE + 1, max_in_window(times)
    assert max_in_window(times) >= 10, "the conversation should stream, not arrive at once"
    saves = [e.t for e in frames if e.type == "replace"]
    assert max_in_window(saves) <= 2, "the chat is rewritten about once a second, not per frame"
    # One status per turn says where it is (issue 21), then the status line ends on what
    # happened.
    *turns, status = result.view.statuses
    assert [t["description"] for t in turns] == [
        f"Round {r} of 2 · {who}" for r in (1, 2) for who in "ABC"
    ]
    assert re.fullmatch(r"3 participants, 6 turns, \d+ s", status["description"]), status
    assert status["done"] is True
    assert result.saved_message["statusHistory"] == [*turns, status]


# ==========================================================================================
# 2. The manager
# ==========================================================================================


async def test_manager_picks_and_falls_back_to_round_robin(owui, backend, admin_socket, pipe):
    picks = iter(["B", "nobody in particular", "C", "I pick A.", "Speaker: c!", "x", "A"])
    backend.set_script("manager", manager_rule=lambda messages: next(picks))
    answer = overlay_answer("model-a", "model-b", "model-c", rounds=2)
    admin_socket.answer("execute", {**answer, "use_manager": True, "manager_model": "manager"})

    result = await run_chat(admin_socket, None, pipe, "Who starts?")

    # B | garbage, asked again -> C | A (a name in a sentence) | C | naming nobody: the
    # second failure of the run (issue 29.10), so round robin from here -> A (after C), B
    assert speakers(result.saved) == ["B", "C", "A", "C", "A", "B"]
    assert result.saved == result.delivered
    statuses = [s.get("description", "") for s in result.view.statuses]
    robin = [s for s in statuses if s.startswith("Manager") and "round robin" in s]
    assert robin == [
        "Manager named no participant (last: 'x'); round robin from here (A next).",
    ], statuses
    assert "Turn 6 of 6 · B (round robin)" in statuses
    assert "Manager picked B." in statuses and "Manager picked C." in statuses
    # The fallback's message does not stay under the model name: the run's summary ends it.
    assert END_STATUS.match(statuses[-1]) and statuses[-1].startswith("3 participants, 6 turns,")
    assert result.saved_message["statusHistory"][-1]["description"] == statuses[-1]

    managed = backend.requests_for("manager")
    assert len(managed) == 6 and not any(r.stream for r in managed)  # none after the 2nd failure
    firsts = [r for r in managed if len(r.messages) == 2]  # the first ask of each pick
    last = ["None", "B", "C", "A", "C"]
    for request, last_speaker in zip(firsts, last, strict=True):
        prompt = text_of(request.messages[-1]["content"])
        assert "Choose exactly one of: A, B, C" in prompt
        if last_speaker == "None":  # the first pick says so in words (issue 18), not 'None'
            assert "Nobody has spoken yet." in prompt and "'None'" not in prompt
        else:
            assert f"The last speaker was '{last_speaker}'" in prompt
        assert request.tools is None  # the manager only picks; it is offered no tools
    # The manager sees the conversation so far.
    first_b = backend.requests_for("model-b")[0].reply
    assert f"B: {first_b}" in text_of(managed[1].messages[1]["content"])
    # Participants were only asked for their own turns.
    assert [r.model for r in backend.requests if r.model != "manager"] == [
        "model-b",
        "model-c",
        "model-a",
        "model-c",
        "model-a",
        "model-b",
    ]


# ==========================================================================================
# 3. Reasoning
# ==========================================================================================


@pytest.mark.smoke
async def test_reasoning_deltas_and_think_tags_become_closed_blocks(
    owui, backend, admin_socket, pipe
):
    backend.set_script("model-a", reasoning_tokens=12, delay=0.02, tokens=10)
    backend.set_script("model-b", reasoning_tokens=12, think_tags=True, delay=0.02, tokens=10)
    admin_socket.answer("execute", overlay_answer("model-a", "model-b"))

    result = await run_chat(admin_socket, None, pipe, "Think first.")

    saved = result.saved
    assert speakers(saved) == ["A", "B"]
    assert result.saved == result.delivered
    blocks = re.findall(r'<details type="reasoning"[^>]*>.*?</details>', saved, re.DOTALL)
    assert len(blocks) == 2, saved
    assert all('done="true"' in b for b in blocks)
    assert "think1-model-a" in blocks[0] and "think12-model-a" in blocks[0]
    assert "think1-model-b" in blocks[1] and "think12-model-b" in blocks[1]
    assert 'done="false"' not in saved
    assert "<think>" not in saved and "</think>" not in saved
    outside = re.sub(r"<details.*?</details>", "", saved, flags=re.DOTALL)
    assert "think" not in outside
    # Each block sits under its speaker, before that speaker's reply.
    a_reply, b_reply = (r.reply for r in backend.requests)
    b_text = b_reply.split("</think>")[-1]
    assert saved.index(blocks[0]) < saved.index(a_reply) < saved.index("### 🔵 B")
    assert saved.index("### 🔵 B") < saved.index(blocks[1]) < saved.index(b_text)
    # The block streamed open before it closed.
    assert any('<details type="reasoning" done="false"' in e.content for e in result.content_events)
    # B is not shown A's reasoning.
    b_request = backend.requests_for("model-b")[0]
    assert "think" not in json.dumps(b_request.messages[1:])


async def test_reasoning_that_writes_a_closing_details_tag_stays_in_its_block(
    owui, backend, admin_socket, pipe
):
    """`</det` + `ails>` across two deltas, or `</DETAILS>`: the block still ends only at ours."""
    pieces = ("I plan </det", "ails> leak-one ", "then </DETAILS> leak-two ", "and done")
    backend.set_script("model-a", reasoning_pieces=pieces, tokens=6)
    admin_socket.answer("execute", overlay_answer("model-a", "model-b"))

    first = await run_chat(admin_socket, None, pipe, "Think it over.")

    saved = first.saved
    assert speakers(saved) == ["A", "B"] and saved == first.delivered
    block_re = re.compile(r'<details type="reasoning".*?</details>', re.DOTALL | re.IGNORECASE)
    (block,) = block_re.findall(saved)
    assert "leak-one" in block and "leak-two" in block and "and done" in block
    assert "leak" not in block_re.sub("", saved)
    # The next message's history hands nobody the reasoning as A's words.
    backend.reset()
    await run_chat(admin_socket, None, pipe, "Go on.", chat_id=first.chat_id)
    sent = json.dumps([r.messages for r in backend.requests])
    assert len(backend.requests) == 2 and "leak" not in sent and "I plan" not in sent


# ==========================================================================================
# 4. Tools
# ==========================================================================================

PROBE_TOOL = textwrap.dedent(
    '''
    """
    title: MMC Probe
    description: Returns a known string for the integration tests.
    """


    class Tools:
        def __init__(self):
            pass

        def lookup_secret(self, word: str) -> str:
            """
            Look up the secret that belongs to a word.
            :param word: the word to look up
            """
            return f"SECRET-{word}-7319"
    '''
)


@pytest.mark.smoke
async def test_tool_call_runs_and_shows_as_a_tool_block(owui, backend, admin_socket, pipe):
    tool = await owui.create_tool("mmc_probe", PROBE_TOOL)
    assert tool["id"] == "mmc_probe"
    await owui.set_model_params("model-a", params={"function_calling": "native"})
    backend.set_script(
        "model-a", tool_call=ToolCallScript(name="lookup_secret", arguments='{"word": "tea"}')
    )
    admin_socket.answer("execute", overlay_answer("model-a", "model-b"))

    result = await run_chat(admin_socket, None, pipe, "Use the tool.", tool_ids=["mmc_probe"])

    saved = result.saved
    assert speakers(saved) == ["A", "B"]
    assert result.saved == result.delivered
    (tag,) = details_tags(saved, "tool_calls")
    assert 'done="true"' in tag and 'name="lookup_secret"' in tag
    attrs = dict(re.findall(r'(\w+)="([^"]*)"', tag))
    assert json.loads(html.unescape(attrs["arguments"])) == {"word": "tea"}
    assert "SECRET-tea-7319" in json.loads(html.unescape(attrs["result"]))
    assert 'done="false"' not in saved  # the "Executing..." block is gone
    # The block sits in A's turn, before A's final answer.
    first, follow_up = backend.requests_for("model-a")
    assert saved.index(tag) < saved.index(follow_up.reply) < saved.index("### 🔵 B")

    # The tool was offered, called, and its result went back to the model.
    assert "lookup_secret" in [t["function"]["name"] for t in first.tools or []]
    assert first.tool_call_sent
    calls = [m for m in follow_up.messages if m.get("tool_calls")]
    assert calls and calls[-1]["tool_calls"][0]["function"]["name"] == "lookup_secret"
    (tool_message,) = [m for m in follow_up.messages if m["role"] == "tool"]
    assert "SECRET-tea-7319" in text_of(tool_message["content"])
    assert tool_message["tool_call_id"] == calls[-1]["tool_calls"][0]["id"]
    # B sees A's answer, not the tool block or its result.
    (b_request,) = backend.requests_for("model-b")
    b_view = json.dumps(b_request.messages[1:])
    assert follow_up.reply in b_view and "SECRET" not in b_view and "<details" not in b_view


# ==========================================================================================
# 5. The chat remembers its setup: later messages, a restart, the browser's save
# ==========================================================================================


async def test_saved_config_survives_messages_restart_and_browser_save(
    owui, backend, admin_socket, pipe
):
    config = overlay_answer("model-a", "model-b")
    admin_socket.answer("execute", config)
    first = await run_chat(admin_socket, None, pipe, "Discuss coffee.")
    assert speakers(first.saved) == ["A", "B"] and len(first.calls) == 1
    a1, b1 = (r.reply for r in backend.requests)

    row = await owui.get_chat(first.chat_id)
    assert row["meta"][CONFIG_KEY] == config

    # From now on the overlay would pick other models: being asked again would show.
    trap = overlay_answer("model-c", "model-d")
    admin_socket.answer("execute", trap)
    second = await run_chat(admin_socket, None, pipe, "Go on.", chat_id=first.chat_id)
    assert second.calls == []
    assert speakers(second.saved) == ["A", "B"] and second.saved == second.delivered
    a_view = backend.requests[2]
    assert a_view.model == "model-a"
    assert [(m["role"], text_of(m["content"])) for m in a_view.messages[1:]] == [
        ("user", "Discuss coffee."),
        ("assistant", a1),
        ("user", f"{said_by('B', b1)}\n\n{said_by('Admin', 'Go on.')}"),
    ]
    b_view = backend.requests[3]
    assert [(m["role"], text_of(m["content"])) for m in b_view.messages[1:]] == [
        ("user", f"Discuss coffee.\n\n{said_by('A', a1)}"),
        ("assistant", b1),
        ("user", f"Go on.\n\n{said_by('A', a_view.reply)}"),
    ]

    await asyncio.to_thread(owui.restart)
    sock = await owui.connect()
    try:
        sock.answer("execute", trap)
        third = await run_chat(sock, None, pipe, "After the restart.", chat_id=first.chat_id)
        assert third.calls == []
        assert speakers(third.saved) == ["A", "B"] and third.saved == third.delivered
        assert [r.model for r in backend.requests[4:]] == ["model-a", "model-b"]
        assert third.saved == third.delivered

        # The browser's full-chat save rewrites the chat JSON; the setup is in meta.
        await owui.browser_save(first.chat_id)
        row = await owui.get_chat(first.chat_id)
        assert row["meta"][CONFIG_KEY] == config
        fourth = await run_chat(sock, None, pipe, "After the save.", chat_id=first.chat_id)
        assert fourth.calls == [] and speakers(fourth.saved) == ["A", "B"]
        assert [r.model for r in backend.requests[6:]] == ["model-a", "model-b"]
        # Every earlier turn of A is still A's own assistant message.
        a_last = backend.requests[6]
        own = [backend.requests[i].reply for i in (0, 2, 4)]
        assert [text_of(m["content"]) for m in a_last.messages if m["role"] == "assistant"] == own
    finally:
        await sock.disconnect()
    assert not sock.calls


# ==========================================================================================
# 6. Stop
# ==========================================================================================


@pytest.mark.smoke
async def test_stop_keeps_what_was_shown_and_ends_everything(owui, backend, admin_socket, pipe):
    backend.set_script("model-a", tokens=400, delay=0.02)
    admin_socket.answer("execute", overlay_answer("model-a", "model-b", rounds=2))
    run = await start_chat(admin_socket, None, pipe, "Talk a lot.")
    mid = run.assistant_message_id
    await admin_socket.wait_for(
        lambda e: (
            e.message_id == mid
            and e.type in ("replace", "chat:message", "chat:message:delta")
            and "w20 " in (e.data or {}).get("content", "")
        ),
        timeout=30,
        start=run.first_event_index,
    )

    stop_at = time.monotonic()
    await owui.stop(run.chat_id)
    stopped = await run.wait(30)

    assert stopped.saved == stopped.delivered, (stopped.saved[-200:], stopped.delivered[-200:])
    assert stopped.saved.startswith("### 🔴 A\n\nmodel-a#1 w1 w2")
    assert speakers(stopped.saved) == ["A"]
    assert "w399" not in stopped.saved
    # The cut turn says it was stopped, and so does the last status, in the tab and the DB.
    assert stopped.saved.endswith("\n\n*⏹️ …(stopped)*"), stopped.saved[-100:]
    last = stopped.view.statuses[-1]
    assert re.fullmatch(r"2 participants, 1 turn, \d+ s · stopped", last["description"]), last
    assert last["done"] is True
    assert stopped.saved_message["statusHistory"][-1] == last

    # Nothing more arrives for that message once the stop settled ...
    settled = len(admin_socket.events_for(mid))
    await asyncio.sleep(2)
    late = admin_socket.events_for(mid)[settled:]
    assert [e.type for e in late] == []
    # ... and no model was called after the stop.
    assert [r.model for r in backend.requests] == ["model-a"]
    assert not any(r.received_at > stop_at for r in backend.requests)
    assert not backend.requests[0].completed
    row = await owui.get_chat(run.chat_id)
    assert row["chat"]["history"]["messages"][mid]["content"] == stopped.saved


# ==========================================================================================
# 7. Access: a user cannot reach a model through the pipe that they could not use directly
# ==========================================================================================


@pytest.mark.smoke
async def test_user_without_access_to_a_participant_is_refused(owui, backend, pipe):
    user = await new_user(owui, "Mallory", grant_pipe=False)
    # A pipe's model has no model entry of its own: like a connection model it is admin-only
    # until a user is granted it (the function itself being active is not enough).
    assert PIPE_MODEL not in await owui.models(user.token)
    for model in (PIPE_MODEL, "model-a"):
        await owui.grant_model_access(model, user.id)
    visible = await owui.models(user.token)
    assert PIPE_MODEL in visible and "model-a" in visible and "model-b" not in visible
    sock = await owui.connect(user.token)
    try:
        sock.answer("execute", overlay_answer("model-a", "model-b"))
        result = await run_chat(sock, user.token, pipe, "Let me in.")
    finally:
        await sock.disconnect()

    assert "You do not have access to 'model-b'" in result.saved
    assert "'model-a'" not in result.saved
    assert result.saved == result.delivered and speakers(result.saved) == []
    assert backend.requests == []  # neither model was called, nor the manager, nor a task
    assert CONFIG_KEY not in (await owui.get_chat(result.chat_id, user.token))["meta"]


async def test_a_failing_access_check_says_what_failed_and_is_logged_once(owui, backend, pipe):
    """A database error inside the host's access check is not a refusal."""
    user = await new_user(owui, "Dora", "model-a", "model-b")
    db_path = owui.server.data_dir / "webui.db"

    def rename(old: str, new: str) -> None:
        conn = sqlite3.connect(db_path, timeout=30)
        try:
            conn.execute(f"ALTER TABLE {old} RENAME TO {new}")
            conn.commit()
        finally:
            conn.close()

    def break_then_answer(_data) -> dict:
        # After the host let the user reach the pipe, before the pipe checks the participants.
        rename("group_member", "group_member_away")
        return overlay_answer("model-a", "model-b")

    log_start = owui.server.log_path.stat().st_size
    sock = await owui.connect(user.token)
    try:
        sock.answer("execute", break_then_answer)
        result = await run_chat(sock, user.token, pipe, "Check me.")
    finally:
        if sock.calls:
            rename("group_member_away", "group_member")
        await sock.disconnect()

    assert result.saved == result.delivered and speakers(result.saved) == []
    assert "You do not have access" not in result.saved
    assert "Could not check your access to 'model-" in result.saved
    assert "no such table" in result.saved and "group\\_member" in result.saved  # md-escaped
    assert backend.requests == []
    with open(owui.server.log_path, "rb") as log:
        log.seek(log_start)
        written = log.read().decode(errors="replace")
    assert written.count("could not check access to 'model-") == 1, written[-3000:]


# ==========================================================================================
# 8. Two users at once
# ==========================================================================================


async def test_two_users_at_once_see_only_their_own_conversation(owui, backend, admin_socket, pipe):
    script_models(backend, ("model-a", "model-b", "model-c", "model-d"), tokens=40, delay=0.01)
    user = await new_user(owui, "Carol", "model-c", "model-d")
    admin_socket.answer("execute", overlay_answer("model-a", "model-b", rounds=2))
    sock = await owui.connect(user.token)
    try:
        sock.answer("execute", overlay_answer("model-c", "model-d", rounds=2))
        mine, theirs = await asyncio.gather(
            run_chat(admin_socket, None, pipe, "Admin's topic."),
            run_chat(sock, user.token, pipe, "Carol's topic."),
        )
    finally:
        await sock.disconnect()

    # The two conversations really ran at the same time.
    admin_reqs = [r for r in backend.requests if r.model in ("model-a", "model-b")]
    user_reqs = [r for r in backend.requests if r.model in ("model-c", "model-d")]
    assert len(admin_reqs) == len(user_reqs) == 4
    assert admin_reqs[0].received_at < user_reqs[-1].received_at
    assert user_reqs[0].received_at < admin_reqs[-1].received_at

    for result, client, own, foreign, topic in (
        (mine, admin_socket, ("model-a#", "model-b#"), ("model-c#", "model-d#"), "Admin's"),
        (theirs, sock, ("model-c#", "model-d#"), ("model-a#", "model-b#"), "Carol's"),
    ):
        assert speakers(result.saved) == [alias_of(m.rstrip("#")) for m in own] * 2
        assert result.saved == result.delivered
        assert all(o in result.saved for o in own)
        assert not any(f in result.saved for f in foreign)
        everything = json.dumps([e.raw for e in client.events])
        assert all(o in everything for o in own)
        assert not any(f in everything for f in foreign)
        # Each participant was told only its own user's conversation.
        for request in admin_reqs if topic == "Admin's" else user_reqs:
            view = json.dumps(request.messages)
            assert topic in view and not any(f in view for f in foreign)


# ==========================================================================================
# 9. "Use defaults" takes the user valves
# ==========================================================================================


@pytest.mark.smoke
async def test_use_defaults_answer_falls_back_to_user_valves(owui, backend, admin_socket, pipe):
    valves = {
        "NUM_PARTICIPANTS": 2,
        "ROUNDS_PER_CONVERSATION": 1,
        "Participant1Model": "model-e",
        "Participant1Alias": "Eve",
        "Participant1SystemMessage": "You are sceptical.",
        "Participant2Model": "model-c",
        "Participant2Alias": "Carl",
        "Participant2SystemMessage": "You are hopeful.",
    }
    await owui.set_user_valves(FUNCTION_ID, valves)
    admin_socket.answer("execute", None)  # the dialog's "Use defaults" button

    result = await run_chat(admin_socket, None, pipe, "Defaults, please.")

    (call,) = result.calls
    assert call.answer is None
    # The dialog was offered the valves as its defaults.
    assert '"model": "model-e", "alias": "Eve"' in call.data["code"]
    assert speakers(result.saved) == ["Eve", "Carl"]
    assert result.saved == result.delivered
    eve, carl = backend.requests
    assert (eve.model, carl.model) == ("model-e", "model-c")
    assert "You are sceptical." in eve.messages[0]["content"]
    assert "You are Eve, one participant" in eve.messages[0]["content"]
    assert "You are hopeful." in carl.messages[0]["content"]
    meta = (await owui.get_chat(result.chat_id))["meta"]
    assert [p["model"] for p in meta[CONFIG_KEY]["participants"]] == ["model-e", "model-c"]


# ==========================================================================================
# The returned transcript is appended to what the tab shows: the pipe empties it first
# ==========================================================================================


async def test_tab_never_shows_the_conversation_twice(owui, backend, admin_socket, pipe):
    """Open WebUI appends the returned text (one delta) to what the tab shows; the pipe empties
    the tab's copy just before, so the text shows once and the store never holds less."""
    admin_socket.answer("execute", overlay_answer("model-a", "model-b"))

    result = await run_chat(admin_socket, None, pipe, "Once, please.")

    assert result.saved == result.delivered and speakers(result.saved) == ["A", "B"]
    shown = [e.content for e in result.content_events]
    assert not [c for c in shown if c.count("### 🔴 A") > 1], "the tab showed it twice"
    first = next(i for i, c in enumerate(shown) if c)
    blanks = [i for i, c in enumerate(shown) if i > first and not c]
    assert len(blanks) == 1 and shown[blanks[0] + 1] == result.saved, (
        "the only empty state is the instant before the final text"
    )


# ==========================================================================================
# Background tasks (title, tags, follow-ups)
# ==========================================================================================


async def test_a_title_task_never_reaches_a_model_the_user_may_not_use(owui, backend, pipe):
    """The background task calls its model with bypass_filter=True: the pipe's check is the gate."""
    user = await new_user(owui, "Tess", "model-a")

    async def title_with(participant: str) -> dict:
        await owui.set_user_valves(
            FUNCTION_ID, {"NUM_PARTICIPANTS": 1, "Participant1Model": participant}, user.token
        )
        return await owui.request(
            "POST",
            "/api/v1/tasks/title/completions",
            token=user.token,
            json_body={"model": PIPE_MODEL, "messages": [{"role": "user", "content": "Tea?"}]},
        )

    # A title task's answer reaches the host only as the JSON it asks for.
    backend.set_script("model-a", reply='{{"title": "Tea Time"}}')
    allowed = await title_with("model-a")
    (request,) = backend.requests
    assert request.model == "model-a" and not request.stream
    assert "Tea Time" in json.dumps(allowed)

    backend.reset()
    refused = await title_with("model-b")
    assert backend.requests == [], "the task reached a model the user was not granted"
    assert "model-b#" not in json.dumps(refused)


# ==========================================================================================
# 10. The valves as Open WebUI's valves form gets them
# ==========================================================================================


async def test_valves_specs_carry_titles_descriptions_and_select_choices(owui, pipe):
    """The form labels a field with its `title`, shows `description` under it and makes a
    field with an `enum` a <select> (Open WebUI 0.12.4's common/Valves.svelte)."""
    base = f"/api/v1/functions/id/{FUNCTION_ID}/valves"
    admin = (await owui.request("GET", f"{base}/spec"))["properties"]
    user = (await owui.request("GET", f"{base}/user/spec"))["properties"]

    for name, spec in {**admin, **user}.items():
        assert spec.get("title") and spec.get("description"), name
        assert not re.search(r"[a-z][A-Z]|_", spec["title"]), (name, spec["title"])
    assert user["Participant1SystemMessage"]["title"] == "Participant 1: persona"
    assert user["AllParticipantsApendedMessage"]["title"] == "Shared instruction"
    # "Use a manager" overlapped "Who speaks next" and is gone (issue 19); old values still load.
    assert "UseGroupChatManager" not in user and user["Selection"]["title"] == "Who speaks next"
    assert admin["EMIT_INTERVAL"]["title"] == "Screen update interval (s)"
    assert admin["EMIT_INTERVAL"]["default"] == 0.033
    assert "rewrites the whole chat" not in admin["EMIT_INTERVAL"]["description"].split("0:")[0]
    assert user["Selection"]["enum"] == [
        "",
        "round_robin",
        "manager",
        "random",
        "mention",
        "council",
    ]
    presets = ["", "debate", "brainstorm", "review_panel", "interview", "council"]  # issue 21
    assert user["Preset"]["enum"] == presets
    assert user["NUM_PARTICIPANTS"]["enum"] == [1, 2, 3, 4, 5]


async def test_the_functions_editors_formatter_returns_the_file_unchanged(owui):
    """Open WebUI's Functions editor sends the code to /api/v1/utils/code/format (the host's
    black, 88 columns) before it saves: what an admin saves is the released file (issue 30)."""
    source = (ROOT / "multi_model_conversation.py").read_text(encoding="utf-8")
    answer = await owui.request("POST", "/api/v1/utils/code/format", json_body={"code": source})
    assert answer["code"] == source


async def test_user_valves_saved_in_the_old_spelling_load_and_run(
    owui, backend, admin_socket, pipe
):
    """The host drops all of a user's valves when one fails to validate; none may."""
    saved = await owui.set_user_valves(
        FUNCTION_ID,
        {
            "NUM_PARTICIPANTS": "2",
            "ROUNDS_PER_CONVERSATION": 1,
            "Participant1Model": "model-a",
            "Participant2Model": "model-b",
            "Participant2Alias": "Bea",
            "Selection": "Round Robin",
        },
    )
    assert (saved["NUM_PARTICIPANTS"], saved["Selection"]) == (2, "round_robin")
    admin_socket.answer("execute", None)  # "Use defaults": the user valves

    result = await run_chat(admin_socket, None, pipe, "Valves, please.")

    assert speakers(result.saved)[1:] == ["Bea"]
    assert [r.model for r in backend.requests] == ["model-a", "model-b"]
    await owui.set_user_valves(FUNCTION_ID, {}, merge=False)
