"""The tab's copy of the message, rebuilt from every event the emitter sends.

Each event is applied the way Open WebUI 0.12.4's chat page applies it (`tab_apply`: deltas
append, `chat:message` and `replace` set the whole text). After every event the copy must be a
state the transcript really had, in the order it had them (no rollback, no hole), and the end
must be the final transcript. Hypothesis drives appends, in-place edits, a reasoning block
growing and closing, a slow socket and slow saves (a save in flight while frames go on).
"""

from __future__ import annotations

import asyncio

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import multi_model_conversation as mmc
from tests.fakes import (
    TAB_CONTENT_TYPES,
    FakeClock,
    PipeHarness,
    RecordingEmitter,
    Script,
    chunk,
    config,
    tab_apply,
    tab_copies,
)

INTERVAL = 1 / 30
MAX_SAVE = 5.0


class Doc:
    """A transcript stand-in: committed text and maybe a block growing in place at its end."""

    def __init__(self) -> None:
        self.committed = ""
        self.live: str | None = None
        self.renders: list[str] = []

    def render(self) -> str:
        text = self.committed
        if self.live is not None:
            text += f'<details done="false">\n{self.live}\n</details>\n'
        self.renders.append(text)
        return text

    def live_at(self) -> int | None:
        return len(self.committed) if self.live is not None else None

    def apply(self, op: tuple) -> None:
        kind = op[0]
        if kind == "append":
            self.close()
            self.committed += op[1]
        elif kind == "think":
            self.live = (self.live or "") + op[1]
        elif kind == "close":
            self.close()
        elif kind == "edit":  # rewrite a stretch of earlier text (a tool block finishing)
            self.close()
            n = len(self.committed)
            i, j = sorted((int(op[1] * n), int(op[2] * n)))
            self.committed = self.committed[:i] + op[3] + self.committed[j:]

    def close(self) -> None:
        if self.live is not None:
            self.committed += f'<details done="true">\n{self.live}\n</details>\n'
            self.live = None


words = st.text(alphabet="ab \n>", min_size=1, max_size=12)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), words),
        st.tuples(st.just("think"), words),
        st.tuples(st.just("close")),
        st.tuples(st.just("edit"), st.floats(0, 1), st.floats(0, 1), words),
    ),
    min_size=1,
    max_size=40,
)
pauses = st.lists(st.sampled_from([0.0, 0.002, 0.02, 0.05, 0.3, 1.2]), min_size=40, max_size=40)


def in_order(copies: list[str], renders: list[str]) -> bool:
    """Each copy is a rendered state, and they come in the order they were rendered."""
    at = -1
    for copy in copies:
        try:
            at = renders.index(copy, at + 1)
        except ValueError:
            return False
    return True


async def drive(doc: Doc, emitter: mmc.CoalescingEmitter, clock: FakeClock, steps, waits) -> None:
    for op, wait in zip(steps, waits, strict=False):
        doc.apply(op)
        await emitter.update()
        for _ in range(4):
            await asyncio.sleep(0)
        while wait > 0:
            clock.advance(min(wait, 0.005))
            wait -= 0.005
            for _ in range(3):
                await asyncio.sleep(0)
    doc.close()
    await emitter.update()
    flush = asyncio.ensure_future(emitter.flush())
    while not flush.done():
        await asyncio.sleep(0)
        clock.advance(0.005)
    await flush


def run_scenario(
    steps, waits, delay: float, save_delay: float, budget: float, fail_calls=frozenset()
) -> tuple:
    clock = FakeClock()
    doc = Doc()
    sent = RecordingEmitter(clock, delay=delay, save_delay=save_delay, fail_calls=fail_calls)
    emitter = mmc.CoalescingEmitter(
        sent,
        doc.render,
        INTERVAL,
        clock,
        host_bytes=20_000,
        save_interval=1.0,
        budget=budget,
        max_save_interval=MAX_SAVE,
        live_at=doc.live_at,
    )
    asyncio.run(drive(doc, emitter, clock, steps, waits))
    return doc, sent


def trusted_marks(sent: RecordingEmitter) -> list[bool]:
    """Per content event: False from a failed save until the next whole copy, else True.

    Frames sent while a save was in flight add to it; if it never reached the tab they make a
    hole, which only the next whole copy can repair (and the emitter sends one at once).
    """
    marks, suspect = [], False
    for i, (_, event) in enumerate(sent.events):
        suspect = suspect or i in sent.failed_saves
        if event["type"] not in TAB_CONTENT_TYPES:
            continue
        if event["type"] in ("replace", "chat:message"):
            suspect = False
        marks.append(not suspect)
    return marks


async def test_a_save_that_fails_is_repaired_by_a_whole_frame_without_waiting_for_more_text():
    clock = FakeClock()
    doc = Doc()
    sent = RecordingEmitter(clock, delay=0.05, fail_calls=frozenset({1}))  # call 1: a save
    emitter = mmc.CoalescingEmitter(
        sent, doc.render, INTERVAL, clock, live_at=doc.live_at, max_save_interval=1.0
    )  # a save is due every second (the time floor), to be failed

    async def step(text: str, seconds: float) -> None:
        if text:
            doc.apply(("append", text))
            await emitter.update()
        for _ in range(int(seconds / 0.005)):
            clock.advance(0.005)
            for _ in range(3):
                await asyncio.sleep(0)

    await step("a", 1.1)  # the first frame, whole; at 1 s its save (the time floor) fails
    await step("b", 0.5)  # then a frame adds "b"
    kinds = [e["type"] for _, e in sent.events]
    assert sent.failed_saves == [1] and sent.calls == 4, kinds
    # The repair is whole and comes before any new text; it is stored too, as the failed
    # save was not.
    assert kinds == ["chat:message", "replace", "chat:message:delta"]
    assert tab_copies([e for _, e in sent.events]) == ["a", "a", "ab"]
    flushed = asyncio.ensure_future(emitter.flush())
    while not flushed.done():  # each event takes 0.05 s of fake time
        await step("", 0.005)
    assert sent.events[-1][1] == {"type": "replace", "data": {"content": "ab"}}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=ops,
    waits=pauses,
    delay=st.sampled_from([0.0, 0.0, 0.05, 0.7]),
    save_delay=st.sampled_from([0.0, 0.3, 2.0]),
    budget=st.sampled_from([0.0, 2_000.0, 16_384.0]),
    fail_calls=st.frozensets(st.integers(0, 30), max_size=3),
)
def test_the_tab_copy_is_the_transcript_after_every_event(
    steps, waits, delay, save_delay, budget, fail_calls
):
    """`fail_calls`: sends that raise and never reach the tab (the next frame repairs it)."""
    doc, sent = run_scenario(steps, waits, delay, save_delay, budget, fail_calls)
    events = [e for _, e in sent.events if e["type"] in TAB_CONTENT_TYPES]
    copies = tab_copies(events)
    final = doc.render()

    assert copies, "nothing reached the tab"
    trusted = [c for c, ok in zip(copies, trusted_marks(sent), strict=True) if ok]
    assert in_order(trusted, doc.renders), "the tab showed a state out of order, or a hole"
    saves = [e["data"]["content"] for e in events if e["type"] == "replace"]
    # When the very last send fails, the pipe's return value still carries the end to the host.
    if sent.calls - 1 not in fail_calls:
        assert copies[-1] == final
        assert saves[-1] == final, "the end is always stored"
    assert in_order(saves, doc.renders)
    # A delta only ever extends what the tab shows: the page cannot take text away.
    assert all(e["data"]["content"] for e in events if e["type"] == "chat:message:delta")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=ops, waits=pauses, save_delay=st.sampled_from([0.0, 0.3]))
def test_a_tab_that_loads_midway_is_exact_again_at_the_next_whole_copy(steps, waits, save_delay):
    """It starts from the stored copy, then applies what follows; a whole copy comes soon."""
    doc, sent = run_scenario(steps, waits, 0.0, save_delay, 16_384.0)
    timed = [(t, e) for t, e in sent.events if e["type"] in TAB_CONTENT_TYPES]
    copies = tab_copies([e for _, e in timed])
    for start in range(len(timed)):
        # The database holds the last save whose write had finished by then.
        content = ""
        for t, e in timed[:start]:
            if e["type"] == "replace" and t + save_delay <= timed[start][0]:
                content = e["data"]["content"]
        exact_from = None
        for k in range(start, len(timed)):
            content = tab_apply(content, timed[k][1])
            if exact_from is None and timed[k][1]["type"] in ("replace", "chat:message"):
                exact_from = k
            if exact_from is not None:
                assert content == copies[k]
        assert content == copies[-1]
    # Whole copies come at least every MAX_SAVE_INTERVAL (plus a frame and a slow save) while
    # deltas keep coming, so a tab that loaded in between is exact again within that.
    last_whole = 0.0
    for t, e in timed:
        if e["type"] in ("replace", "chat:message"):
            last_whole = t
        else:
            assert t - last_whole <= MAX_SAVE + 2 * INTERVAL + save_delay + 0.01


# -- the whole pipe ----------------------------------------------------------------------------


def reasoning_reply(words: int, thoughts: int, tag: str = "") -> list[str]:
    """`tag` makes each reply's words its own: a reply copying an earlier one word for word is
    an echo the pipe cuts (issue 18)."""
    out = [chunk(reasoning_content=f"idea{i} ") for i in range(thoughts)]
    out += [chunk(content=f"{tag}w{i} ") for i in range(words)]
    return out + ["data: [DONE]\n\n"]


async def _pipe_run(monkeypatch, rounds: int, words: int, delay: float = 0.0, save_delay=0.0):
    renders: list[str] = []
    original = mmc.Transcript.render

    def recorded(self) -> str:
        text = original(self)
        renders.append(text)
        return text

    monkeypatch.setattr(mmc.Transcript, "render", recorded)
    h = PipeHarness()
    h.host.chat_configs["chat-1"] = config("m1", "m2", rounds=rounds)
    for model in ("m1", "m2"):
        h.host.scripts[model] = Script(
            streams=[reasoning_reply(words, 30, f"{model}r{r}") for r in range(rounds)],
            chunk_delay=0.005,
        )
    sent = RecordingEmitter(h.clock, delay=delay, save_delay=save_delay)
    run = asyncio.ensure_future(h.run(emitter=sent))
    while not run.done():
        await asyncio.sleep(0)
        if h.host.requests and (sent.in_flight or delay or save_delay):
            h.clock.advance(0.001)
    return await run, sent, renders


async def test_the_pipe_shows_every_state_in_order_and_ends_with_the_transcript(monkeypatch):
    result, sent, renders = await _pipe_run(monkeypatch, rounds=2, words=300, save_delay=0.4)

    events = [e for _, e in sent.events if e["type"] in TAB_CONTENT_TYPES]
    copies = tab_copies(events)
    assert in_order(copies[:-1], renders) and copies[-2] == result
    # The last event is the hand-over: the tab's copy emptied, the host's final delta follows.
    assert events[-1] == {"type": "chat:message", "data": {"content": ""}}
    assert tab_apply(copies[-1], {"type": "message", "data": {"content": result}}) == result
    kinds = [e["type"] for e in events]
    # Four reasoning blocks closing are the only rewrites; the rest are deltas and saves.
    assert kinds.count("chat:message:delta") > 10 * (kinds.count("chat:message") - 1)


async def test_each_token_reaches_the_tab_once_and_whole_copies_keep_to_the_budget(monkeypatch):
    """2 x 4 replies of 1,500 tokens: deltas carry the text once; whole copies are paced."""
    result, sent, _ = await _pipe_run(monkeypatch, rounds=4, words=1500)
    seconds = sent.events[-1][0]
    events = [e for _, e in sent.events if e["type"] in TAB_CONTENT_TYPES]

    delta_text = sum(len(e["data"]["content"]) for e in events if e["type"] == "chat:message:delta")
    whole = [len(e["data"]["content"]) for e in events if e["type"] in ("replace", "chat:message")]
    assert delta_text <= len(result), "a token reached the tab twice in deltas"
    # SAVE_BUDGET_KB of chat rewritten per second is half that in whole copies of the message
    # (the host stores it twice); the final save and a rewrite or two may go over it.
    budget = mmc.Pipe.Valves().SAVE_BUDGET_KB * 1024
    assert sum(whole) <= budget / 2 * seconds + 3 * len(result)
    naive = sum(len(c) for c in sent.contents())
    assert sent.content_bytes() < naive / 20, "whole copies every frame"
    assert len(events) >= 25 * seconds, "fewer frames than 25 a second"
