"""What real models do that scripted ones rarely do, on the fake host (issue 10).

Runaway and cut replies, context limits, speakers writing each other's lines, managers naming
several people, background tasks answering prose, and tools offered where nobody asked.
"""

from __future__ import annotations

import asyncio
import json
import re

import multi_model_conversation as mmc
from tests.fakes import PipeHarness, Script, chunk, config


def speakers(transcript: str) -> list[str]:
    return re.findall(r"^### \S+ (.+)$", transcript, re.MULTILINE)


def streamed(h: PipeHarness) -> list[dict]:
    return [r for r in h.host.requests if r["stream"]]


def finish(reason: str) -> str:
    """The last frame of a reply, carrying its finish reason."""
    frame = {"choices": [{"index": 0, "delta": {}, "finish_reason": reason}]}
    return f"data: {json.dumps(frame)}\n\n"


def viewed(request: dict) -> str:
    """Everything a request showed the model, as one text."""
    return "\n".join(str(m.get("content")) for m in request["messages"])


# -- 1. turn bounds -------------------------------------------------------------------------------


async def test_every_turn_asks_for_a_bounded_reply_and_a_participant_may_set_its_own():
    h = PipeHarness(models={"a": "A", "b": "B", "c": "C"})
    cfg = config("a", "b", "c")
    cfg["participants"][1]["max_tokens"] = 50
    cfg["participants"][2]["max_tokens"] = 0
    h.host.chat_configs["chat-1"] = cfg

    await h.run()

    sent = [r.get("max_tokens") for r in streamed(h)]
    assert sent == [400, 50, None]


async def test_a_config_saved_before_max_tokens_still_loads_and_a_negative_one_is_refused():
    old = mmc.parse_config(config("a", "b"), 20)
    assert [p.max_tokens for p in old.participants] == [None, None]
    bad = config("a")
    bad["participants"][0]["max_tokens"] = -5
    try:
        mmc.parse_config(bad, 20)
    except mmc.ConfigError as exc:
        assert "max_tokens" in str(exc)
    else:
        raise AssertionError("a negative max_tokens was accepted")


async def test_a_reply_cut_by_length_is_marked_and_the_mark_stays_out_of_history():
    h = PipeHarness()
    h.host.chat_configs["chat-1"] = config("m1", "m2")
    h.host.scripts["m1"] = Script(
        streams=[[chunk(content="I went on and on "), finish("length"), "data: [DONE]\n\n"]]
    )

    result = await h.run()

    assert re.search(r"I went on and on\s+\*✂️ …\(cut at 400 tokens\)\*\n", result), result
    assert speakers(result) == ["M1", "M2"]
    m2_view = viewed(streamed(h)[1])
    assert "I went on and on" in m2_view and "cut at" not in m2_view and "✂️" not in m2_view
    assert len(h.host.requests) == 2, "a cut reply is not retried"


async def test_a_reply_that_streams_past_the_time_limit_is_cut_and_its_stream_closed():
    h = PipeHarness()
    h.pipe.valves.TURN_TIME_LIMIT = 0.3  # real seconds
    h.host.chat_configs["chat-1"] = config("m1", "m2")
    original = h.host.stream_chat
    closed = []

    async def runaway(form, user):
        if form["model"] != "m1":
            async for piece in original(form, user):
                yield piece
            return
        try:
            while True:  # never finishes, never silent
                await asyncio.sleep(0.02)
                yield chunk(content="more ")
        finally:
            closed.append(True)

    h.host.stream_chat = runaway

    result = await asyncio.wait_for(h.run(), 10)

    assert "*✂️ …(cut after 0.3 s)*" in result and "could not answer" not in result
    assert closed == [True]
    assert speakers(result) == ["M1", "M2"]
    m2_view = viewed(streamed(h)[-1])  # m1's request is not recorded by the stand-in
    assert "more" in m2_view and "cut after" not in m2_view


async def test_a_stream_the_server_closes_unfinished_keeps_its_text_and_says_so():
    h = PipeHarness()
    h.host.chat_configs["chat-1"] = config("m1", "m2")
    original = h.host.stream_chat

    async def gives_up(form, user):
        if form["model"] == "m1":
            yield chunk(content="Half a thought")  # then a clean close: no finish, no [DONE]
            return
        async for piece in original(form, user):
            yield piece

    h.host.stream_chat = gives_up

    result = await h.run()

    assert "Half a thought" in result
    assert "*⚠️ M1 could not answer: the stream ended before the model finished*" in result
    assert speakers(result) == ["M1", "M2"] and len(h.host.requests) == 1
