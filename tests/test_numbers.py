"""Issue 27: one set of numbers. The status, the end line and the usage table agree on turns and
seconds; time the user's tab was asked (setup dialog, moderator prompt) is reported apart, and
while the moderator prompt is open the status says so."""

from __future__ import annotations

import asyncio
import re

import multi_model_conversation as mmc
from tests.fakes import Overlay, PipeHarness, RecordingEmitter, Script, config, reply


def usage_rows(transcript: str) -> dict[str, list[str]]:
    """The usage table's rows by speaker (the model under the name left out)."""
    rows = {}
    for line in transcript[transcript.index('<details type="usage"') :].splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and cells[1][:1].isdigit():
            rows[mmc.md_unescape(re.sub(r"<br>.*", "", cells[0]).strip("*"))] = cells[1:]
    return rows


def usage_seconds(transcript: str) -> str:
    return re.search(r"<summary>Usage: [\d,]+ tokens, (.+?)</summary>", transcript).group(1)


def slow(text: str, reasoning: str = "") -> Script:
    return Script(streams=[reply(text, reasoning)] * 3, chunk_delay=0.5)


async def test_a_council_with_reviews_and_a_chair_counts_the_same_turns_and_seconds_everywhere():
    h = PipeHarness(models={"a": "Ana", "b": "Ben", "c": "Chen", "j": "Judge"})
    h.pipe.valves.SHOW_USAGE = True
    h.host.chat_configs["chat-1"] = config(
        "a",
        "b",
        "c",
        selection="council",
        peer_review=True,
        closing={"model": "j", "alias": "Chair", "prompt": "Sum up."},
    )
    for model, said in (("a", "ANSWER-A"), ("b", "ANSWER-B"), ("c", "ANSWER-C")):
        h.host.scripts[model] = Script(
            streams=[reply(f"{said} one two three"), reply("RANKING: A, B")], chunk_delay=0.5
        )
    h.host.scripts["j"] = slow("The council agrees.")
    emitter = RecordingEmitter(h.clock)

    result = await h.run("Best tea?", emitter=emitter)

    status = emitter.statuses()[-1]
    match = re.fullmatch(r"3 participants, 3 turns, 3 reviews, 1 closing turn, (\d+ s)", status)
    assert match, status
    rows = usage_rows(result)
    assert rows["Total"][0] == "7", rows  # 3 answers + 3 reviews + 1 closing
    assert {k: v[0] for k, v in rows.items() if k != "Total"} == {
        "A": "1",
        "B": "1",
        "C": "1",
        "A (review)": "1",
        "B (review)": "1",
        "C (review)": "1",
        "Chair (closing)": "1",
    }
    assert usage_seconds(result) == match.group(1)  # the usage header says the status's time
    # The total is the conversation's time: the answers ran at once, so the rows add up to more.
    seconds = {k: float(v[3]) for k, v in rows.items()}
    assert sum(s for k, s in seconds.items() if k != "Total") > seconds["Total"] + 1


async def test_passes_and_the_end_line_agree_with_the_status_and_the_usage():
    h = PipeHarness(models={"a": "Ana", "b": "Ben"})
    h.pipe.valves.SHOW_USAGE = True
    h.host.chat_configs["chat-1"] = config("a", "b", rounds=2, pass_allowed=True)
    h.host.scripts["a"] = Script(streams=[reply("I think tea."), reply("PASS")], chunk_delay=0.2)
    h.host.scripts["b"] = Script(streams=[reply("Coffee."), reply("Fine, tea.")], chunk_delay=0.2)
    emitter = RecordingEmitter(h.clock)

    result = await h.run("Tea or coffee?", emitter=emitter)

    status = emitter.statuses()[-1]
    assert re.fullmatch(r"2 participants, 3 turns, 1 passed, \d+ s", status), status
    rows = usage_rows(result)
    assert (rows["A"][0], rows["B"][0], rows["Total"][0]) == ("1", "2", "3"), rows
    assert "*🏁 The conversation ended after 3 turns, 1 passed:" in result
    assert usage_seconds(result) == status.rsplit(", ", 1)[1]


class SlowAnswer:
    """The user answers the moderator prompt `seconds` later (fake time); the status meanwhile
    is recorded."""

    def __init__(self, h: PipeHarness, emitter: RecordingEmitter, seconds: float) -> None:
        self.h, self.emitter, self.seconds = h, emitter, seconds
        self.status_while_open: list[str] = []

    async def __call__(self, event: dict):
        for _ in range(20):
            await asyncio.sleep(0)  # the emitter sends what was posted before the prompt
        self.status_while_open.append(self.emitter.statuses()[-1])
        self.h.clock.advance(self.seconds)
        return ""


async def test_time_at_the_moderator_prompt_is_waiting_not_talking_and_the_status_says_so():
    h = PipeHarness(models={"a": "Ana", "b": "Ben"})
    h.pipe.valves.SHOW_USAGE = True
    h.host.chat_configs["chat-1"] = config("a", "b", rounds=2, moderator="between_rounds")
    h.host.scripts["a"] = slow("Tea, and quickly.")
    h.host.scripts["b"] = slow("Coffee, and slowly.")
    emitter = RecordingEmitter(h.clock)
    user = SlowAnswer(h, emitter, 130)

    result = await h.run("Tea or coffee?", emitter=emitter, event_call=user)

    assert user.status_while_open == ["Waiting for you · Before round 2 of 2"]
    status = emitter.statuses()[-1]
    match = re.fullmatch(
        r"2 participants, 4 turns, (\d+ s) talking, 2 min 10 s waiting for you", status
    )
    assert match, status
    assert int(match.group(1).split()[0]) < 30, status  # four turns of a few seconds each
    assert usage_seconds(result) == match.group(1)


async def test_time_in_the_setup_dialog_is_waiting_too_and_a_quick_run_says_nothing_of_it():
    h = PipeHarness(models={"m1": "One", "m2": "Two"})
    emitter = RecordingEmitter(h.clock)
    answer = config("m1", "m2")

    async def slow_user(event: dict):
        h.clock.advance(45)
        return await Overlay(answer)(event)

    await h.run("Hello", emitter=emitter, event_call=slow_user)
    assert re.fullmatch(
        r"2 participants, 2 turns, \d+ s talking, 45 s waiting for you", emitter.statuses()[-1]
    ), emitter.statuses()

    quick = RecordingEmitter(h.clock)
    await h.run("Again", emitter=quick)  # the saved setup: no dialog, no waiting
    assert re.fullmatch(r"2 participants, 2 turns, \d+ s", quick.statuses()[-1])


def test_durations_read_as_people_say_them():
    assert [mmc.duration(s) for s in (0.4, 13, 59.4, 60, 125, 7200)] == [
        "0 s",
        "13 s",
        "59 s",
        "1 min",
        "2 min 5 s",
        "120 min",
    ]
