"""The speaker guard cuts a line that opens a turn as someone else, and nothing else (issue 18).

Each reply is fed at every split point, as a stream may cut it anywhere, and the stop
sequences a participant sends are checked against the same text: the server cuts wherever
one of them occurs, so a stop sequence inside legitimate text would cut it too.
"""

from __future__ import annotations

import re

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
    assert guarded(spoken, "Ana", aliases, "User") == {("Bye.\n", "Note")}


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
        ("Alice: I think we should ship on Friday.", "Alice"),
        ("Alice said: Ship it.", "Alice"),
        ("Alice says: We are done.", "Alice"),
        ('Carol: "I love this plan."', "Carol"),
        ('carol said: "the cache."', "Carol"),
        ("Dana: Thanks, all.", "Dana"),
        ("User: What next?", "User"),
        ("Alice:\nI think so too.", "Alice"),
    ],
)
def test_a_line_that_opens_a_turn_as_someone_else_ends_the_reply_before_it(line, who):
    text = f"My view: tests first.\n{line}\nMore of it."
    assert guarded(text, "Bob", PANEL) == {("My view: tests first.\n", who)}


def test_a_fence_closes_and_the_lines_after_it_are_guarded_again():
    text = "```\nAlice: Inside\n```\nAlice: I speak now."
    assert guarded(text, "Bob", PANEL) == {("```\nAlice: Inside\n```\n", "Alice")}


def test_its_own_label_goes_and_a_turn_opening_label_at_the_start_goes_but_addressing_stays():
    assert guarded("**Bob:** Hello.\nBob: still me", "Bob", PANEL) == {("Hello.\nstill me", None)}
    assert guarded("Alice: I open as Alice\nthen me", "Bob", PANEL) == {
        ("I open as Alice\nthen me", None)
    }
    assert kept_whole("Alice: you open this reply.", "Bob", PANEL)


def test_the_stop_sequences_are_the_pipes_own_transcript_lines_the_guard_cuts_too():
    stops = mmc.stop_sequences("Bob", PANEL, "Dana", "Judge")
    assert stops == ['\nCarol said: "', '\nAlice said: "', '\nJudge said: "', '\nDana said: "']
    for stop, who in zip(stops, ["Carol", "Alice", "Judge", "Dana"], strict=True):
        guard = mmc.SpeakerGuard("Bob", [*PANEL, "Judge", "Dana"])
        shown = guard.feed(f"Mine.{stop}yes.\nMore.") + guard.flush()
        assert (shown, guard.stopped_by) == ("Mine.\n", who)


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


# -- issue 26: on evidence, not on a name and a colon --------------------------------------------


async def converse(aliases: list[str], replies: dict[str, str], closing: str = "") -> tuple:
    """One round on the scripted backend; the transcript and what the last speaker heard."""
    models = {f"m{i}": f"Model {i}" for i in range(len(aliases))} | {"mc": "Closer"}
    h = PipeHarness(models=models)
    cfg = config(*[f"m{i}" for i in range(len(aliases))])
    for row, alias in zip(cfg["participants"], aliases, strict=True):
        row["alias"] = alias
    if closing:
        cfg["closing"] = {"model": "mc", "alias": closing, "prompt": "Sum up."}
    h.host.chat_configs["chat-1"] = cfg
    for i, alias in enumerate(aliases):
        h.host.scripts[f"m{i}"] = Script(streams=[reply(replies.get(alias, "Fine."))])
    h.host.scripts["mc"] = Script(default_text="Summed up.")
    result = await h.run()
    heard = "\n".join(str(m.get("content")) for m in h.host.requests[-1]["messages"])
    return result, heard


def flat(text: str) -> str:
    return " ".join(text.split())


async def test_a_reviewers_scorecard_named_like_the_panel_is_kept_whole_and_heard():
    scorecard = (
        "A scorecard across the three areas:\n\nCorrectness: Off-by-one in the loop.\n"
        "Security: The API key is written to the debug log.\nClarity: Fine.\n\n"
        "I would block on the key leak."
    )
    result, heard = await converse(
        ["Correctness", "Security", "Clarity"], {"Correctness": scorecard}
    )
    assert flat(scorecard) in flat(result) and flat(scorecard) in flat(heard)


async def test_a_sample_dialogue_the_user_asked_for_is_kept_whole_and_heard():
    sample = (
        "User: How do I reset my password?\n"
        'Agent: Click "Forgot password" and follow the link we email you.'
    )
    result, heard = await converse(["A", "B"], {"A": f"Here it is:\n\n{sample}"})
    assert flat(sample) in flat(result) and flat(sample) in flat(heard)


async def test_a_common_word_alias_does_not_own_every_line_starting_with_it():
    text = "The venue is free.\nNote: The deposit is due on Friday.\nI can pay it."
    result, heard = await converse(["Ana", "Ben", "Note"], {"Ben": text})
    assert flat(text) in flat(result) and flat(text) in flat(heard)


async def test_a_full_width_colon_is_a_colon():
    result, heard = await converse(
        ["アナ", "ベン"], {"アナ": "予算は三千ユーロです。\nベン：私もそう思います。"}
    )
    assert "予算は三千ユーロです。" in heard and "私もそう思います" not in heard
    shown = re.sub(r"<details.*?</details>", "", result, flags=re.S)
    assert "私もそう思います" not in shown


async def test_the_closing_speaker_is_someone_else_too():
    text = 'Lanterns first.\n\nSummary said: "The group chose lanterns."'
    result, heard = await converse(["Dreamer", "Builder"], {"Dreamer": text}, "Summary")
    assert "Lanterns first." in heard and "The group chose lanterns" not in heard


def test_what_the_guard_holds_back_is_reported_as_text_however_the_stream_splits():
    text = "Mine.\n\nAlice: I take over now.\nStill Alice."
    for size in (1, 4, len(text)):
        guard = mmc.SpeakerGuard("Bob", PANEL)
        filt = mmc.ReplyFilter(guard)
        shown = [p for i in range(0, len(text), size) for p in filt.feed(text[i : i + size])]
        shown += filt.flush()
        assert "".join(t for kind, t in shown if kind == "content") == "Mine.\n\n"
        assert filt.held_back == "Alice: I take over now.\nStill Alice."
        assert filt.stopped_by == "Alice"


@pytest.mark.parametrize(
    "text",
    [
        "Bob, I think you're right.\nCarol, can you check?",  # addressed with a comma
        "Bob: you're right about Friday.",  # addressed, lowercase
        "| Who | Task |\n|---|---|\n| Bob: | tests |",  # a table
        '**Carol:** "Tests first."\nThat is the claim to beat.',  # a quoted claim, bold label
        "Date: Saturday\nPlace: The hut\nCost: 95 euros",  # key-value lines
        "要点：\n予算：三千ユーロ\n日程：未定",  # full-width colons, not names
    ],
)
def test_formats_that_only_look_like_a_script_are_kept_whole(text):
    assert kept_whole(text, "Alice", PANEL)


@pytest.mark.parametrize(
    ("text", "cut_at"),
    [
        ("Fine.\nBob: I agree, ship it.", 1),  # speech: I
        ("Fine.\nBob: Ship it.\nBob: Today.", 1),  # the same voice twice: a script
        ("Fine.\nBob: Ship it.\nCarol: Sure, why not?", 1),  # the next voice speaks
        ('Fine.\nBob said: "ship it."', 1),  # the pipe's transcript form
        ("Fine.\nBob: Tests for the migration come first here.", 1),  # a recital of Bob
    ],
)
def test_a_continued_script_is_cut_where_it_starts(text, cut_at):
    said = {"Bob": "Tests for the migration come first here, then the release."}
    guard = mmc.SpeakerGuard("Alice", [*PANEL, "Dana"], said)
    shown = guard.feed(text) + guard.flush()
    lines = text.splitlines(keepends=True)
    assert shown == "".join(lines[:cut_at]) and guard.held_back == "".join(lines[cut_at:])
