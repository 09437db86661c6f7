"""Faults in a real Open WebUI 0.12.4: broken backends, a vanished tab, failing tools, a
failing manager and Stop at awkward moments. Each test checks the saved message.

The scripted backend plays the broken model (HTTP 500, a dropped connection, a stall, frames
that are not JSON); tools are real workspace tools that raise, hang or return 1 MB.
"""

from __future__ import annotations

import asyncio
import html
import json
import re
import textwrap
import time
from pathlib import Path

import pytest_asyncio

from tests.backend import ToolCallScript, default_reply
from tests.integration.owui import Owui, SocketEvent, run_chat, start_chat
from tests.integration.test_pipe_live import (
    details_tags,
    overlay_answer,
    said_by,
    speakers,
    text_of,
)

NOTICE = "*⚠️ "


def sections(text: str) -> list[str]:
    """Each turn's text, in the order of `speakers(text)`."""
    return [s.strip() for s in re.split(r"^### \S+ .+$", text, flags=re.MULTILINE)[1:]]


def turns_of(text: str) -> dict[str, str]:
    return dict(zip(speakers(text), sections(text), strict=True))


def first_line(text: str) -> str:
    return text.split("\n", 1)[0].strip()


def words(model: str, n: int, count: int) -> str:
    """The first `count` words of the backend's default reply."""
    return default_reply(model, n, count)


async def until(condition, timeout: float, every: float = 0.05) -> bool:
    """Polls `condition` (sync or async) until it holds or `timeout` s pass; its last value."""
    deadline = time.monotonic() + timeout
    while True:
        held = condition()
        held = await held if asyncio.iscoroutine(held) else held
        if held or time.monotonic() > deadline:
            return bool(held)
        await asyncio.sleep(every)


async def wait_saved(owui: Owui, chat_id: str, message_id: str, timeout: float = 60) -> dict:
    """Polls the DB until the host marked the assistant message done."""
    message: dict = {}

    async def done() -> bool:
        nonlocal message
        row = await owui.get_chat(chat_id)
        message = row["chat"]["history"]["messages"].get(message_id) or {}
        return bool(message.get("done"))

    if not await until(done, timeout, every=0.25):
        raise TimeoutError(f"message not done in {timeout}s: {message.get('content')!r:.300}")
    return message


# ==========================================================================================
# 1. Broken backends
# ==========================================================================================

GARBAGE = (b"data: {not json\n\n", b"data: \xff\xfe\x00 garbage\n\n", b"data: [1, 2]\n\n")


async def test_broken_backends_show_what_arrived_and_a_clear_line(
    owui, backend, admin_socket, pipe, valves
):
    await valves(TURN_TIMEOUT=2)
    backend.set_script("model-a", http_error=500)
    backend.set_script("model-b", tokens=20, cut_after=5)
    backend.set_script("model-c", tokens=20, stall_after=4)
    backend.set_script("model-d", tokens=12, malformed_frames=GARBAGE)
    backend.set_script("model-e", tokens=8)
    models = ("model-a", "model-b", "model-c", "model-d", "model-e")
    admin_socket.answer("execute", overlay_answer(*models))

    result = await run_chat(admin_socket, None, pipe, "Carry on whatever happens.", timeout=90)

    saved = result.saved
    assert speakers(saved) == ["A", "B", "C", "D", "E"], saved
    assert saved == result.delivered
    turn = turns_of(saved)
    # HTTP 500: one plain retry (also 500), then one line naming the error.
    assert turn["A"] == f"{NOTICE}A could not answer: HTTP 500\\: scripted error for model-a*"
    assert [r.stream for r in backend.requests_for("model-a")] == [True, False]
    # A cut connection: the five words that arrived, then the line; no retry.
    assert first_line(turn["B"]) == words("model-b", 1, 5) and "w5" not in turn["B"]
    assert f"{NOTICE}B could not answer: the stream broke off (" in turn["B"]
    assert len(backend.requests_for("model-b")) == 1
    # A stall past TURN_TIMEOUT: the four words, then the line.
    assert first_line(turn["C"]) == words("model-c", 1, 4) and "w4" not in turn["C"]
    assert turn["C"].endswith(f"{NOTICE}C could not answer: the model sent nothing for 2 s*")
    assert backend.requests_for("model-c")[0].stalled
    # Unreadable frames are skipped and counted; the readable text is all there.
    assert first_line(turn["D"]) == words("model-d", 1, 12)
    assert "3 unreadable stream frame(s)" in turn["D"]
    # The conversation went on, and E was sent what the others showed, without the lines.
    assert turn["E"] == words("model-e", 1, 8)
    (e_request,) = backend.requests_for("model-e")
    e_view = text_of(e_request.messages[-1]["content"])
    for alias, text in (("B", 5), ("C", 4), ("D", 12)):
        model = f"model-{alias.lower()}"
        assert said_by(alias, words(model, 1, text)) in e_view
    assert "⚠️" not in e_view and "A said" not in e_view


# ==========================================================================================
# 2. The tab goes away mid-conversation
# ==========================================================================================


async def test_closing_the_tab_midway_still_saves_the_whole_conversation(
    owui, backend, admin_socket, pipe
):
    backend.set_script("model-a", tokens=120, delay=0.01)
    backend.set_script("model-b", tokens=120, delay=0.01)
    admin_socket.answer("execute", overlay_answer("model-a", "model-b", rounds=2))
    run = await start_chat(admin_socket, None, pipe, "Talk while I leave.")
    mid = run.assistant_message_id
    await admin_socket.wait_for(
        lambda e: e.message_id == mid and " w10 " in str((e.data or {}).get("content", "")),
        timeout=30,
        start=run.first_event_index,
    )
    await admin_socket.disconnect()  # the socket is gone: events now reach nobody
    shown_before_leaving = len(admin_socket.events_for(mid))

    saved = await wait_saved(owui, run.chat_id, mid, timeout=90)

    content = saved["content"]
    assert speakers(content) == ["A", "B", "A", "B"]
    replies = [r.reply for r in backend.requests]
    assert len(replies) == 4 and all(r.completed for r in backend.requests)
    assert all(reply in content for reply in replies)
    assert len(admin_socket.events_for(mid)) == shown_before_leaving


# ==========================================================================================
# 3. Tools that fail
# ==========================================================================================

FAULTY_TOOLS = textwrap.dedent(
    '''
    """
    title: MMC Faulty Tools
    description: Tools that fail in every way, for the fault tests.
    """
    import asyncio
    import time
    from pathlib import Path

    MARKS = Path(__MARKS__)


    class Tools:
        def __init__(self):
            pass

        def boom(self) -> str:
            """
            Always fails.
            """
            raise RuntimeError("kaput-4471")

        async def hang(self) -> str:
            """
            Never returns.
            """
            (MARKS / "hang-started").write_text("1")
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                (MARKS / "hang-cancelled").write_text("1")
                raise
            return "never"

        def nap(self) -> str:
            """
            Synchronous and slow: blocks for 6 s.
            """
            (MARKS / "nap-started").write_text("1")
            time.sleep(6)
            (MARKS / "nap-finished").write_text("1")
            return "NAP-DONE"

        def huge(self) -> str:
            """
            Returns a megabyte.
            """
            return "START" + "x" * 1_000_000 + "END"

        def echo(self, text: str) -> str:
            """
            Echoes its text.
            :param text: what to echo
            """
            return f"ECHO-{text}"
    '''
)


@pytest_asyncio.fixture
async def faulty_tools(owui: Owui, tmp_path: Path) -> Path:
    """Installs the tools (native function calling for the models that call them)."""
    source = FAULTY_TOOLS.replace("__MARKS__", repr(str(tmp_path)))
    await owui.create_tool("mmc_faulty", source)
    for model in ("model-a", "model-b", "model-c", "model-d"):
        await owui.set_model_params(model, params={"function_calling": "native"})
    return tmp_path


def tool_result(saved: str, name: str) -> str:
    (tag,) = [t for t in details_tags(saved, "tool_calls") if f'name="{name}"' in t]
    assert 'done="true"' in tag
    attrs = dict(re.findall(r'(\w+)="([^"]*)"', tag))
    return json.loads(html.unescape(attrs["result"]))


def tool_message(request) -> str:
    (message,) = [m for m in request.messages if m["role"] == "tool"]
    return text_of(message["content"])


async def test_failing_tools_answer_the_model_and_the_conversation_goes_on(
    owui, backend, admin_socket, pipe, valves, faulty_tools
):
    await valves(TOOL_TIMEOUT=2)
    backend.set_script("model-a", tool_call=ToolCallScript(name="boom"))
    backend.set_script("model-b", tool_call=ToolCallScript(name="hang"))
    backend.set_script("model-c", tool_call=ToolCallScript(name="huge"))
    backend.set_script("model-d", tool_call=ToolCallScript(name="echo", arguments="{not json"))
    models = ("model-a", "model-b", "model-c", "model-d", "model-e")
    admin_socket.answer("execute", overlay_answer(*models))

    result = await run_chat(
        admin_socket, None, pipe, "Use your tools.", tool_ids=["mmc_faulty"], timeout=90
    )

    saved = result.saved
    assert speakers(saved) == ["A", "B", "C", "D", "E"] and saved == result.delivered
    assert 'done="false"' not in saved
    follow_up = {m: backend.requests_for(m)[-1] for m in models[:4]}
    assert all(len(backend.requests_for(m)) == 2 for m in models[:4])
    assert all(r.reply and r.reply in saved for r in follow_up.values())
    # A tool that raises: its error goes to the model and shows in the block.
    assert "kaput-4471" in tool_result(saved, "boom")
    assert "kaput-4471" in tool_message(follow_up["model-a"])
    # A tool that hangs is cancelled after TOOL_TIMEOUT.
    assert "did not finish within 2 s" in tool_result(saved, "hang")
    assert "did not finish within 2 s" in tool_message(follow_up["model-b"])
    assert (faulty_tools / "hang-cancelled").exists()
    # 1 MB: the model gets the first 100,000 characters, the block a fifth of that.
    sent = tool_message(follow_up["model-c"])
    assert sent.startswith("STARTxxx") and "END" not in sent and len(sent) < 100_100
    shown = tool_result(saved, "huge")
    assert shown.startswith("STARTxxx") and len(shown) < 20_100
    assert len(saved.encode()) < 200_000
    # Arguments that are not JSON: no tool runs; the model is told why and answers.
    assert "not valid JSON" in tool_message(follow_up["model-d"])
    assert 'name="echo"' not in saved and "ECHO-" not in saved


async def test_a_model_that_keeps_calling_tools_stops_after_max_tool_rounds(
    owui, backend, admin_socket, pipe, valves, faulty_tools
):
    await valves(MAX_TOOL_ROUNDS=2)
    backend.set_script(
        "model-a",
        tool_call=ToolCallScript(name="echo", arguments='{"text": "again"}'),
        tool_calls_in_a_row=8,  # whether tools are offered or not
    )
    admin_socket.answer("execute", overlay_answer("model-a", "model-b"))

    result = await run_chat(admin_socket, None, pipe, "Loop.", tool_ids=["mmc_faulty"])

    saved = result.saved
    assert speakers(saved) == ["A", "B"] and saved == result.delivered
    a_requests = backend.requests_for("model-a")
    # Two rounds run, then one request without tools, whose calls are not run.
    assert [bool(r.tools) for r in a_requests] == [True, True, False]
    assert all(r.tool_call_sent for r in a_requests)
    tags = [t for t in details_tags(saved, "tool_calls") if 'name="echo"' in t]
    assert len(tags) == 2 and all('done="true"' in t for t in tags)
    assert 'done="false"' not in saved
    a_turn = turns_of(saved)["A"]
    assert f"{NOTICE}A still asked for tools after 2 tool rounds" in a_turn
    assert len(backend.requests_for("model-b")) == 1


# ==========================================================================================
# 4. The manager fails
# ==========================================================================================


async def test_a_failing_or_slow_manager_hands_each_turn_to_round_robin(
    owui, backend, admin_socket, pipe, valves
):
    await valves(MANAGER_TIMEOUT=1)
    backend.set_script("manager", http_error=500)
    answer = overlay_answer("model-a", "model-b", "model-c", rounds=1)
    admin_socket.answer("execute", {**answer, "use_manager": True, "manager_model": "manager"})

    failed = await run_chat(admin_socket, None, pipe, "Who starts?")

    assert speakers(failed.saved) == ["A", "B", "C"] and failed.saved == failed.delivered
    statuses = [s.get("description", "") for s in failed.view.statuses]
    robin = [s for s in statuses if s.startswith("Manager")]
    # Two failures in a run and it is not asked again (issue 29.10): the order picks.
    assert len(robin) == 2 and all(s.startswith("Manager failed (") for s in robin), statuses
    assert robin[-1].endswith("round robin from here (B next)."), robin
    assert len(backend.requests_for("manager")) == 2

    backend.reset()
    backend.set_script("manager", answer_delay=30, manager_rule=lambda messages: "C")
    slow = await run_chat(admin_socket, None, pipe, "Again.", chat_id=failed.chat_id)

    assert speakers(slow.saved) == ["A", "B", "C"] and slow.saved == slow.delivered
    statuses = [s.get("description", "") for s in slow.view.statuses]
    assert statuses.count("Manager took too long; A speaks next (round robin).") == 1, statuses
    assert len([s for s in statuses if s.startswith("Manager took too long")]) == 2
    assert [r.model for r in backend.requests if r.model != "manager"] == [
        "model-a",
        "model-b",
        "model-c",
    ]


# ==========================================================================================
# 5. Stop at awkward moments
# ==========================================================================================


async def stop_and_check(owui: Owui, backend, admin_socket, run, still: float = 2.0):
    """Stops the chat; checks saved == delivered, and that nothing moves afterwards."""
    stop_at = time.monotonic()
    await owui.stop(run.chat_id)
    stopped = await run.wait(30)
    assert stopped.saved == stopped.delivered
    settled = len(admin_socket.events_for(run.assistant_message_id))
    await asyncio.sleep(still)
    assert admin_socket.events_for(run.assistant_message_id)[settled:] == []
    assert not any(r.received_at > stop_at for r in backend.requests)
    return stopped


async def test_stop_during_a_tool_call_cancels_the_tool_and_keeps_the_turn(
    owui, backend, admin_socket, pipe, faulty_tools
):
    backend.set_script("model-a", tool_call=ToolCallScript(name="hang"))
    admin_socket.answer("execute", overlay_answer("model-a", "model-b"))
    run = await start_chat(admin_socket, None, pipe, "Hang on.", tool_ids=["mmc_faulty"])

    def executing(e: SocketEvent) -> bool:
        content = str((e.data or {}).get("content", ""))
        return e.message_id == run.assistant_message_id and 'name="hang"' in content

    await admin_socket.wait_for(executing, timeout=30, start=run.first_event_index)
    await until((faulty_tools / "hang-started").exists, 10)

    stopped = await stop_and_check(owui, backend, admin_socket, run)

    assert speakers(stopped.saved) == ["A"]
    assert [r.model for r in backend.requests] == ["model-a"]
    cancelled = await until((faulty_tools / "hang-cancelled").exists, 10)
    assert cancelled, "the running tool was not cancelled"


async def test_stop_while_the_manager_is_choosing_ends_everything(
    owui, backend, admin_socket, pipe
):
    backend.set_script("manager", answer_delay=600, manager_rule=lambda messages: "B")
    answer = overlay_answer("model-a", "model-b", rounds=2)
    admin_socket.answer("execute", {**answer, "use_manager": True, "manager_model": "manager"})
    run = await start_chat(admin_socket, None, pipe, "Choose slowly.")
    await until(lambda: backend.requests, 30)
    assert [r.model for r in backend.requests] == ["manager"]

    stopped = await stop_and_check(owui, backend, admin_socket, run)

    assert speakers(stopped.saved) == []
    assert [r.model for r in backend.requests] == ["manager"]
    assert stopped.finished_at is not None


async def test_a_synchronous_tool_is_timed_out_too(
    owui, backend, admin_socket, pipe, valves, faulty_tools
):
    """Open WebUI calls a sync tool on its event loop; the pipe runs it in a thread instead."""
    await valves(TOOL_TIMEOUT=1)
    finished = faulty_tools / "nap-finished"
    backend.set_script(
        "model-a",
        tool_call=ToolCallScript(name="nap"),
        # Asked for at once with the timeout's answer, the reply says whether the nap ended.
        reply=lambda request: f"nap-finished={finished.exists()}",
    )
    admin_socket.answer("execute", overlay_answer("model-a", "model-b"))

    result = await run_chat(admin_socket, None, pipe, "Take a nap.", tool_ids=["mmc_faulty"])

    saved = result.saved
    assert speakers(saved) == ["A", "B"] and saved == result.delivered
    assert (faulty_tools / "nap-started").exists()
    assert "did not finish within 1 s" in tool_result(saved, "nap")
    follow_up = backend.requests_for("model-a")[-1]
    assert "did not finish within 1 s" in tool_message(follow_up)
    assert follow_up.reply == "nap-finished=False" and "NAP-DONE" not in saved
    # The thread cannot be stopped; it ends on its own and its result is dropped.
    assert await until(finished.exists, 15)
