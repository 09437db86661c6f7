"""Unit tests for the stream-decoding layer: SSE bytes -> frames -> events -> tool calls."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import multi_model_conversation as mmc
from tests import fakes

# ============================================================================
# SSEDecoder
# ============================================================================

# One stream that exercises every line-level rule the decoder claims to follow.
SSE_STREAM = (
    ": keep-alive comment\r\n"  # comment, CRLF
    'data: {"a":1}\r\n'
    "\r\n"  # CRLF blank line dispatches
    "data: first line\n"  # multi-line event, LF endings
    "data:second line\n"  # no space after the colon
    "data:  two spaces\n"  # only one space is dropped
    ": a comment inside an event\n"
    "\n"
    "event: message\r"  # lone CR endings
    "data: cr event é🙂\r"
    "\r"
    "id: 7\n"
    "retry: 100\n"
    "data: [DONE]\n"
    "\n"
    "data: tail without blank line"  # only flush() delivers this one
)
SSE_EXPECTED = [
    '{"a":1}',
    "first line\nsecond line\n two spaces",
    "cr event é🙂",
    "[DONE]",
    "tail without blank line",
]


def run_sse(pieces: list) -> list[str]:
    decoder = mmc.SSEDecoder()
    out: list[str] = []
    for piece in pieces:
        out += decoder.feed(piece)
    return out + decoder.flush()


def test_sse_whole_stream_str_and_bytes():
    assert run_sse([SSE_STREAM]) == SSE_EXPECTED
    assert run_sse([SSE_STREAM.encode()]) == SSE_EXPECTED


def test_sse_tail_event_needs_flush():
    decoder = mmc.SSEDecoder()
    assert decoder.feed("data: x\n\ndata: tail") == ["x"]
    assert decoder.flush() == ["tail"]
    assert decoder.flush() == []  # nothing is delivered twice


def test_sse_tail_with_newline_but_no_blank_line():
    decoder = mmc.SSEDecoder()
    assert decoder.feed("data: tail\n") == []
    assert decoder.flush() == ["tail"]


@pytest.mark.parametrize("as_bytes", [False, True], ids=["str", "bytes"])
def test_sse_every_two_way_split_gives_same_payloads(as_bytes):
    # Split points are character boundaries; multi-byte characters stay whole (the host sends
    # whole lines), but every CR / LF / CRLF boundary is cut.
    for i in range(len(SSE_STREAM) + 1):
        pieces = [SSE_STREAM[:i], SSE_STREAM[i:]]
        if as_bytes:
            pieces = [p.encode() for p in pieces]
        assert run_sse(pieces) == SSE_EXPECTED, f"split at {i}: {SSE_STREAM[:i]!r}"


def test_sse_every_byte_split_keeps_multi_byte_characters_whole():
    """A network read may end inside a character: é is 2 bytes, 🙂 is 4."""
    data = SSE_STREAM.encode()
    for i in range(len(data) + 1):
        assert run_sse([data[:i], data[i:]]) == SSE_EXPECTED, f"split at byte {i}"
    assert run_sse([bytes([b]) for b in data]) == SSE_EXPECTED


def test_sse_bytes_that_are_not_utf8_become_replacement_characters():
    assert run_sse([b"data: a\xff", b"b\n\ndata: \xf0\x9f", b"\n\n"]) == ["a\ufffdb", "\ufffd"]


@settings(max_examples=300, deadline=None)
@given(
    cuts=st.sets(st.integers(min_value=1, max_value=len(SSE_STREAM) - 1), max_size=40),
    as_bytes=st.booleans(),
)
def test_sse_random_splits_into_many_pieces(cuts, as_bytes):
    points = [0, *sorted(cuts), len(SSE_STREAM)]
    pieces = [SSE_STREAM[a:b] for a, b in zip(points, points[1:], strict=False)]
    if as_bytes:
        pieces = [p.encode() for p in pieces]
    assert run_sse(pieces) == SSE_EXPECTED


def test_sse_bytearray_input():
    assert run_sse([bytearray(b"data: x\n\n")]) == ["x"]


def test_sse_empty_chunk_between_cr_and_lf():
    # A CRLF whose CR and LF arrive in different chunks, with an empty chunk in between
    # (an iterator may yield b""), is still one line ending, not two.
    pieces = ["data: a\r", "", "\ndata: b\n\n"]
    assert run_sse(pieces) == ["a\nb"]
    assert run_sse([p.encode() for p in pieces]) == ["a\nb"]


@pytest.mark.parametrize("sep", ["\u2028", "\x85", "\x0c"])
def test_sse_only_cr_and_lf_end_lines(sep):
    # The event-stream format ends lines at CR, LF or CRLF only; other Unicode line breaks are
    # payload characters (JSON may carry U+2028/U+2029/U+0085 unescaped).
    text = f"data: a{sep}b\n\n"
    assert run_sse([text]) == [f"a{sep}b"]


def test_sse_unescaped_unicode_line_separator_in_json_survives_to_content():
    content = "one\u2028two\u2029three\x85four"
    frame = json.dumps({"choices": [{"delta": {"content": content}}]}, ensure_ascii=False)
    payloads = run_sse([f"data: {frame}\n\n".encode()])
    assert len(payloads) == 1
    events = mmc.decode_frame(payloads[0])
    assert [(e.kind, e.text) for e in events] == [("content", content)]


def test_sse_ignores_non_data_fields_and_blank_runs():
    assert run_sse(["\n\n\nevent: x\nid: 3\n\n", "data\n\n"]) == [""]


# ============================================================================
# decode_frame
# ============================================================================


def frame(delta: dict) -> str:
    return json.dumps(
        {"id": "c1", "object": "chat.completion.chunk", "choices": [{"delta": delta}]}
    )


def kinds_texts(events):
    return [(e.kind, e.text) for e in events]


def test_decode_content():
    assert kinds_texts(mmc.decode_frame(frame({"content": "Hello"}))) == [("content", "Hello")]


def test_decode_empty_or_null_content_gives_nothing():
    assert mmc.decode_frame(frame({"content": ""})) == []
    assert mmc.decode_frame(frame({"content": None, "role": "assistant"})) == []


@pytest.mark.parametrize("key", ["reasoning_content", "reasoning", "thinking"])
def test_decode_each_reasoning_key(key):
    events = mmc.decode_frame(frame({key: "let me think"}))
    assert kinds_texts(events) == [("reasoning", "let me think")]


def test_decode_reasoning_and_content_in_one_delta():
    events = mmc.decode_frame(frame({"reasoning_content": "hmm", "content": "Hi"}))
    assert kinds_texts(events) == [("reasoning", "hmm"), ("content", "Hi")]


def test_decode_full_message_frame():
    payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": "whole"}}]})
    assert kinds_texts(mmc.decode_frame(payload)) == [("content", "whole")]


def test_decode_tool_call_deltas():
    delta = {
        "tool_calls": [
            {
                "index": 0,
                "id": "call_abc",
                "type": "function",
                "function": {"name": "search", "arguments": '{"q": '},
            },
            {"index": 1, "function": {"arguments": '"x"}'}},
        ]
    }
    events = mmc.decode_frame(frame(delta))
    assert [(e.kind, e.index, e.call_id, e.name, e.arguments) for e in events] == [
        ("tool_call", 0, "call_abc", "search", '{"q": '),
        ("tool_call", 1, "", "", '"x"}'),
    ]


@pytest.mark.parametrize(
    "error, message",
    [
        ({"message": "rate limited", "code": 429}, "rate limited"),
        ("upstream exploded", "upstream exploded"),
        ({"detail": {"message": "nested reason"}}, "nested reason"),
    ],
)
def test_decode_error_frame(error, message):
    events = mmc.decode_frame(json.dumps({"error": error}))
    assert kinds_texts(events) == [("error", message)]


def test_describe_error_without_known_keys_and_long_text():
    assert json.loads(mmc.describe_error({"code": 500})) == {"code": 500}
    assert len(mmc.describe_error("x" * 1000)) == 300


@pytest.mark.parametrize("payload", ["[DONE]", " [DONE]\n"])
def test_decode_done(payload):
    assert kinds_texts(mmc.decode_frame(payload)) == [("done", "")]


@pytest.mark.parametrize(
    "payload",
    [
        "",
        " \n",
        '{"id": "x"}',
        '{"choices": []}',
        '{"choices": "abc"}',
        '{"choices": [1]}',
        '{"choices": [{"delta": "text"}]}',
        '{"error": null, "choices": []}',
    ],
)
def test_decode_frames_without_events(payload):
    assert mmc.decode_frame(payload) == []


@pytest.mark.parametrize("payload", ["not json", "{", "[1, 2]", '"a string"', "42", "null"])
def test_frames_that_are_not_json_objects_are_reported_as_malformed(payload):
    assert kinds_texts(mmc.decode_frame(payload)) == [("malformed", "")]


@settings(max_examples=500, deadline=None)
@given(st.text())
def test_decode_frame_never_raises_on_arbitrary_text(text):
    events = mmc.decode_frame(text)
    assert isinstance(events, list)


@pytest.mark.parametrize(
    "payload",
    [
        "[" * 100_000,  # nesting deeper than the interpreter's recursion limit
        '{"choices": [{"delta": {"content": "x"}}], "n": ' + "1" * 5000 + "}",  # huge int
    ],
    ids=["deep-nesting", "huge-integer"],
)
def test_decode_frame_never_raises_on_pathological_json(payload):
    # A broken upstream must not abort the conversation: decode_frame is called unguarded
    # inside the stream loop.
    assert isinstance(mmc.decode_frame(payload), list)


_json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-5, 5)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=4)
)
_json_any = st.recursive(
    _json_leaf,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["name", "arguments", "x"]), inner, max_size=3)
    ),
    max_leaves=8,
)
_function = st.dictionaries(st.sampled_from(["name", "arguments"]), _json_any) | _json_any
_call = st.fixed_dictionaries(
    {}, optional={"index": _json_any, "id": _json_any, "function": _function}
)
_delta = st.fixed_dictionaries(
    {},
    optional={
        "content": _json_any,
        "reasoning_content": _json_any,
        "thinking": _json_any,
        "tool_calls": st.lists(_call | _json_any, max_size=3) | _json_any,
    },
)


@settings(max_examples=500, deadline=None)
@given(_delta)
def test_decode_frame_never_raises_on_malformed_chunk_fields(delta):
    # Well-formed JSON with wrongly typed fields (a proxy's bug) must not raise either, and
    # every event must carry the types the rest of the pipe relies on.
    events = mmc.decode_frame(frame(delta))
    for event in events:
        assert isinstance(event.text, str)
        assert isinstance(event.index, int)
        assert isinstance(event.call_id, str)
        assert isinstance(event.name, str)
        assert isinstance(event.arguments, str)


# ============================================================================
# ThinkTagSplitter
# ============================================================================


def split_all(chunks: list[str]) -> list[tuple[str, str]]:
    splitter = mmc.ThinkTagSplitter()
    out: list[tuple[str, str]] = []
    for chunk in chunks:
        out += splitter.feed(chunk)
    return out + splitter.flush()


def merged(events: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Join consecutive pieces of the same kind (chunking may split them differently)."""
    out: list[tuple[str, str]] = []
    for kind, text in events:
        if out and out[-1][0] == kind and kind != "reasoning_end":
            out[-1] = (kind, out[-1][1] + text)
        else:
            out.append((kind, text))
    return out


def summary(events):
    content = "".join(t for k, t in events if k == "content")
    reasoning = "".join(t for k, t in events if k == "reasoning")
    ends = sum(1 for k, _ in events if k == "reasoning_end")
    return content, reasoning, ends


def mixed_case(text: str) -> str:
    return "".join(c.upper() if i % 2 else c.lower() for i, c in enumerate(text))


EXPECTED_TAG_PAIRS = {
    ("<think>", "</think>"),
    ("<thinking>", "</thinking>"),
    ("<reasoning>", "</reasoning>"),
    ("<reason>", "</reason>"),
    ("<thought>", "</thought>"),
    ("|begin_of_thought|", "|end_of_thought|"),
}


@pytest.mark.parametrize("pair", sorted(EXPECTED_TAG_PAIRS))
async def test_each_common_think_tag_format_becomes_a_reasoning_block_in_the_pipe(pair):
    h = fakes.PipeHarness()
    h.host.chat_configs["chat-1"] = fakes.config("m1")
    text = f"{pair[0]}weighing it up{pair[1]}Tea, then."
    frames = [fakes.chunk(content=c) for c in text]  # one character per delta
    h.host.scripts["m1"] = fakes.Script(streams=[[*frames, "data: [DONE]\n\n"]])

    result = await h.run()

    (block,) = mmc.BLOCK_RE.findall(result)
    assert 'type="reasoning" done="true"' in block and "weighing it up" in block
    assert result.endswith("\n</details>\nTea, then.") and pair[0] not in result


@pytest.mark.parametrize("pair", sorted(EXPECTED_TAG_PAIRS))
@pytest.mark.parametrize(
    "case", [str.lower, str.upper, mixed_case], ids=["lower", "upper", "mixed"]
)
def test_think_tag_pair_splits_before_inside_after(pair, case):
    opening, closing = case(pair[0]), case(pair[1])
    text = f"Before {opening}inside\nthoughts{closing} after."
    expected = [
        ("content", "Before "),
        ("reasoning", "inside\nthoughts"),
        ("reasoning_end", ""),
        ("content", " after."),
    ]
    assert merged(split_all([text])) == expected
    # And the same when fed one character at a time.
    assert merged(split_all(list(text))) == expected


def test_think_close_tag_must_match_the_open_tag():
    events = merged(split_all(["<think>a</thinking>b</think>c"]))
    assert events == [("reasoning", "a</thinking>b"), ("reasoning_end", ""), ("content", "c")]


def test_think_tag_after_non_ascii_text_with_case_changing_lowercase():
    # "İ" (U+0130) lower-cases to two code points; positions found in text.lower() must not be
    # used to cut the original text.
    events = merged(split_all(["İstanbul <think>plan</think> answer"]))
    assert events == [
        ("content", "İstanbul "),
        ("reasoning", "plan"),
        ("reasoning_end", ""),
        ("content", " answer"),
    ]


TWO_BLOCKS = (
    "Intro <th text. <think>first\nthought</think>Middle | part <2 "
    "<THINKING>second <b>bold</b> idea</Thinking> end|begin_of tail."
)
TWO_BLOCKS_EXPECTED = (
    "Intro <th text. Middle | part <2  end|begin_of tail.",
    "first\nthoughtsecond <b>bold</b> idea",
    2,
)


def test_two_blocks_unsplit():
    assert summary(split_all([TWO_BLOCKS])) == TWO_BLOCKS_EXPECTED


def test_two_blocks_every_two_way_split():
    for i in range(len(TWO_BLOCKS) + 1):
        events = split_all([TWO_BLOCKS[:i], TWO_BLOCKS[i:]])
        assert summary(events) == TWO_BLOCKS_EXPECTED, f"split at {i}"
        assert merged(events) == merged(split_all([TWO_BLOCKS])), f"split at {i}"


@settings(max_examples=300, deadline=None)
@given(st.sets(st.integers(min_value=1, max_value=len(TWO_BLOCKS) - 1), max_size=30))
def test_two_blocks_arbitrary_splits(cuts):
    points = [0, *sorted(cuts), len(TWO_BLOCKS)]
    pieces = [TWO_BLOCKS[a:b] for a, b in zip(points, points[1:], strict=False)]
    assert summary(split_all(pieces)) == TWO_BLOCKS_EXPECTED


_tagish = st.lists(
    st.sampled_from(
        [
            "<think>",
            "</think>",
            "<THOUGHT>",
            "</thought>",
            "|begin_of_thought|",
            "|end_of_thought|",
            "<th",
            "</thi",
            "<",
            ">",
            "|",
            "/",
            "a",
            " ",
            "\n",
            "é",
        ]
    ),
    max_size=30,
).map("".join)


@settings(max_examples=400, deadline=None)
@given(text=_tagish, data=st.data())
def test_arbitrary_tag_soup_is_split_independent(text, data):
    cuts = data.draw(st.sets(st.integers(min_value=0, max_value=len(text)), max_size=12))
    points = [0, *sorted(cuts), len(text)]
    pieces = [text[a:b] for a, b in zip(points, points[1:], strict=False)]
    assert merged(split_all(pieces)) == merged(split_all([text]))


def test_unclosed_think_tag_ends_as_reasoning_on_flush():
    splitter = mmc.ThinkTagSplitter()
    out = splitter.feed("Answer <think>still thinking </thi")
    out += splitter.flush()
    assert merged(out) == [("content", "Answer "), ("reasoning", "still thinking </thi")]


def test_lookalike_tag_start_is_emitted_as_content():
    splitter = mmc.ThinkTagSplitter()
    first = splitter.feed("a <th")
    assert first == [("content", "a ")]  # "<th" might still become "<think>"
    second = splitter.feed("ing>")
    assert summary(first + second) == ("a <thing>", "", 0)
    assert splitter.flush() == []


def test_partial_tag_held_until_flush_becomes_content():
    splitter = mmc.ThinkTagSplitter()
    out = splitter.feed("price < 5 and a <thin")
    assert summary(out) == ("price < 5 and a ", "", 0)
    out += splitter.flush()
    assert summary(out) == ("price < 5 and a <thin", "", 0)


LONGEST_TAG = max(len(t) for pair in EXPECTED_TAG_PAIRS for t in pair)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.text(alphabet="ab <>|/_thinkgofuTHINK", max_size=12),
        max_size=12,
    )
)
def test_held_back_text_never_exceeds_longest_tag(chunks):
    text = "".join(chunks)
    lower = text.lower()
    # Only tag-free input, so everything fed must come out as content eventually.
    if any(opening in lower for opening, _ in EXPECTED_TAG_PAIRS):
        return
    splitter = mmc.ThinkTagSplitter()
    fed = emitted = 0
    for chunk in chunks:
        fed += len(chunk)
        emitted += sum(len(t) for _, t in splitter.feed(chunk))
        assert fed - emitted <= LONGEST_TAG
    emitted += sum(len(t) for _, t in splitter.flush())
    assert emitted == fed


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet="ab <>/thinkTHINK\n", max_size=12), max_size=12))
def test_held_back_reasoning_never_exceeds_longest_tag(chunks):
    if "</think>" in "".join(chunks).lower():
        return
    splitter = mmc.ThinkTagSplitter()
    assert splitter.feed("<think>") == []
    fed = emitted = 0
    for chunk in chunks:
        fed += len(chunk)
        out = splitter.feed(chunk)
        assert all(kind == "reasoning" for kind, _ in out)
        emitted += sum(len(t) for _, t in out)
        assert fed - emitted <= LONGEST_TAG
    emitted += sum(len(t) for _, t in splitter.flush())
    assert emitted == fed


# ============================================================================
# ToolCallAccumulator
# ============================================================================


def delta(index: int, call_id: str = "", name: str = "", arguments: str = "") -> mmc.StreamEvent:
    return mmc.StreamEvent(
        "tool_call", index=index, call_id=call_id, name=name, arguments=arguments
    )


def test_interleaved_deltas_assemble_two_calls_in_index_order():
    acc = mmc.ToolCallAccumulator()
    for event in [
        delta(1, "call_b", "lookup"),
        delta(0, "call_a", "search"),
        delta(0, arguments='{"q": '),
        delta(1, arguments='{"id": '),
        delta(0, arguments='"weather"}'),
        delta(1, arguments="3}"),
    ]:
        acc.add(event)
    calls = acc.calls()
    assert [(c.index, c.call_id, c.name, c.arguments) for c in calls] == [
        (0, "call_a", "search", '{"q": "weather"}'),
        (1, "call_b", "lookup", '{"id": 3}'),
    ]
    assert json.loads(calls[0].arguments) == {"q": "weather"}
    assert calls[1].as_message_part() == {
        "id": "call_b",
        "type": "function",
        "function": {"name": "lookup", "arguments": '{"id": 3}'},
    }


def test_missing_ids_get_unique_generated_ids():
    acc = mmc.ToolCallAccumulator()
    acc.add(delta(0, name="a"))
    acc.add(delta(2, name="b"))
    acc.add(delta(5, name="c"))
    ids = [c.call_id for c in acc.calls()]
    assert all(ids)
    assert len(set(ids)) == 3
    assert [c.call_id for c in acc.calls()] == ids  # stable across calls()


def test_generated_ids_do_not_collide_with_given_ids():
    acc = mmc.ToolCallAccumulator()
    acc.add(delta(0, name="a"))  # no id from the server
    acc.add(delta(1, call_id="call_0", name="b"))  # the server's own id
    ids = [c.call_id for c in acc.calls()]
    assert len(set(ids)) == 2, ids


def test_repeated_name_is_not_doubled_and_split_name_is_joined():
    acc = mmc.ToolCallAccumulator()
    acc.add(delta(0, "id0", "get_weather", "{"))
    acc.add(delta(0, "id0", "get_weather", "}"))
    acc.add(delta(0, "", "get_weather", ""))
    acc.add(delta(1, "id1", "get_"))
    acc.add(delta(1, "", "time"))
    calls = acc.calls()
    assert [(c.call_id, c.name, c.arguments) for c in calls] == [
        ("id0", "get_weather", "{}"),
        ("id1", "get_time", ""),
    ]
    assert calls[1].as_message_part()["function"]["arguments"] == "{}"


def test_no_deltas_no_calls():
    assert mmc.ToolCallAccumulator().calls() == []


def test_stream_to_tool_calls_end_to_end():
    chunks = [
        {"tool_calls": [{"index": 0, "id": "c0", "function": {"name": "f", "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"x"'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]},
    ]
    stream = "".join(f"data: {frame(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
    acc = mmc.ToolCallAccumulator()
    kinds = []
    for payload in run_sse([stream.encode()]):
        for event in mmc.decode_frame(payload):
            kinds.append(event.kind)
            if event.kind == "tool_call":
                acc.add(event)
    assert kinds == ["tool_call"] * 3 + ["done"]
    [call] = acc.calls()
    assert (call.call_id, call.name, json.loads(call.arguments)) == ("c0", "f", {"x": 1})


# ============================================================================
# Fuzz: the decoders never raise
# ============================================================================


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(), max_size=8))
def test_sse_decoder_never_raises_on_arbitrary_text(chunks):
    decoder = mmc.SSEDecoder()
    out = []
    for chunk in chunks:
        out += decoder.feed(chunk)
    out += decoder.flush()
    assert all(isinstance(p, str) for p in out)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(), max_size=8))
def test_sse_decoder_never_raises_on_arbitrary_bytes(chunks):
    decoder = mmc.SSEDecoder()
    out = []
    for chunk in chunks:
        out += decoder.feed(chunk)
    out += decoder.flush()
    assert all(isinstance(p, str) for p in out)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(), max_size=8))
def test_think_splitter_never_raises(chunks):
    events = split_all(chunks)
    assert all(kind in ("content", "reasoning", "reasoning_end") for kind, _ in events)
    assert sum(len(t) for _, t in events) <= sum(len(c) for c in chunks)
