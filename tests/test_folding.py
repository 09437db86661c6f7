"""Issue 26: nothing a participant says is lost. A guard decides what the others hear, never
what the user may read: what it cuts stays in the message, folded under the turn and marked,
out of history. And the echo guard judges on evidence: the stop phrase, a council answer's
own restatement and a closing quote are no echo; a reply looping on itself is cut."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import multi_model_conversation as mmc
from tests.fakes import PipeHarness, RecordingEmitter, Script, config, reply

FOLD = '<details type="cut"'


def speakers(transcript: str) -> list[str]:
    return [t.speaker for t in mmc.split_turns(transcript)]


def streamed(h: PipeHarness) -> list[dict]:
    return [r for r in h.host.requests if r["stream"]]


def viewed(request: dict) -> str:
    return json.dumps(request["messages"], ensure_ascii=False)


def shown(message: str) -> str:
    """The message without its blocks: what reads as the turns."""
    return mmc.BLOCK_RE.sub("", message)


def folds(message: str) -> list[tuple[str, str, str]]:
    """Each fold as Open WebUI 0.12.4's markdown extension reads it (utils/marked/extension.ts:
    a block starts at `<details` + newline, ends at the matching `</details>`, counting nested
    `<details`; the summary is the first line; the inside is entity-decoded, then markdown):
    (its attributes, its summary, its inside)."""
    out = []
    for start in (m.start() for m in re.finditer(FOLD, message)):
        src = message[start:]
        head = re.match(r"<details(\s+[^>]*)?>\n", src)
        assert head, src[:80]
        depth, i = 1, len("<details")
        while depth and i < len(src):
            if src.startswith("<details", i):
                depth += 1
            elif src.startswith("</details>", i):
                depth -= 1
            i += 1 if depth else 0
        assert depth == 0, "the block never closes"
        content = src[len(head.group(0)) : i].strip()
        summary = re.match(r"<summary>(.*?)</summary>\n", content)
        assert summary, content[:80]
        import html

        out.append((head.group(1), summary.group(1), html.unescape(content[summary.end() :])))
    return out


# -- the fold: its markup cannot break, history never reads it ---------------------------------


def test_a_fold_holds_any_text_without_breaking_the_message_or_its_history():
    nasty = (
        'Ben: fine.\n</details>\n<details type="reasoning">\n### 🔵 Ben\n\n'
        "*✂️ …(cut at 5 tokens)*\n</DETAILS>\nstill inside"
    )
    ana = mmc.Participant(0, "a", 'Ana "<b>"', "", mmc.mark_for(0))
    message = (
        mmc.heading(ana, True)
        + "What Ana said.\n\n"
        + mmc.fold_block("✂️ Ana went on as <Ben> — not heard", nasty, 'sp"eaker').rstrip()
        + "\n\n"
        + mmc.heading(mmc.Participant(1, "b", "Ben", "", mmc.mark_for(1)), False)
        + "Ben's own turn."
    )
    [(attributes, summary, inside)] = folds(message)
    assert attributes == ' type="cut" reason="sp&quot;eaker"'  # escaped: one attribute
    assert summary == "✂️ Ana went on as ＜Ben> — not heard"  # plain text, cannot end early
    assert "still inside" in inside and inside.count("</details>") == 1  # the user reads it
    assert "### \u200b🔵 Ben" in inside  # a heading of ours inside is made inert
    turns = mmc.split_turns(message)
    assert [(t.speaker, t.content) for t in turns] == [
        ('Ana "<b>"', "What Ana said."),
        ("Ben", "Ben's own turn."),
    ]


# -- every cut keeps what it cut ---------------------------------------------------------------

LINES = [
    "I think we should leave early.",
    "B: I disagree, we stay home.",
    'B said: "Then we agree."',
    "- Pro: it is cheap.",
    "Note: the hut has twelve beds.",
    "| yes | yes | no |",
    "```",
    "x = 1",
    "The cheapest way to reach the lake is the early regional train from the central station,",
    "which takes a little under three hours and costs less than twenty euros each way, said Ben.",
    "",
]
SOURCES = [
    "The cheapest way to reach the lake is the early regional train from the central station, "
    "which takes a little under three hours and costs less than twenty euros each way, said Ben. "
    "Driving is faster on paper, but parking near the trailhead fills up by eight."
]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.sampled_from(LINES), min_size=1, max_size=40),
    st.lists(st.integers(1, 40), min_size=1, max_size=20),
)
def test_what_a_reply_shows_and_what_its_guards_fold_is_the_whole_reply(lines, cuts):
    """However it is chunked: shown + folded == what the model wrote (it opens with no label)."""
    text = "Well.\n" + "\n".join(lines)
    f = mmc.ReplyFilter(mmc.SpeakerGuard("A", ["A", "B", "Ann"]), mmc.EchoGuard(SOURCES))
    out, at, i = [], 0, 0
    while at < len(text):
        size = cuts[i % len(cuts)]
        out += f.feed(text[at : at + size])
        at, i = at + size, i + 1
        if f.ended:
            break
    out += f.flush()
    said = "".join(t for kind, t in out if kind == "content")
    assert said + f.folded() == text[:at]
    assert bool(f.cut) == bool(f.folded()) == f.ended


async def test_a_turn_that_goes_on_as_another_is_folded_marked_and_never_heard():
    h = PipeHarness(models={"a": "Ana", "b": "Ben", "c": "Chen"})
    h.host.chat_configs["chat-1"] = config("a", "b", "c")
    said = "I would take the train.\nB: No, we drive, it is faster.\nA: Fine."
    h.host.scripts["a"] = Script(streams=[reply(said)])

    result = await h.run()

    a_turn = result[: result.index("### 🔵 B")]
    assert "No, we drive" not in shown(a_turn) and "I would take the train." in a_turn
    [(attributes, summary, inside)] = folds(a_turn)
    assert summary == "✂️ A went on as B — not heard by the others"
    # the line is read to its end, then the stream is closed: the fold holds that line
    assert inside.startswith("B: No, we drive, it is faster.") and "Fine" not in inside
    assert 'reason="speaker"' in attributes
    for request in streamed(h)[1:]:  # the others never hear it
        assert "we drive" not in viewed(request) and "train" in viewed(request)
    assert speakers(result) == ["A", "B", "C"]

    # a follow-up: the saved message holds the fold; history leaves it out again
    history = [
        {"role": "user", "content": "Hello everyone"},
        {"role": "assistant", "content": result},
    ]
    h.host.requests.clear()
    again = await h.run("Go on", history=history)

    assert all("we drive" not in viewed(r) for r in streamed(h))
    assert "we drive" not in again  # a new message; the old one is unchanged in the chat


async def test_a_retried_reply_that_goes_on_as_another_is_folded_and_marked_too():
    h = PipeHarness(models={"a": "Ana", "b": "Ben"})
    h.host.chat_configs["chat-1"] = config("a", "b")
    h.host.scripts["a"] = Script(
        streams=[mmc.ModelCallError("503")],
        completions=["Train it is.\nB: I drive instead.\n"],
    )

    result = await h.run()

    a_turn = result[: result.index("### 🔵 B")]
    assert "Train it is." in shown(a_turn) and "I drive" not in shown(a_turn)
    [(_, summary, inside)] = folds(a_turn)
    assert summary.startswith("✂️ A went on as B") and "I drive instead." in inside
    assert "I drive" not in viewed(streamed(h)[-1])


# -- loops: a reply repeating its own run of words ---------------------------------------------

PARAGRAPH = (
    "We should ship the smaller model first because it answers fast enough on the laptops we "
    "have, costs nothing per request, and lets us learn what users actually ask before we "
    "spend money on a bigger one that we may not need at all in the end, and the team agrees "
    "that the budget is better spent on evaluation than on hardware this quarter."
)


def guarded(reply_text: str, sources: list[str] | None = None, size: int = 5) -> mmc.EchoGuard:
    guard = mmc.EchoGuard(sources or ["Let's plan the launch."])
    out = [guard.feed(reply_text[i : i + size]) for i in range(0, len(reply_text), size)]
    guard.shown = "".join(out) + guard.flush()  # type: ignore[attr-defined]
    return guard


def test_a_paragraph_repeated_until_the_token_cap_ends_after_its_first_copy():
    assert len(PARAGRAPH.split()) > 60
    guard = guarded(" ".join([PARAGRAPH] * 4))
    assert guard.echoed == "loop" and guard.reason == "loop"
    assert guard.shown.strip() == PARAGRAPH  # type: ignore[attr-defined]
    assert guard.cut_text.startswith(PARAGRAPH[:60]) and len(guard.cut_text) == guard.withheld


def test_a_line_looped_ends_after_its_first_copy():
    line = "I think the plan is fine as long as we keep the budget."
    guard = guarded("My answer:\n" + f"{line}\n" * 12)
    assert guard.echoed == "loop"
    assert guard.shown == f"My answer:\n{line}\n"  # type: ignore[attr-defined]


NOT_LOOPS = {
    "a quote of its own earlier sentence": (
        f"{PARAGRAPH[:150]} To repeat the key point: “{PARAGRAPH[:150]}”. That is all."
    ),
    "a summary restating its own phrases": (
        "First, the train is cheap. Second, the hut has twelve beds and sells out early. "
        "Third, the food should not spoil. In short: the train is cheap, the hut has twelve "
        "beds and sells out early, and the food should not spoil. " * 1
    ),
    "a list with repeated structure": "\n".join(
        f"- Pro: option {i} is cheap and fast.\n- Con: option {i} is far from the station."
        for i in range(12)
    ),
    "a table with repeated cells": "| feature | A | B | C |\n|---|---|---|---|\n"
    + "\n".join(f"| option {i} | yes | yes | no | yes | yes | no | yes |" for i in range(25)),
    "the same cell forty times": "| " + " | ".join(["yes"] * 80) + " |",
    "code written twice": "```python\n"
    + "total = total + price_of(item) * quantity  # same line\n" * 12
    + "```\nAnd again:\n```python\n"
    + "total = total + price_of(item) * quantity  # same line\n" * 12
    + "```",
    "a short thanks repeated": "Thank you! " * 40,
}


def test_what_repeats_by_its_nature_is_never_a_loop():
    for name, text in NOT_LOOPS.items():
        guard = guarded(text)
        assert guard.echoed == "" and guard.shown == text, name  # type: ignore[attr-defined]


async def test_a_looping_turn_is_folded_and_the_next_speaker_hears_one_copy():
    h = PipeHarness(models={"a": "Ana", "b": "Ben"})
    h.host.chat_configs["chat-1"] = config("a", "b")
    h.host.scripts["a"] = Script(streams=[reply(" ".join([PARAGRAPH] * 4))])

    result = await h.run()

    a_turn = result[: result.index("### 🔵 B")]
    assert shown(a_turn).count("smaller model") == 1
    [(_, summary, inside)] = folds(a_turn)
    assert summary == "✂️ A began repeating itself — not heard by the others"
    assert inside.startswith("We should ship the smaller model")
    assert viewed(streamed(h)[1]).count("smaller model") == 1


# -- what is no echo ---------------------------------------------------------------------------


async def test_a_reply_that_is_the_stop_phrase_ends_the_conversation():
    phrase = "We have reached a final agreement"
    h = PipeHarness(models={"a": "Ana", "b": "Ben"})
    h.host.chat_configs["chat-1"] = config("a", "b", rounds=3, stop_phrase=phrase)
    h.host.scripts["b"] = Script(streams=[reply(phrase)])

    result = await h.run()

    assert speakers(result) == ["A", "B"] and len(streamed(h)) == 2 and FOLD not in result
    assert result.endswith(f"B said the stop phrase “{phrase}”.*")


def test_the_stop_phrase_is_free_but_a_whole_copy_of_anything_else_is_not():
    phrase = "We have reached a final agreement"
    prompt = f"When the conversation has reached its goal, say “{phrase}” to end it."
    for text, free, echoed in (
        (phrase, [phrase], ""),
        (f"{phrase}.", [phrase], ""),
        (phrase, [], "whole"),
        ("When the conversation has reached its goal", [phrase], "whole"),
        ("say:\n**We have reached a final agreement!**", [phrase], ""),  # on its own line
        ("the conversation has reached its goal, say", ["reached its goal"], "whole"),
    ):
        guard = mmc.EchoGuard([prompt], free=free)
        guard.feed(text)
        guard.flush()
        assert guard.echoed == echoed, (text, free)


def council_answer(own: str) -> str:
    return f"I keep my plan with one change: we add a review step. {own}"


async def test_a_council_revision_may_restate_its_own_answer_but_not_copy_another():
    h = PipeHarness(models={"a": "Ana", "b": "Ben"})
    h.host.chat_configs["chat-1"] = config("a", "b", rounds=2, selection="council")
    ben = (
        "Rent the larger model by the hour instead: a month of trials costs less than one "
        "engineer's week, nobody waits for slow answers, and if the users never come we simply "
        "stop paying, which is a far smaller risk than building on a model that is too weak."
    )
    h.host.scripts["a"] = Script(streams=[reply(PARAGRAPH), reply(council_answer(PARAGRAPH))])
    h.host.scripts["b"] = Script(streams=[reply(ben), reply(council_answer(PARAGRAPH))])

    result = await h.run()

    turns = mmc.split_turns(result)
    assert [t.speaker for t in turns] == ["A", "B", "A", "B"]
    assert turns[2].content == council_answer(PARAGRAPH)  # its own: kept whole
    assert "smaller model" not in turns[3].content  # Ana's answer, copied by Ben: cut
    [(_, summary, inside)] = folds(result)
    assert "B began repeating what was already said" in summary and "smaller model" in inside


async def test_outside_a_council_a_turn_repeating_its_own_earlier_turn_is_still_cut():
    h = PipeHarness(models={"a": "Ana", "b": "Ben"})
    h.host.chat_configs["chat-1"] = config("a", "b", rounds=2)
    h.host.scripts["a"] = Script(streams=[reply(PARAGRAPH), reply(f"Again: {PARAGRAPH}")])

    result = await h.run()

    turns = mmc.split_turns(result)
    assert [t.speaker for t in turns] == ["A", "B", "A", "B"] and turns[2].content == "Again:"
    [(_, summary, _)] = folds(result)
    assert summary == "✂️ A began repeating what was already said — not heard by the others"


async def test_a_closing_turn_may_quote_a_whole_turn():
    h = PipeHarness(models={"a": "Ana", "b": "Ben", "j": "Judge"})
    h.host.chat_configs["chat-1"] = config(
        "a", "b", closing={"model": "j", "alias": "Chair", "prompt": "Sum up."}
    )
    h.host.scripts["a"] = Script(streams=[reply(PARAGRAPH)])
    closing = f"The best argument was A's: “{PARAGRAPH}” I agree with it."
    h.host.scripts["j"] = Script(streams=[reply(closing)])

    result = await h.run()

    assert FOLD not in result and mmc.split_turns(result)[-1].content == closing


# -- the index: built once per run, grown per turn (issue 29) ---------------------------------


def test_the_shared_index_judges_as_a_fresh_one_built_from_the_same_turns():
    rng = __import__("random").Random(3)
    vocab = "the train hut lake food plan early cheap we should book agree".split()
    turns = [mmc.Turn(None, "Plan a trip.")]
    echoes = mmc.EchoIndex()
    for n in range(30):
        speaker = "ABC"[n % 3]
        said = " ".join(rng.choice(vocab) for _ in range(rng.randint(5, 80)))
        copy_from = rng.choice(turns).content if rng.random() < 0.5 else ""
        candidate = f"{said} {copy_from} {said}"
        shown = [*turns, mmc.Turn(None, f"({n} earlier turns left out.)", note=True)]
        fresh = mmc.EchoGuard(mmc.echo_sources("You are X.", shown))
        shared = echoes.guard("You are X.", shown)
        results = []
        for guard in (fresh, shared):
            text = guard.feed(candidate) + guard.flush()
            results.append((text, guard.echoed, guard.cut_text))
        assert results[0] == results[1], n
        turns.append(mmc.Turn(speaker, said))


def test_each_turn_is_indexed_once_per_run_however_many_requests_are_shown_it(monkeypatch):
    added: list[str] = []
    original = mmc.PassageIndex.add
    monkeypatch.setattr(
        mmc.PassageIndex, "add", lambda self, text: (added.append(text), original(self, text))
    )
    turns = [mmc.Turn("AB"[i % 2], f"turn {i} " + "word " * 20) for i in range(50)]
    echoes = mmc.EchoIndex()
    for _ in range(5):  # a council round, tool rounds, a retry: the same turns
        echoes.guard("system", turns)
    assert sorted(added) == sorted([t.content for t in turns] + ["system"])
    added.clear()
    turns.append(mmc.Turn("B", "a new turn"))
    cut = mmc.Turn("A", mmc.cut_middle(turns[0].content, 40))  # as a smaller model is shown it
    for _ in range(3):
        echoes.guard("system", [mmc.Turn(None, "(3 turns left out.)", note=True), cut, *turns])
    assert added == ["(3 turns left out.)", cut.content, "a new turn"]  # only what is new
    added.clear()
    guard = echoes.guard("system", turns, own="A")  # a council revision: its own are no source
    assert added == [] and len(guard.indexes) == 3  # the prompt, the notes, B's turns


# -- no other path loses what a guard held -----------------------------------------------------


async def test_a_turn_that_passes_keeps_what_its_guard_cut_folded_after_the_pass_line():
    h = PipeHarness(models={"a": "Ana", "b": "Ben"})
    h.host.chat_configs["chat-1"] = config("a", "b", pass_allowed=True)
    h.host.scripts["a"] = Script(streams=[reply("PASS\nB: Then I will say it: we drive.")])

    result = await h.run()

    a_part = result[: result.index("### 🔵 B")]
    assert "*⏭️ A passed.*" in a_part and "### 🔴 A" not in a_part
    [(_, summary, inside)] = folds(a_part)
    assert summary.startswith("✂️ A went on as B") and inside.startswith("B: Then")
    assert "we drive" not in viewed(streamed(h)[1]) and "Then I" not in viewed(streamed(h)[1])


async def test_stop_shows_the_words_the_echo_guard_was_holding():
    h = PipeHarness(models={"a": "Ana", "b": "Ben"})
    h.host.chat_configs["chat-1"] = config("a", "b")
    h.host.scripts["a"] = Script(streams=[reply(PARAGRAPH)])
    original, fed = h.host.stream_chat, asyncio.Event()
    held = " ".join(PARAGRAPH.split()[:20])  # a run of A's words that may still become a copy

    async def stalls(form, user):  # B writes the run, then goes quiet until the Stop
        if form["model"] != "b":
            async for piece in original(form, user):
                yield piece
            return
        h.host.requests.append({**form, "stream": True})
        for piece in reply(f"Well. {held}")[:-1]:
            yield piece
        fed.set()
        await asyncio.Event().wait()

    h.host.stream_chat = stalls
    emitter = RecordingEmitter(h.clock)
    run = asyncio.ensure_future(h.run(emitter=emitter))
    await fed.wait()
    for _ in range(20):
        await asyncio.sleep(0)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run

    final = emitter.contents()[-1]
    assert re.search(rf"Well\. {held}\s+\*⏹️ …\(stopped\)\*$", final), final[-300:]


async def test_a_council_indexes_each_turn_once_for_all_its_lanes_and_rounds(monkeypatch):
    added: list[str] = []
    original = mmc.PassageIndex.add
    monkeypatch.setattr(
        mmc.PassageIndex, "add", lambda self, text: (added.append(text), original(self, text))
    )
    h = PipeHarness(models={"a": "Ana", "b": "Ben", "c": "Chen"})
    h.host.chat_configs["chat-1"] = config("a", "b", "c", rounds=3, selection="council")

    result = await h.run()

    said = [t.content for t in mmc.split_turns(result) if t.speaker]
    assert len(said) == 9 and len(streamed(h)) == 9
    turns_added = [text for text in added if text in said]
    assert sorted(turns_added) == sorted(said[:6])  # rounds 1-2, each once (round 3 unread)
    prompts = [r["messages"][0]["content"] for r in streamed(h)]
    assert sorted(t for t in added if t in prompts) == sorted(set(prompts))


def test_no_reply_of_the_guard_corpus_is_cut_as_a_loop():
    """71 legitimate replies in many formats and 43 real SmolLM2 impersonations: none loops."""
    corpus = json.loads((Path(__file__).parent / "guard_corpus.json").read_text())
    items = next(v for v in corpus.values() if isinstance(v, list))
    assert len(items) > 100
    for item in items:
        guard = guarded(item["text"])
        assert guard.echoed == "" and guard.shown == item["text"], item["id"]  # type: ignore[attr-defined]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from("abc"), min_size=1, max_size=60))
def test_append_finds_the_longest_earlier_repeat_and_its_first_place(words):
    """`PassageIndex.append` against brute force: the longest run ending at the new word that
    also ends earlier, and how far back its first occurrence ends."""
    index = mmc.PassageIndex()
    for i, word in enumerate(words):
        length, back = index.append(word)
        best = 0
        for n in range(i, 0, -1):
            tail = words[i - n + 1 : i + 1]
            ends = [j for j in range(n - 1, i) if words[j - n + 1 : j + 1] == tail]
            if ends:
                best, first = n, ends[0]
                break
        assert length == best, (words[: i + 1], length, best)
        if best:
            assert back == i - first, (words[: i + 1], back, i - first)


@settings(max_examples=500, deadline=None)
@given(
    st.lists(st.sampled_from("ab"), max_size=16),
    st.lists(st.sampled_from("ab"), max_size=16),
    st.lists(st.sampled_from("ab"), min_size=1, max_size=16),
    st.integers(0, 16),
)
@example(list("babababb"), list("aaababbbab"), list("baabbbabab"), 5)  # a split mid-run
def test_a_run_matched_while_the_index_grows_is_never_longer_than_the_text(s1, s2, reply, at):
    """A council lane's guard keeps its run while another lane adds a turn to the shared index:
    the runs it finds stay true (never longer than a run in the sources), and at least as long
    as the first source alone gives."""

    def longest(sources: list[list[str]], ending: list[str]) -> int:
        best = 0
        for src in sources:
            for n in range(1, len(ending) + 1):
                tail = ending[-n:]
                if any(src[j : j + n] == tail for j in range(len(src) - n + 1)):
                    best = max(best, n)
        return best

    index = mmc.PassageIndex([" ".join(s1)])
    state = length = 0
    for i, word in enumerate(reply):
        if i == at:
            index.add(" ".join(s2))
        state, length = index.step(state, length, word)
        ending = reply[: i + 1]
        assert longest([s1], ending) <= length <= longest([s1, s2], ending), (i, length)
