"""Issue 21: a council round (at once, unseen, revealed in turn), peer review, a human moderator
between rounds, hand-offs by @mention, per-participant sampling, and a status that says where
it is."""

from __future__ import annotations

import asyncio
import json
import re

import multi_model_conversation as mmc
from tests.fakes import PipeHarness, RecordingEmitter, Script, config, reply


def speakers(transcript: str) -> list[str]:
    return re.findall(r"^### \S+ (.+)$", transcript, re.MULTILINE)


def streamed(h: PipeHarness) -> list[dict]:
    return [r for r in h.host.requests if r["stream"]]


def viewed(request: dict) -> str:
    return json.dumps(request["messages"], ensure_ascii=False)


def counting_streams(h: PipeHarness) -> dict[str, int]:
    """Counts how many model streams run at the same time."""
    seen = {"now": 0, "most": 0}
    original = h.host.stream_chat

    async def counted(form, user):
        seen["now"] += 1
        seen["most"] = max(seen["most"], seen["now"])
        try:
            async for piece in original(form, user):
                yield piece
        finally:
            seen["now"] -= 1

    h.host.stream_chat = counted
    return seen


# -- the council round --------------------------------------------------------------------------


async def test_a_council_round_runs_everyone_at_once_unseen_and_shows_them_in_turn():
    h = PipeHarness(models={"a": "Ana", "b": "Ben", "c": "Chen"})
    h.host.chat_configs["chat-1"] = config("a", "b", "c", selection="council")
    for m, words in (("a", 12), ("b", 4), ("c", 8)):
        text = " ".join(f"{m}{i}" for i in range(words))
        h.host.scripts[m] = Script(streams=[reply(text)], chunk_delay=0.05)
    seen = counting_streams(h)
    emitter = RecordingEmitter(h.clock)

    result = await h.run("Is tea better than coffee?", emitter=emitter)

    assert speakers(result) == ["A", "B", "C"] and seen["most"] == 3
    for request in streamed(h):  # nobody hears another's answer of the same round
        assert not re.search(r"[abc]\d", viewed(request))
        assert "at the same time" in request["messages"][0]["content"]
    assert result.index("a11") < result.index("### 🔵 B") < result.index("b3") < result.index("c7")
    # Every frame is an append to what the tab shows, and the tab ends with the transcript.
    kinds = [e["type"] for _, e in emitter._content_events()]
    assert kinds.count("chat:message:delta") > 5 and "chat:message" not in kinds[1:], kinds
    assert emitter.contents()[-1] == result
    assert "Round 1 of 1 · A, B and C answer at once" in emitter.statuses()


async def test_a_council_follow_up_hears_the_first_round_and_another_round_runs_at_once():
    h = PipeHarness(models={"a": "Ana", "b": "Ben"})
    h.host.chat_configs["chat-1"] = config("a", "b", rounds=2, selection="council")
    seen = counting_streams(h)

    result = await h.run("Topic")

    assert speakers(result) == ["A", "B", "A", "B"] and seen["most"] == 2
    third = streamed(h)[2]  # round 2: A hears both answers of round 1
    assert "a reply 1" in viewed(third) and "b reply 2" in viewed(third)
    assert "b reply 4" not in viewed(streamed(h)[2]) and "a reply 3" not in viewed(streamed(h)[3])


async def test_stop_during_a_council_round_keeps_what_was_shown_and_cancels_the_rest():
    h = PipeHarness(models={"a": "Ana", "b": "Ben"})
    h.host.chat_configs["chat-1"] = config("a", "b", selection="council")
    h.host.scripts["b"] = Script(streams=[reply("quick answer")])
    original = h.host.stream_chat
    open_streams = []

    async def a_hangs(form, user):
        if form["model"] != "a":
            async for piece in original(form, user):
                yield piece
            return
        open_streams.append(form)
        try:
            for piece in reply("slow start")[:2]:
                yield piece
            await asyncio.Event().wait()  # A is still thinking when the user presses Stop
        finally:
            open_streams.remove(form)

    h.host.stream_chat = a_hangs
    emitter = RecordingEmitter(h.clock)

    task = asyncio.ensure_future(h.run(emitter=emitter))
    for _ in range(200):
        await asyncio.sleep(0)
    h.clock.advance(1)
    for _ in range(50):
        await asyncio.sleep(0)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass

    shown = emitter.contents()[-1]
    assert shown.startswith("### 🔴 A\n\nslow") and mmc.STOPPED_LINE in shown
    assert "quick answer" not in shown  # B finished aside and was never shown
    assert open_streams == []  # A's stream was closed


# -- peer review --------------------------------------------------------------------------------


async def test_peer_review_ranks_the_others_unnamed_then_the_chair_synthesizes():
    h = PipeHarness(models={"a": "Ana", "b": "Ben", "c": "Chen", "j": "Chair"})
    h.host.chat_configs["chat-1"] = config(
        "a",
        "b",
        "c",
        selection="council",
        peer_review=True,
        closing={"model": "j", "alias": "Chair", "prompt": "Synthesize the best answer."},
    )
    h.host.scripts["a"] = Script(streams=[reply("ANSWER-A"), reply("B is best.\nRANKING: B, A")])
    h.host.scripts["b"] = Script(streams=[reply("ANSWER-B"), reply("RANKING: A, B")])
    h.host.scripts["c"] = Script(streams=[reply("ANSWER-C"), reply("Both fine.\nRANKING: A")])

    result = await h.run("Best tea?")

    # Review turns say what they are (issue 27); the answers and the chair's turn as they are.
    review = [f"{x} · 🏅 review" for x in "ABC"]
    assert speakers(result) == ["A", "B", "C", *review, "Chair"]
    # History still reads each review as its participant's own turn.
    assert [t.speaker for t in mmc.split_turns(result)] == [*"ABC", *"ABC", "Chair"]
    # ... and only the label goes: an alias that merely says "review" stays whole.
    assert [t.speaker for t in mmc.split_turns("### 🔴 Peer review\n\nhi")] == ["Peer review"]
    reviews = streamed(h)[3:6]
    for request, own in zip(reviews, ("ANSWER-A", "ANSWER-B", "ANSWER-C"), strict=True):
        text = viewed(request)
        assert own not in text  # never its own answer
        assert "Response A" in text and "Response B" in text
        assert not re.search(r"(Ana|Ben|Chen|[ABC]) said", text)  # no names on answers
    # Reviewer A saw B as Response A and C as Response B: "B, A" ranks C first, then B.
    table = result[result.index("Peer review, combined") :]
    rows = re.findall(r"^\| (\d) \| (\w) \| (\d+) \| (.*) \|$", table, re.MULTILINE)
    # Each reviewer saw two answers: a 1st place is worth 2, a 2nd 1. C ranked only one.
    assert rows == [
        ("1", "A", "4", "B: 1st, C: 1st"),
        ("2", "C", "3", "A: 1st, B: 2nd"),
        ("3", "B", "1", "A: 2nd"),
    ], rows
    assert result.count("Peer review, combined") == 1
    chair = streamed(h)[-1]
    assert "Synthesize" in viewed(chair) and "Points" in viewed(chair)
    assert "ANSWER-A" in viewed(chair) and "ANSWER-C" in viewed(chair)


def test_a_ranking_is_the_last_ranking_line_and_unknown_letters_are_ignored():
    assert mmc.parse_ranking("RANKING: A, B\nOn reflection:\nRANKING: B > A", 2) == [1, 0]
    assert mmc.parse_ranking("**Ranking:** C, A, Z, A", 3) == [2, 0]
    assert mmc.parse_ranking("I rank A first.", 2) == []


# -- the moderator ------------------------------------------------------------------------------


class Prompt:
    """Answers the host's `input` prompts like the user does, one answer per round boundary."""

    def __init__(self, *answers) -> None:
        self.answers = list(answers)
        self.asked: list[dict] = []

    async def __call__(self, event: dict):
        self.asked.append(event)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        if answer == "never":
            await asyncio.Event().wait()
        return answer


async def test_the_moderators_words_join_the_conversation_and_every_later_speaker_hears_them():
    h = PipeHarness(models={"a": "Ana", "b": "Ben"})
    h.host.chat_configs["chat-1"] = config("a", "b", rounds=3, moderator="between_rounds")
    prompt = Prompt("Focus on price, please.", "")

    result = await h.run("Tea or coffee?", event_call=prompt)

    assert [e["type"] for e in prompt.asked] == ["input", "input"]
    assert "Anything to add before round 2?" in prompt.asked[0]["data"]["message"]
    assert speakers(result) == ["A", "B", "Ann", "A", "B", "A", "B"]
    assert "### 🗣️ Ann\n\nFocus on price, please." in result
    assert all("Focus on price, please." in viewed(r) for r in streamed(h)[2:])
    assert "Focus on price" not in viewed(streamed(h)[1])
    # A follow-up reads the words back as the user's, not as a participant's.
    turns = mmc.split_turns(result)
    assert mmc.Turn(None, "Focus on price, please.", between_rounds=True) in turns


async def test_end_closes_and_cancel_timeout_or_failure_go_on():
    h = PipeHarness(models={"a": "Ana", "b": "Ben"})
    h.host.chat_configs["chat-1"] = config(
        "a", "b", rounds=3, moderator="between_rounds", closing={"alias": "Judge"}
    )
    ended = await h.run(event_call=Prompt(" END "))
    assert speakers(ended) == ["A", "B", "Judge"]
    assert ended.endswith("ended after 2 turns: the moderator ended it.*")

    h.pipe.valves.MODERATOR_TIMEOUT = 5
    prompt = Prompt(False, "never")
    task = asyncio.ensure_future(h.run(event_call=prompt))
    for _ in range(300):
        await asyncio.sleep(0)
        if len(prompt.asked) == 2:
            h.clock.advance(6)
    went_on = await task
    assert speakers(went_on) == ["A", "B", "A", "B", "A", "B", "Judge"]

    broken = await h.run(event_call=Prompt(ConnectionError("tab closed"), {"error": "gone"}))
    assert speakers(broken) == ["A", "B", "A", "B", "A", "B", "Judge"]


# -- hand-offs, sampling, where it is -----------------------------------------------------------


async def test_a_participant_ending_with_an_at_mention_hands_the_next_turn_to_it():
    h = PipeHarness(models={"a": "Ana", "b": "Ben", "c": "Chen"})
    h.host.chat_configs["chat-1"] = config("a", "b", "c", rounds=2, selection="mention")
    h.host.scripts["a"] = Script(streams=[reply("I think so.\n\n@C, what do you say?")])
    h.host.scripts["c"] = Script(streams=[reply("Agreed. Ask @A, not me. @b?")])

    result = await h.run("@a starts.")

    assert speakers(result)[:3] == ["A", "C", "B"]
    # An @mention earlier in a turn, not in its last paragraph, hands nothing over.
    plain = PipeHarness(models={"a": "Ana", "b": "Ben", "c": "Chen"})
    plain.host.chat_configs["chat-1"] = config("a", "b", "c", selection="mention")
    plain.host.scripts["a"] = Script(streams=[reply("@C said so earlier.\n\nAnyway, fine.")])
    assert speakers(await plain.run("go")) == ["A", "B", "C"]


async def test_each_participant_samples_at_its_own_temperature_else_the_valves():
    h = PipeHarness(models={"a": "Ana", "b": "Ben"})
    cfg = config("a", "b")
    cfg["participants"][0].update(temperature=0.2, top_p=0.5)
    h.host.chat_configs["chat-1"] = cfg

    await h.run()

    a, b = streamed(h)
    assert (a["temperature"], a["top_p"]) == (0.2, 0.5)
    assert (b["temperature"], b["top_p"]) == (1.0, 0.8)
    stored = h.host.chat_configs["chat-1"]["participants"][0]
    assert stored["temperature"] == 0.2


async def test_headings_can_name_the_model_behind_each_alias_and_history_reads_the_alias():
    h = PipeHarness(models={"a": "Model One", "b": "Model Two"})
    h.pipe.valves.SHOW_MODELS = True
    h.host.chat_configs["chat-1"] = config("a", "b")

    result = await h.run()

    assert "### 🔴 A <sub>Model One</sub>" in result
    assert [t.speaker for t in mmc.split_turns(result)] == ["A", "B"]


async def test_the_council_preset_answers_at_once_reviews_and_a_chair_sums_up():
    h = PipeHarness(models={"a": "Ana", "b": "Ben", "c": "Chen"})
    h.host.chat_configs["chat-1"] = {
        "preset": "council",
        "participants": [{"model": "a"}, {"model": "b"}, {"model": "c"}],
    }
    seen = counting_streams(h)

    result = await h.run("What is the best first programming language?")

    names = ["Analyst", "Expert", "Contrarian"]
    assert speakers(result) == [*names, *(f"{n} · 🏅 review" for n in names), "Chair"]
    assert seen["most"] == 3 and "Peer review" in result
    assert "Synthesize the best answer" in streamed(h)[-1]["messages"][0]["content"]
