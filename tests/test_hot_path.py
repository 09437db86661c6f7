"""The hot path: coalescing, never blocking the stream, setup once, isolation, quiet logs."""

from __future__ import annotations

import asyncio
import logging

import multi_model_conversation as mmc
from tests.fakes import FakeClock, PipeHarness, RecordingEmitter, Script, chunk, config, reply


def long_reply(n: int, word: str = "tok") -> list[str]:
    return [chunk(content=f"{word}{i} ") for i in range(n)] + ["data: [DONE]\n\n"]


async def test_2000_chunks_in_a_second_make_at_most_31_events_and_the_last_is_returned():
    h = PipeHarness()
    h.host.chat_configs["chat-1"] = config("m1")
    h.host.scripts["m1"] = Script(streams=[long_reply(2000)], chunk_delay=0.9 / 2000)
    emitter = RecordingEmitter(h.clock)

    result = await h.run(emitter=emitter)

    contents = emitter.contents()
    # One frame per 1/30 s of the 0.9 s the stream took, plus the first and the final one.
    assert 2 <= len(contents) <= 0.9 * 30 + 2
    assert contents[-1] == result
    assert "tok1999" in result
    assert all(a != b for a, b in zip(contents, contents[1:], strict=False)), "a repeated frame"
    # One short turn: no save while it streams; the host saves the returned text at the end.
    assert not emitter.saved(), "saves, not frames"
    assert emitter.max_in_flight <= 2


async def test_first_change_is_sent_at_once_and_events_are_one_frame_apart():
    h = PipeHarness()
    h.host.chat_configs["chat-1"] = config("m1")
    h.host.scripts["m1"] = Script(streams=[long_reply(600)], chunk_delay=0.002)
    emitter = RecordingEmitter(h.clock)

    await h.run(emitter=emitter)

    times = emitter.content_times()
    first_token_at = 0.002  # the fake stream advances time before each chunk
    assert times[0] <= first_token_at, "the leading edge must not wait for a frame"
    first_visible = next(t for t, c in zip(times, emitter.contents(), strict=True) if "tok0" in c)
    # Fake time only moves in 2 ms chunk steps, so allow one step past the frame.
    assert first_visible <= first_token_at + 1 / 30 + 0.002
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert min(gaps[:-1]) >= 1 / 30 - 1e-9  # the final flush may follow sooner
    per_second = max(sum(1 for t in times if s <= t < s + 1) for s in times)
    assert per_second <= 31


async def test_a_socket_that_does_not_answer_does_not_hold_up_the_stream():
    """Every event takes an hour to arrive: the model's 1000 chunks are read all the same."""
    h = PipeHarness()
    h.host.chat_configs["chat-1"] = config("m1")
    h.host.scripts["m1"] = Script(streams=[long_reply(1000)], chunk_delay=0.001)
    emitter = RecordingEmitter(h.clock, delay=3600)
    read: list[str] = []
    original = h.host.stream_chat

    async def counted(form, user):
        async for piece in original(form, user):
            read.append(piece)
            yield piece

    h.host.stream_chat = counted
    run = asyncio.ensure_future(h.run(emitter=emitter))
    for _ in range(100_000):  # the fake clock stands still unless the stream moves it
        await asyncio.sleep(0)
        if len(read) == 1001:
            break

    streamed_behind_a_silent_socket = len(read)
    in_flight, arrived = emitter.in_flight, len(emitter.events)
    if streamed_behind_a_silent_socket < 1001:
        run.cancel()  # held up behind the socket: stop it (its final save still goes out)
    for _ in range(100):
        if run.done():
            break
        h.clock.advance(3600)
        for _ in range(20):
            await asyncio.sleep(0)
    assert streamed_behind_a_silent_socket == 1001, "the stream waited for the socket"
    # One frame and one stored write (the first status) in flight, none through: events do
    # not pile up behind a silent socket.
    assert in_flight == 2 and arrived == 0, "one frame and one status in flight, none through"
    result = await asyncio.wait_for(run, 5)
    assert emitter.max_in_flight == 2 and emitter.max_writes_in_flight == 1
    assert emitter.contents()[-1] == result and "tok999" in result


async def test_a_slow_database_write_does_not_hold_back_the_frames_after_a_save():
    """Each save takes 0.8 s to write: frames still come every 1/30 s, in order."""
    h = PipeHarness()
    h.pipe.valves.MAX_SAVE_INTERVAL = 1.0  # a save every second while the turn streams
    h.host.chat_configs["chat-1"] = config("m1")
    h.host.scripts["m1"] = Script(streams=[long_reply(3000)], chunk_delay=0.001)
    emitter = RecordingEmitter(h.clock, save_delay=0.8)
    run = asyncio.ensure_future(h.run(emitter=emitter))
    while not run.done():
        await asyncio.sleep(0)
        if h.host.requests and emitter.saves_in_flight:
            h.clock.advance(0.0005)
    result = await run

    times, contents = emitter.content_times(), emitter.contents()
    streaming = [t for t in times if t <= 3.0]
    gaps = [b - a for a, b in zip(streaming, streaming[1:], strict=False)]
    assert max(gaps) <= 2 / 30, f"a frame waited {max(gaps):.3f} s behind a save"
    assert len(emitter.saved()) >= 2
    assert emitter.max_saves_in_flight == 1 and emitter.max_in_flight <= 2
    # The tab saw the text grow in order, and the last state, saved, is the result (which
    # drops the trailing space of the last token).
    assert all(b.startswith(a) for a, b in zip(contents, contents[1:-1], strict=False))
    assert contents[-1] == result
    assert all(result.startswith(saved) for _, saved in emitter.saved())


async def test_a_status_waiting_on_a_busy_database_does_not_hold_back_the_frames():
    """The host stores a status before it returns; each write here takes 3 s, longer than a
    turn. The text still streams frame by frame (before: nothing until the status was written,
    so a short conversation on a busy server reached its tab all at once, at the end)."""
    h = PipeHarness()
    h.host.chat_configs["chat-1"] = config("m1", "m2", rounds=1)
    h.host.scripts["m1"] = Script(streams=[long_reply(500, "a")], chunk_delay=0.002)
    h.host.scripts["m2"] = Script(streams=[long_reply(500, "b")], chunk_delay=0.002)
    emitter = RecordingEmitter(h.clock, status_delay=3.0)
    run = asyncio.ensure_future(h.run(emitter=emitter))
    while not run.done():
        await asyncio.sleep(0)
        if h.host.requests and emitter.writes_in_flight:
            h.clock.advance(0.0005)
    result = await run

    shown = emitter.contents()[:-1]  # every frame before the end
    assert len(shown) >= 20, "frames came while the statuses were being written"
    assert any("a1 " in c and "M2" not in c for c in shown), "the first turn streamed"
    assert any("b1 " in c and "b499" not in c for c in shown), "the second turn streamed"
    assert emitter.contents()[-1] == result
    assert len(emitter.statuses()) >= 3, "every status still reached the tab"
    assert emitter.max_writes_in_flight == 1, "one stored write at a time, statuses and saves"


async def test_interval_zero_sends_one_event_per_chunk():
    h = PipeHarness(interval=0)
    h.host.chat_configs["chat-1"] = config("m1")
    h.host.scripts["m1"] = Script(streams=[long_reply(50)])
    emitter = RecordingEmitter(h.clock)

    result = await h.run(emitter=emitter)

    assert len(emitter.contents()) >= 50
    assert emitter.contents()[-1] == result


async def test_a_failing_socket_still_returns_the_whole_transcript(caplog):
    h = PipeHarness()
    h.host.chat_configs["chat-1"] = config("m1", "m2", rounds=2)
    emitter = RecordingEmitter(h.clock, fail=True)

    with caplog.at_level(logging.DEBUG, logger=mmc.__name__):
        result = await h.run(emitter=emitter)

    assert result.count("### ") == 4
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, "a broken socket is reported once, not per event"


async def test_stop_flushes_what_was_shown_and_sends_nothing_after():
    h = PipeHarness()
    h.host.chat_configs["chat-1"] = config("m1", "m2")
    h.host.scripts["m1"] = Script(streams=[long_reply(10_000)], chunk_delay=0.001)
    emitter = RecordingEmitter(h.clock)
    run = asyncio.ensure_future(h.run(emitter=emitter))
    for _ in range(300):
        await asyncio.sleep(0)
    run.cancel()
    try:
        await run
        raise AssertionError("the cancellation must propagate to the host")
    except asyncio.CancelledError:
        pass
    sent = len(emitter.events)
    final = emitter.contents()[-1]
    for _ in range(50):
        h.clock.advance(0.1)
        await asyncio.sleep(0)

    assert len(emitter.events) == sent, "an event arrived after the stop"
    assert "tok" in final and "### 🔵 M2" not in final
    assert len(h.host.requests) == 1, "no participant may be called after the stop"


async def test_each_unique_model_is_resolved_once_per_run():
    """3 participants on 2 models, 4 rounds: 2 record lookups, 2 access checks, 2 tool loads."""
    h = PipeHarness()
    h.host.chat_configs["chat-1"] = {
        "rounds": 4,
        "participants": [
            {"model": "m1", "alias": "A"},
            {"model": "m2", "alias": "B"},
            {"model": "m1", "alias": "C"},
        ],
    }
    h.host.tools = {"clock": {"spec": {"name": "clock", "parameters": {}}, "callable": _now}}

    await h.run(emitter=RecordingEmitter(h.clock))

    assert len(h.host.requests) == 12
    assert h.host.calls["get_model_record"] == 2
    assert h.host.calls["check_access"] == 2
    assert h.host.calls["load_tools"] == 2
    assert h.host.calls["get_user"] == 1
    assert h.host.calls["runtime_models"] == 1, "the model registry is read once per run"


async def _now() -> str:
    return "noon"


async def test_two_concurrent_conversations_on_one_pipe_see_only_their_own_bytes():
    h = PipeHarness(models={"a": "Alpha", "b": "Beta"})
    h.host.chat_configs["chat-a"] = config("a", rounds=3)
    h.host.chat_configs["chat-b"] = config("b", rounds=3)
    h.host.scripts["a"] = Script(streams=[long_reply(300, "alpha")] * 3, chunk_delay=0.001)
    h.host.scripts["b"] = Script(streams=[long_reply(300, "beta")] * 3, chunk_delay=0.001)
    emit_a, emit_b = RecordingEmitter(h.clock), RecordingEmitter(h.clock)
    pipe_state = dict(vars(h.pipe))

    result_a, result_b = await asyncio.gather(
        h.run("hi a", chat_id="chat-a", emitter=emit_a),
        h.run("hi b", chat_id="chat-b", emitter=emit_b),
    )

    assert "alpha" in result_a and "beta" not in result_a
    assert "beta" in result_b and "alpha" not in result_b
    assert all("beta" not in c and "### 🔴 B" not in c for c in emit_a.contents())
    assert all("alpha" not in c and "### 🔴 A" not in c for c in emit_b.contents())
    assert emit_a.contents()[-1] == result_a and emit_b.contents()[-1] == result_b
    assert vars(h.pipe) == pipe_state, "a run stored something on the shared Pipe"


async def test_a_run_logs_at_most_two_info_lines_and_nothing_per_chunk(caplog):
    h = PipeHarness()
    h.host.chat_configs["chat-1"] = config("m1", "m2", rounds=3)
    h.host.scripts["m1"] = Script(streams=[long_reply(500)] * 3)

    with caplog.at_level(logging.DEBUG, logger=mmc.__name__):
        await h.run(emitter=RecordingEmitter(h.clock))

    ours = [r for r in caplog.records if r.name == mmc.__name__]
    assert len([r for r in ours if r.levelno == logging.INFO]) <= 2
    assert not [r for r in ours if r.levelno >= logging.WARNING]
    assert len(ours) < 50, "hot-path detail must not be logged per chunk"
    assert not mmc.log.handlers and mmc.log.level == logging.NOTSET


async def test_emitter_leading_trailing_and_dedup_directly():
    clock = FakeClock()
    state = {"text": ""}
    sent = RecordingEmitter(clock)
    emitter = mmc.CoalescingEmitter(sent, lambda: state["text"], 0.1, clock, save_interval=1.0)

    def kinds() -> list[tuple[str, str]]:
        return [(e["type"], e["data"]["content"]) for _, e in sent.events]

    state["text"] = "a"
    await emitter.update()
    await asyncio.sleep(0)
    for letter in "bcdef":
        state["text"] += letter
        await emitter.update()
        await asyncio.sleep(0)
    clock.advance(0.05)
    await asyncio.sleep(0)
    assert kinds() == [("chat:message", "a")], "the first change goes out at once (shown)"
    clock.advance(0.05)
    for _ in range(3):
        await asyncio.sleep(0)
    assert kinds() == [("chat:message", "a"), ("chat:message:delta", "bcdef")], (
        "a frame per interval, with only the new text"
    )
    await emitter.update()  # unchanged state
    await emitter.flush()
    assert kinds()[-1] == ("replace", "abcdef"), "the end is always saved"
    await emitter.update()
    await emitter.flush()
    assert len(kinds()) == 3, "an identical payload was sent again"


class Talk:
    """A conversation driven straight into an emitter on a fake clock: a progress status as each
    turn begins (as `Run` posts it), then the turn's tokens, 1 ms apart."""

    def __init__(self, interval: float = 1 / 30, **emitter_args) -> None:
        self.clock = FakeClock()
        self.text = ""
        self.sent = RecordingEmitter(self.clock)
        self.emitter = mmc.CoalescingEmitter(
            self.sent, lambda: self.text, interval, self.clock, **emitter_args
        )
        self.turn_ends: list[str] = []  # the transcript as each turn ended

    async def turn(self, n: int, tokens: int) -> None:
        if self.text:
            self.turn_ends.append(self.text)
        self.emitter.post({"type": "status", "data": {"description": f"turn {n}", "done": False}})
        self.text += f"### T{n}\n\n"
        for i in range(tokens):
            self.text += f"w{n}x{i} "
            await self.emitter.update()
            self.clock.advance(0.001)
            for _ in range(4):
                await asyncio.sleep(0)

    async def end(self, store: bool = True) -> None:
        self.turn_ends.append(self.text)
        self.emitter.post({"type": "status", "data": {"description": "done", "done": True}})
        await self.emitter.flush(store=store)

    def written(self, host_bytes: int) -> int:
        """Bytes of chat the host rewrote: each save and each status rewrites the whole chat
        (the rest of it, plus the message twice: the chat JSON and the message's row)."""
        total, stored = 0, ""
        for _, event in self.sent.events:
            if event["type"] == "replace":
                stored = event["data"]["content"]
            if event["type"] in ("replace", "status"):
                total += host_bytes + 2 * len(stored)
        return total


async def test_saves_come_at_each_turn_end_not_every_second():
    talk = Talk(save_interval=1.0, max_save_interval=15.0)
    for n in range(4):
        await talk.turn(n, 2000)  # 2 s a turn
    await talk.end()

    saves = [c for _, c in talk.sent.saved()]
    # Each turn's end is saved (shortly after, with what the next turn added by then), and the
    # end: nothing in between, though each turn streams for 2 s.
    assert len(saves) == 4
    for ended, saved in zip(talk.turn_ends[:3], saves, strict=False):
        assert saved.startswith(ended) and len(saved) - len(ended) < 500  # 2 frames' worth
    assert saves[-1] == talk.text
    frames = [e for _, e in talk.sent.events if e["type"].startswith("chat:message")]
    assert 200 <= len(frames) <= 8 * 31, "the screen still updates every frame"


async def test_a_long_turn_is_saved_at_the_time_floor_and_a_quiet_one_too():
    talk = Talk(save_interval=1.0, max_save_interval=5.0)
    await talk.turn(0, 12_000)  # one turn of 12 s: saved at 5 s and 10 s
    assert len(talk.sent.saved()) == 2
    for _ in range(6000):  # then 6 s without a token (a model thinking): what shows is saved
        talk.clock.advance(0.001)
        await asyncio.sleep(0)
    assert [c for _, c in talk.sent.saved()][-1] == talk.text
    assert len(talk.sent.saved()) == 3
    await talk.end(store=False)  # the host saves the end
    assert len(talk.sent.saved()) == 3


async def test_without_a_budget_every_turn_end_is_saved_in_a_long_chat():
    """What the budget must not catch when it is off: the save points alone decide."""
    talk = Talk(host_bytes=200_000, copies=0)
    for n in range(8):
        await talk.turn(n, 1200)  # turns longer than SAVE_INTERVAL
    await talk.end()
    assert len(talk.sent.saved()) == 8  # 7 turn ends and the end
    assert len(talk.sent.statuses()) == 9


async def _budgeted(host_bytes: int, turns: int, copies: float = 3.0) -> tuple[Talk, int, int]:
    talk = Talk(host_bytes=host_bytes, copies=copies)
    for n in range(turns):
        await talk.turn(n, 400)
    await talk.end()
    final_chat = host_bytes + 2 * len(talk.text)
    return talk, talk.written(host_bytes), final_chat


async def test_bytes_written_stay_within_a_few_copies_of_the_final_chat_however_long():
    """50 messages of 2,000 chars (~200 KB of chat) or a fresh one; 6 turns or 60: saves and
    statuses together rewrite at most `copies` copies of the final chat, plus the last status
    and the final save (which the host makes when the pipe hands its text over)."""
    for host_bytes in (200_000, 500):
        ratios = []
        for turns in (6, 18, 60):
            talk, written, final_chat = await _budgeted(host_bytes, turns)
            assert written <= 5 * final_chat, (host_bytes, turns, written / final_chat)
            assert talk.sent.saved()[-1][1] == talk.text
            assert talk.sent.statuses()[-1] == "done", "the last status always goes"
            ratios.append(written / final_chat)
        assert max(ratios) <= 5
    # Without the budget the same long conversation writes many more copies.
    talk, written, final_chat = await _budgeted(200_000, 60, copies=0)
    assert written > 20 * final_chat


async def test_what_a_restart_loses_is_bounded_by_a_share_of_the_chat():
    """At each turn's end, what is stored lacks at most 1/copies of the chat (or one turn)."""
    for host_bytes in (200_000, 500):
        talk = Talk(host_bytes=host_bytes, copies=3.0)
        stored: list[int] = []  # the stored chat's size as each turn ended
        for n in range(30):
            await talk.turn(n, 400)
            saved = talk.sent.saved()
            stored.append(host_bytes + 2 * len(saved[-1][1] if saved else ""))
        await talk.end()
        turn = 2 * len(talk.text) / 30  # one turn, as stored bytes
        for ended, have in zip(talk.turn_ends, stored, strict=False):
            chat = host_bytes + 2 * len(ended)
            assert chat - have <= chat / 3 + 2 * turn, (host_bytes, chat, have)


async def test_a_tab_loaded_mid_conversation_gets_a_whole_copy_while_saves_are_held_back():
    """In a long chat the budget holds saves back; a tab reloaded meanwhile shows the last save
    plus the deltas after it, so a whole copy (not stored) still comes every MAX_SAVE_INTERVAL."""
    talk = Talk(host_bytes=200_000, copies=1.5, max_save_interval=5.0)
    for n in range(8):
        await talk.turn(n, 3000)  # 24 s
    await talk.end(store=False)
    whole = [t for t, e in talk.sent.events if e["type"] in ("chat:message", "replace")]
    assert len(talk.sent.saved()) <= 2, "few saves in a long chat"
    assert len(whole) >= 24 / 5 - 1
    gaps = [b - a for a, b in zip(whole, whole[1:], strict=False)]
    assert max(gaps) <= 5.0 + 2 / 30


async def test_a_held_status_gives_way_to_a_newer_one_and_none_is_lost_that_matters():
    """In a long chat the budget holds "now speaking" lines back; a later one replaces one
    still waiting, and the last status (how it ended) always goes."""
    talk, _, _ = await _budgeted(200_000, 12)
    statuses = talk.sent.statuses()
    assert statuses[-1] == "done"
    assert 1 <= len(statuses) - 1 < 12, "some turn lines held back, not all"
    numbers = [int(s.split()[1]) for s in statuses[:-1]]
    assert numbers == sorted(numbers), "in order"


async def test_reasoning_streams_in_an_open_block_that_closes_when_the_answer_starts():
    h = PipeHarness(interval=0)  # every change is a frame
    h.host.chat_configs["chat-1"] = config("m1")
    h.host.scripts["m1"] = Script(streams=[reply("the answer", reasoning="first this then that")])
    emitter = RecordingEmitter(h.clock)

    result = await h.run(emitter=emitter)

    frames = emitter.contents()
    opened = [i for i, f in enumerate(frames) if '<details type="reasoning" done="false"' in f]
    answered = [i for i, f in enumerate(frames) if "the answer" in f]
    assert opened and answered and max(opened) < min(answered)
    assert "first this then" in frames[max(opened)], "the open block grows as reasoning streams"
    assert all('done="false"' not in f for f in frames[min(answered) :])
    block_end = result.index("</details>")
    assert result.index("first this then that") < block_end < result.index("the answer")


async def test_the_tab_copy_is_emptied_for_the_hosts_final_delta_but_not_on_stop():
    """The host appends the returned text to what the tab shows; the store keeps it whole."""
    h = PipeHarness()
    h.host.chat_configs["chat-1"] = config("m1")
    emitter = RecordingEmitter(h.clock)

    result = await h.run(emitter=emitter)

    # The page's follow (issue 27) may come between; what matters is the content events' order.
    kinds = [e["type"] for _, e in emitter.events if e != mmc.FOLLOW_EVENT]
    assert kinds[-1] == "chat:message" and emitter.events[-1][1]["data"] == {"content": ""}
    assert emitter.contents()[-1] == result, "the tab had the whole transcript"
    assert "replace" not in kinds, "the host stores the returned text: no save of our own"
    # Just before, the page is asked to hold its height, so a user who scrolled up stays put.
    hold = emitter.events[-2][1]
    assert hold == {"type": "execute", "data": {"code": mmc.HOLD_SCROLL_SCRIPT}}
    assert "messages-container" in mmc.HOLD_SCROLL_SCRIPT

    h2 = PipeHarness()
    h2.host.chat_configs["chat-1"] = config("m1")
    h2.host.scripts["m1"] = Script(streams=[long_reply(10_000)], chunk_delay=0.001)
    stopped = RecordingEmitter(h2.clock)
    run = asyncio.ensure_future(h2.run(emitter=stopped))
    for _ in range(200):
        await asyncio.sleep(0)
    run.cancel()
    await asyncio.gather(run, return_exceptions=True)
    assert [e["type"] for _, e in stopped.events if e != mmc.FOLLOW_EVENT][-1] == "replace"
    assert all(e["type"] != "execute" for _, e in stopped.events), "a Stop empties nothing"


async def test_on_a_host_that_does_not_store_the_returned_text_the_pipe_saves_its_end():
    """Open WebUI 0.10 and 0.11 keep what the pipe's events stored, not the returned text."""
    h = PipeHarness()
    h.host.chat_configs["chat-1"] = config("m1")
    h.host.stores_returned = False
    emitter = RecordingEmitter(h.clock)

    result = await h.run(emitter=emitter)

    saves = [e["data"]["content"] for _, e in emitter.events if e["type"] == "replace"]
    assert saves and saves[-1] == result, "the last stored copy is the whole transcript"
    assert emitter.events[-1][1] == {"type": "chat:message", "data": {"content": ""}}


# -- following: the page keeps the newest line in view (issue 27) -------------------------------


async def test_the_page_is_asked_to_follow_a_bounded_number_of_times_and_after_the_last_change():
    clock = FakeClock()
    state = {"text": ""}
    sent = RecordingEmitter(clock)
    emitter = mmc.CoalescingEmitter(
        sent, lambda: state["text"], 1 / 30, clock, save_interval=1.0, follow_interval=0.2
    )
    for i in range(3000):  # 3 s of tokens
        state["text"] += f"t{i} "
        await emitter.update()
        clock.advance(0.001)
        for _ in range(4):
            await asyncio.sleep(0)
    clock.advance(1.0)  # a pause: the last frame is followed by itself, not by a later one
    for _ in range(20):
        await asyncio.sleep(0)
    tail = sent.events[-1][1]
    await emitter.update()  # nothing changed: nothing to follow
    await emitter.flush()

    follows = [t for t, e in sent.events if e == mmc.FOLLOW_EVENT]
    assert tail == mmc.FOLLOW_EVENT, "the last frame before the pause was not followed"
    assert 3 * 5 - 1 <= len(follows) <= 3 * 5 + 2, len(follows)  # 5 a second, no more
    assert all(b - a >= 0.2 - 1e-9 for a, b in zip(follows, follows[1:], strict=False))
    kinds = [e["type"] for _, e in sent.events]
    assert kinds[0] != "context_compaction", "a follow before anything was shown"
    assert "context_compaction context_compaction" not in " ".join(kinds), "a follow of nothing"
    assert sent.max_in_flight == 1
    assert all(e == mmc.FOLLOW_EVENT or e["data"]["content"] for _, e in sent.events)


async def test_a_run_follows_while_it_streams_and_an_emitter_without_the_interval_never_does():
    h = PipeHarness()
    h.host.chat_configs["chat-1"] = config("m1")
    h.host.scripts["m1"] = Script(streams=[long_reply(1000)], chunk_delay=0.001)
    emitter = RecordingEmitter(h.clock)

    await h.run(emitter=emitter)

    follows = [t for t, e in emitter.events if e == mmc.FOLLOW_EVENT]
    assert 4 <= len(follows) <= 1.0 / mmc.FOLLOW_INTERVAL + 2, follows

    clock = FakeClock()
    sent = RecordingEmitter(clock)
    plain = mmc.CoalescingEmitter(sent, lambda: "text", 1 / 30, clock)
    await plain.update()
    await plain.flush()
    assert sent.events and mmc.FOLLOW_EVENT not in [e for _, e in sent.events]
