"""The echo guard (issue 18, item 5): a reply that copies a long run of what was already said,
or the pipe's own instructions and notes, ends there; quotes, summaries and names never do."""

from __future__ import annotations

import random
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import multi_model_conversation as mmc

SYSTEM = "\n\n".join(
    [
        "You are Ana, a careful engineer who checks every claim before she accepts it.",
        "Round 1 of 2. This is turn 2 of 6; 4 more after yours.",
        mmc.fill_template(mmc.DEFAULT_SHARED_INSTRUCTION, {"alias": "Ana", "others": "Ben, Chen"}),
    ]
)
# One long sentence (31 words), as a participant would quote it.
SENTENCE = (
    "The cheapest way to reach the lake is the early regional train from the central station, "
    "which takes a little under three hours and costs less than twenty euros each way."
)
BEN = (
    "I looked at the options for the weekend. Honestly, I think "
    + SENTENCE
    + " Driving is faster on paper, but parking near the trailhead fills up by eight in the "
    "morning, and the road over the pass is closed when it snows. I agree with Ana that we "
    "should book the hut early, since it only has twelve beds and weekends sell out in spring."
)
CHEN = (
    "I agree with Ana that the hut matters most. For food, I would bring lentil soup in a "
    "thermos, rye bread, hard cheese and dried apricots, because none of it spoils and all of "
    "it packs flat. If anyone has allergies, tell me by Thursday so I can shop on Friday."
)
PASTE = "Please proofread my invitation: " + " ".join(f"word{i}" for i in range(80))
TURNS = [
    mmc.Turn(None, PASTE),
    mmc.Turn("Ben", BEN),
    mmc.Turn("Chen", CHEN),
]
SOURCES = mmc.echo_sources(SYSTEM, TURNS)


def stream(guard: mmc.EchoGuard, reply: str, size: int = 3) -> list[str]:
    """What the guard lets through for each chunk of `size` characters, then at the end."""
    shown = [guard.feed(reply[i : i + size]) for i in range(0, len(reply), size)]
    return [*shown, guard.flush()]


def shown_text(
    reply: str, sources: list[str] = SOURCES, size: int = 3
) -> tuple[str, mmc.EchoGuard]:
    guard = mmc.EchoGuard(sources)
    return "".join(stream(guard, reply, size)), guard


def words(text: str) -> list[str]:
    return text.split()


# -- what must end as an echo ------------------------------------------------------------------


def test_a_copied_earlier_turn_ends_where_the_copy_begins_and_no_copied_word_is_shown():
    intro = "Good point, Ben. "
    reply = intro + BEN + " And then we can all meet at the station."
    shown, guard = shown_text(reply)
    assert shown == intro
    assert guard.echoed == "run" and guard.copied_words == mmc.ECHO_RUN_WORDS
    assert guard.withheld == len(reply) - len(intro)


def test_copied_instructions_end_the_reply_before_a_word_is_shown():
    """As a 270M base model did: its turn began with the turn rules and the shared instruction."""
    reply = SYSTEM.split("\n\n", 1)[1].replace("\n\n", " ") + " Anyway, here is my plan."
    assert reply.startswith("Round 1 of 2. This is turn 2 of 6;")
    shown, guard = shown_text(reply)
    assert shown == "" and guard.echoed == "run"
    assert guard.withheld == len(reply)


def test_the_pipes_note_as_a_whole_turn_is_an_echo():
    """A participant's whole turn was "(6 earlier turns of this conversation left out.)"."""
    topic = mmc.Turn(None, "Plan our weekend at the lake.")
    long_chat = [topic, *(TURNS[1 + i % 2] for i in range(8))]
    fitted = mmc.fit_turns(long_chat, 1200)  # the pipe's fitter leaves 6 out and says so
    assert fitted.omitted == 6
    reply = "(6 earlier turns of this conversation left out.)"
    shown, guard = shown_text(reply, mmc.echo_sources(SYSTEM, fitted.turns))
    assert shown == "" and guard.echoed == "whole"
    assert guard.copied_words == 8 and guard.withheld == len(reply)
    # Without the note among the sources, the same words are an ordinary reply.
    assert shown_text(reply)[0] == reply


def test_a_loop_repeated_across_speakers_is_an_echo():
    """SmolLM2 repeated "The answer is 1,000%" across speakers."""
    loop = " ".join(["The answer is 1,000%."] * 12)
    sources = mmc.echo_sources(SYSTEM, [mmc.Turn("Ben", loop)])
    shown, guard = shown_text("Let me think. " + loop, sources)
    assert shown == "Let me think. " and guard.echoed == "run"


def test_a_copy_in_other_case_punctuation_and_markup_is_still_a_copy_and_text_shows_as_written():
    copied = " ".join(
        f"**{w.upper()}**" if i % 5 == 0 else w.rstrip(",.") for i, w in enumerate(words(BEN))
    )
    intro = "*Right* — as **I** see it:\n\n> "
    shown, guard = shown_text(intro + copied)
    assert shown == intro and guard.echoed == "run"


def test_the_threshold_is_exact_in_words():
    """ECHO_RUN_WORDS - 1 copied words go out in full; ECHO_RUN_WORDS end the reply."""
    passage = words(BEN)[:60]
    for n, echoed in ((mmc.ECHO_RUN_WORDS - 1, ""), (mmc.ECHO_RUN_WORDS, "run")):
        # "Zebras" and "xylophones" stand in no source: the run is exactly n words.
        reply = "Zebras. " + " ".join(passage[1 : n + 1]) + " xylophones everywhere."
        shown, guard = shown_text(reply)
        assert guard.echoed == echoed, n
        assert shown == (reply if not echoed else "Zebras. ")


# -- what must not ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reply",
    [
        f'Ben wrote that "{SENTENCE}" I checked: it is true, but the last train back is at six.',
        f"> {SENTENCE}\n\nThat matches what I found, though the last train back is at six.",
        # plainly, with the words that stand around it in Ben's turn matching by chance too
        f"I looked at it again. Honestly, I think {SENTENCE} Driving is out for me.",
        f"*{SENTENCE.upper()}* is what Ben says; **I disagree**.",
    ],
    ids=["in quotes", "blockquote", "plainly, with context", "emphasised"],
)
def test_quoting_a_long_sentence_never_trips(reply):
    assert len(words(SENTENCE)) >= 30  # one long sentence
    shown, guard = shown_text(reply)
    assert shown == reply and guard.echoed == "" and guard.withheld == 0


def test_a_summary_that_reuses_phrases_never_trips():
    reply = (
        "To sum up: the early regional train from the central station is the cheapest way, "
        "parking near the trailhead fills up by eight in the morning, we should book the hut "
        "early, and Chen brings lentil soup in a thermos, rye bread, hard cheese and dried "
        "apricots. Tell Chen about allergies by Thursday. Round 1 of 2 is nearly done, and I "
        "agree with Ana that the hut matters most."
    )
    shown, guard = shown_text(reply)
    assert shown == reply and guard.echoed == ""


def test_a_list_of_the_participants_names_never_trips():
    reply = (
        "Who does what:\n- **Ana**: the tickets\n- **Ben**: the hut\n- **Chen**: the food\n\n"
        + "Ana, Ben, Chen: " * 20
    ).strip()
    shown, guard = shown_text(reply)
    assert shown == reply and guard.echoed == ""


def test_common_short_phrases_never_trip_even_as_a_whole_reply():
    phrases = "I agree with Ana that the hut matters most. " * 10
    sources = mmc.echo_sources(SYSTEM, [mmc.Turn("Ben", "I agree with Ben."), *TURNS[1:]])
    reply = " ".join(f"I agree with Ana that point {i} is fine." for i in range(12))
    assert shown_text(reply, [*sources, phrases])[0] == reply
    for short in ("I agree with Ben.", "I agree with Ana that"):
        shown, guard = shown_text(short, [*sources, phrases])
        assert shown == short and guard.echoed == ""
    assert len(words("I agree with Ana that")) < mmc.ECHO_WHOLE_WORDS


def test_code_the_model_writes_twice_in_its_own_reply_never_trips():
    code = "\n".join(
        f"    total = total + price_of(item_{i}) * quantity  # line {i}" for i in range(8)
    )
    reply = f"First:\n```python\n{code}\n```\nAgain, unchanged:\n```python\n{code}\n```\nDone."
    shown, guard = shown_text(reply)
    assert shown == reply and guard.echoed == ""


def test_fenced_code_from_an_earlier_turn_is_never_matched_but_prose_after_it_is():
    """Fixing someone's code keeps most of it; the fence closes and copied prose trips again."""
    code = "\n".join(f"total = total + price_of(item_{i}) * quantity" for i in range(12))
    sources = mmc.echo_sources(SYSTEM, [mmc.Turn("Ben", f"```\n{code}\n```"), *TURNS[1:]])
    fixed = f"Fixed:\n```\n{code}\nreturn total\n```\n"
    shown, guard = shown_text(fixed + "Thanks.", sources)
    assert shown == fixed + "Thanks." and guard.echoed == ""
    shown, guard = shown_text(fixed + BEN, sources)
    assert shown == fixed and guard.echoed == "run"


def test_the_users_own_text_is_not_a_source_but_the_participants_turns_are():
    """A participant asked to proofread a pasted text keeps long runs of it."""
    assert PASTE not in SOURCES and BEN in SOURCES and CHEN in SOURCES
    note = mmc.Turn(None, mmc.omitted_line(3), note=True)
    assert mmc.echo_sources(SYSTEM, [note, *TURNS]) == [SYSTEM, note.content, BEN, CHEN]
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    assert mmc.echo_sources("", [mmc.Turn("Ben", parts)]) == ["", "a\nb"]
    reply = "Here it is, proofread: " + PASTE.split(": ", 1)[1]
    assert shown_text(reply)[0] == reply


# -- holding back only while matching ---------------------------------------------------------


def test_an_ordinary_reply_is_held_back_only_by_the_word_being_written():
    guard = mmc.EchoGuard(SOURCES)
    assert guard.feed("Zebras wobble quie") == "Zebras wobble "
    assert guard.feed("tly\nhere") == "quietly\n"
    assert guard.flush() == "here"


def test_a_matching_run_is_held_and_goes_out_as_soon_as_it_breaks():
    guard = mmc.EchoGuard(SOURCES)
    assert guard.feed("Zebras. The cheapest way to reach the ") == "Zebras. "
    assert guard.feed("moon quickly zebras.") == "The cheapest way to reach the moon quickly "
    assert guard.flush() == "zebras." and guard.echoed == ""


def test_after_an_echo_nothing_more_is_shown_and_the_rest_counts_as_withheld():
    guard = mmc.EchoGuard(SOURCES)
    shown = "".join(stream(guard, BEN))
    assert shown == "" and guard.echoed == "run"
    assert guard.feed("more text") == "" and guard.flush() == ""
    assert guard.withheld == len(BEN) + len("more text")


def test_a_long_token_goes_out_before_it_ends_and_breaks_a_run():
    """A URL or a hash is no word: held up to 100 characters, then it streams through."""
    guard = mmc.EchoGuard(SOURCES)
    out = [guard.feed("x") for _ in range(300)]
    assert out[:100] == [""] * 100 and out[100] == "x" * 101 and out[101:] == ["x"] * 199
    assert guard.flush() == ""
    copied = words(BEN)
    for between, echoed in ((" ", "run"), (" " + "y" * 101 + " ", "")):
        reply = " ".join(copied[:30]) + between + " ".join(copied[30:60])
        assert shown_text(reply)[1].echoed == echoed


def test_text_without_spaces_between_words_is_never_held_and_breaks_a_run():
    """Chinese, Japanese or Thai would otherwise wait for a space or 100 characters."""
    guard = mmc.EchoGuard([*SOURCES, "我们周末去山里吧。火车最便宜。"])
    reply = "我们周末去山里吧。火车最便宜，三个小时就到。"
    assert list(map(guard.feed, reply)) == list(reply)
    assert guard.flush() == "" and guard.echoed == ""
    copied = words(BEN)
    for between, echoed in ((" ", "run"), (" 对 ", ""), ("。", "")):
        reply = " ".join(copied[:30]) + between + " ".join(copied[30:60])
        assert shown_text(reply)[1].echoed == echoed, between


# -- any chunking, the same result ------------------------------------------------------------

VOCAB = ["the", "hut", "Ana", "train", "I", "agree", "zebra", "lake", "**", ">", "-", "```", "山。"]
FENCES = ["\n```", "\n  ```py", "\n~~~", " ```"]  # the last one is no fence: not a line start


@st.composite
def replies(draw) -> str:
    """Replies mixing copied runs of the sources (any length), stray words, markup and fences."""
    pieces = []
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["copy", "copy", "words", "fence"]))
        source = words(draw(st.sampled_from([SYSTEM, BEN, CHEN])))
        if kind == "copy":
            start = draw(st.integers(0, len(source) - 1))
            pieces += source[start : start + draw(st.integers(1, 50))]
        elif kind == "words":
            pieces += draw(st.lists(st.sampled_from(VOCAB), max_size=6))
        else:
            pieces.append(draw(st.sampled_from(FENCES)))
    seps = draw(st.lists(st.sampled_from([" ", "\n", " \n", "\n  ", "\n\n"]), min_size=len(pieces)))
    return "".join(p + s for p, s in zip(pieces, seps, strict=False)).rstrip(" ")


@settings(max_examples=200, deadline=None)
@given(reply=replies(), cuts=st.lists(st.integers(0, 2000), max_size=40))
def test_any_chunking_gives_the_same_shown_text_and_verdict(reply, cuts):
    whole = mmc.EchoGuard(SOURCES)
    expected = whole.feed(reply) + whole.flush()
    bounds = sorted({0, len(reply), *(c % (len(reply) + 1) for c in cuts)})
    guard = mmc.EchoGuard(SOURCES)
    shown = "".join(guard.feed(reply[a:b]) for a, b in zip(bounds, bounds[1:], strict=False))
    shown += guard.flush()
    assert shown == expected
    verdict = (guard.echoed, guard.copied_words, guard.withheld)
    assert verdict == (whole.echoed, whole.copied_words, whole.withheld)
    assert reply.startswith(shown) and len(shown) + guard.withheld == len(reply)
    assert guard.echoed or shown == reply
    by_char = mmc.EchoGuard(SOURCES)  # every boundary at once
    assert "".join(map(by_char.feed, reply)) + by_char.flush() == expected
    assert (by_char.echoed, by_char.copied_words, by_char.withheld) == verdict


@settings(max_examples=300, deadline=None)
@given(
    sources=st.lists(st.lists(st.sampled_from("abc"), max_size=12), max_size=4),
    reply=st.lists(st.sampled_from("abcd"), max_size=30),
)
def test_the_index_finds_the_longest_copied_run_ending_at_each_word(sources, reply):
    """Against brute force: the longest suffix of the reply so far that stands in one source."""
    index = mmc.PassageIndex(" ".join(s) for s in sources)
    state = length = 0
    for i, word in enumerate(reply):
        state, length = index.step(state, length, word)
        longest = max(
            (
                n
                for n in range(i + 2)
                if any(_contains(s, reply[i + 1 - n : i + 1]) for s in sources)
            ),
            default=0,
        )
        assert length == longest, (sources, reply[: i + 1])


def _contains(seq: list[str], part: list[str]) -> bool:
    return any(seq[j : j + len(part)] == part for j in range(len(seq) - len(part) + 1))


# -- the work per chunk -----------------------------------------------------------------------


def lines_per_chunk(source_words: int, reply_words: int) -> list[int]:
    """Python lines run inside the guard for each 4-character chunk (sys.settrace counts)."""
    rng = random.Random(7)
    vocab = words(BEN + " " + CHEN)
    sources = [" ".join(rng.choice(vocab) for _ in range(source_words))]
    reply = " ".join(rng.choice(vocab) for _ in range(reply_words))
    guard = mmc.EchoGuard(sources)
    counts: list[int] = []
    count = 0

    def tracer(frame, event, arg):
        nonlocal count
        if frame.f_code.co_filename == mmc.__file__:
            count += event == "line"
            return tracer
        return None

    for i in range(0, len(reply), 4):
        count = 0
        sys.settrace(tracer)
        try:
            guard.feed(reply[i : i + 4])
        finally:
            sys.settrace(None)
        counts.append(count)
    return counts


def test_feed_work_per_chunk_does_not_grow_with_the_reply_or_the_sources():
    """Counted, not timed: lines run per 4-character chunk, for 40x longer replies and sources."""
    small = lines_per_chunk(source_words=500, reply_words=500)
    long_reply = lines_per_chunk(source_words=500, reply_words=20_000)
    big_sources = lines_per_chunk(source_words=20_000, reply_words=500)
    mean = sum(small) / len(small)
    for counts in (long_reply, big_sources):
        assert sum(counts) / len(counts) < 1.25 * mean
        assert max(counts) <= max(small) + 2 * mmc.ECHO_RUN_WORDS  # a link walk is < one run
