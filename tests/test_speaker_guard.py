"""The speaker guard cuts a line that opens a turn as someone else, and nothing else (issue 18).

Each reply is fed at every split point, as a stream may cut it anywhere, and the stop
sequences a participant sends are checked against the same text: the server cuts wherever
one of them occurs, so a stop sequence inside legitimate text would cut it too.
"""

from __future__ import annotations

import pytest

import multi_model_conversation as mmc
from tests.fakes import PipeHarness, Script, config, reply

PANEL = ["Alice", "Bob", "Carol"]


def guarded(text: str, own: str, aliases: list[str], user: str = "Dana") -> set:
    """What the guard shows of `text` and whose line stopped it, for every split in two."""
    seen = set()
    for cut in range(len(text) + 1):
        guard = mmc.SpeakerGuard(own, [*aliases, user, "User"])
        shown = guard.feed(text[:cut]) + guard.feed(text[cut:]) + guard.flush()
        seen.add((shown, guard.stopped_by))
    return seen


def kept_whole(text: str, own: str, aliases: list[str], user: str = "Dana") -> bool:
    """Neither the guard nor a server stop sequence cuts or changes any of `text`."""
    stops = mmc.stop_sequences(own, aliases, user)
    return guarded(text, own, aliases, user) == {(text, None)} and not any(s in text for s in stops)


# -- never cut ---------------------------------------------------------------------------------


def test_a_blockquote_of_what_another_speaker_said_is_not_cut():
    text = "I disagree.\n> Alice said: we should ship on Friday.\n\nThe migration is untested."
    assert kept_whole(text, "Bob", PANEL)


def test_a_bold_field_label_named_like_another_reviewer_is_not_cut():
    aliases = ["Correctness", "Security", "Clarity"]
    text = (
        "The function fails when `b` is 0.\n\n"
        "**Security:** a caller-controlled `b` can crash the service.\n"
        "**Clarity**: the name `div` is fine.\n**Edge cases:** `b = 0`."
    )
    assert kept_whole(text, "Correctness", aliases, "User")


def test_addressing_someone_by_name_is_not_cut():
    text = "Good points.\nAlice: you are right about the deadline, but tests come first."
    assert kept_whole(text, "Bob", PANEL)
    assert kept_whole("Alice: you are right.\nCarol: your plan works.", "Bob", PANEL)


def test_a_note_is_not_cut_when_a_participant_is_called_note():
    aliases = ["Ana", "Note", "Summary"]
    text = "I found a venue.\nNote: the deposit of 500 euros is due by Friday."
    assert kept_whole(text, "Ana", aliases, "User")
    assert kept_whole("Budget fixed.\n**Note:** The deposit is refundable.", "Ana", aliases)
    # Capitalised, it reads as Note's turn: that is how SmolLM2 spoke as Note in the corpus.
    spoken = "Bye.\nNote: So far, we've got a budget of 3000 euros."
    assert guarded(spoken, "Ana", aliases, "User") == {("Bye.\n", "note")}


def test_lists_code_asides_and_names_inside_words_are_not_cut():
    texts = [
        "So far:\n- Alice: the cache\n* Carol: the tests\n1. Bob said: ship",
        "The log:\n```\nAlice said: Deploy\nCarol: Rollback\n```\nCarol won.",
        "~~~\nAlice: Approved\n~~~\nDone.",
        "The receipt:\n\n    Alice: 40\n\nThat is all.",
        "Note this.\n(Alice: The photo is in the chat.)\n| Carol: | Tests |",
        "Alicex: no.\nAlice's plan works.\nAlice is right.\nAs Alice said: Ship it.",
    ]
    for text in texts:
        assert kept_whole(text, "Bob", PANEL), text


# -- cut -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "who"),
    [
        ("Alice: I think we should ship on Friday.", "alice"),
        ("Alice said: Ship it.", "alice"),
        ("Alice says: We are done.", "alice"),
        ('Carol: "I love this plan."', "carol"),
        ('carol said: "the cache."', "carol"),
        ("Dana: Thanks, all.", "dana"),
        ("User: What next?", "user"),
        ("Alice:", "alice"),
    ],
)
def test_a_line_that_opens_a_turn_as_someone_else_ends_the_reply_before_it(line, who):
    text = f"My view: tests first.\n{line}\nMore of it."
    assert guarded(text, "Bob", PANEL) == {("My view: tests first.\n", who)}


def test_a_fence_closes_and_the_lines_after_it_are_guarded_again():
    text = "```\nAlice: Inside\n```\nAlice: I speak now."
    assert guarded(text, "Bob", PANEL) == {("```\nAlice: Inside\n```\n", "alice")}


def test_its_own_label_goes_and_a_turn_opening_label_at_the_start_goes_but_addressing_stays():
    assert guarded("**Bob:** Hello.\nBob: still me", "Bob", PANEL) == {("Hello.\nstill me", None)}
    assert guarded("Alice: I open as Alice\nthen me", "Bob", PANEL) == {
        ("I open as Alice\nthen me", None)
    }
    assert kept_whole("Alice: you open this reply.", "Bob", PANEL)


def test_the_stop_sequences_are_turn_openings_the_guard_cuts_too():
    stops = mmc.stop_sequences("Bob", PANEL, "Dana")
    assert stops == ['\nCarol said: "', '\nCarol: "', '\nAlice said: "', '\nAlice: "']
    for stop, who in zip(stops, ["carol", "carol", "alice", "alice"], strict=True):
        assert guarded(f"Mine.{stop}Yes.\nMore.", "Bob", PANEL) == {("Mine.\n", who)}


# -- through the pipe --------------------------------------------------------------------------


async def test_a_reply_addressing_and_quoting_others_reaches_the_transcript_whole():
    h = PipeHarness(models={"a": "A", "b": "B"})
    h.host.chat_configs["chat-1"] = config("a", "b")
    kept = "Hi.\nB: you are right.\n> B said: ship it.\n**B:** a bold label.\n"
    h.host.scripts["a"] = Script(streams=[reply(kept + "B: I am B now.\nAnd more.")])

    result = await h.run()

    shown = mmc.BLOCK_RE.sub("", result)  # issue 26: the cut line is folded, not deleted
    assert kept in shown and "I am B now" not in shown and "And more" not in shown
    assert "<summary>✂️ A went on as B" in result and "B: I am B now." in result
    assert not any(s in kept for s in h.host.requests[0]["stop"])
