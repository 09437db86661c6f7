"""Issue 29.8-10: the manager's answer is read as a person would read it, an echo of its own
prompt is no pick, and a manager that cannot pick costs at most two requests a run."""

from __future__ import annotations

import pytest

import multi_model_conversation as mmc
from tests.fakes import PipeHarness, RecordingEmitter, Script

ALIASES = ["Alex", "Ben", "Ana"]
ALEX, BEN, ANA = 0, 1, 2
WORDING = mmc.manager_wording(mmc.DEFAULT_MANAGER_PROMPT) if hasattr(mmc, "manager_wording") else ""


def pick(answer: str, last: int | None) -> int | None:
    args = (WORDING,) if WORDING else ()  # main before issue 29 took no wording
    return mmc.manager_pick(mmc.strip_reasoning(answer).strip(), ALIASES, last, *args)[0]


@pytest.mark.parametrize(
    ("answer", "last"),
    [
        ("Ben, since Ana just spoke.", ANA),  # the issue's: the last speaker named as a reason
        ("Ben, since Ana just spoke.", ALEX),
        ("Ben, because Alex asked him a question.", ANA),
        ("Ben should speak next.", ALEX),
        ("I think Ben should speak next, since Alex just spoke.", ALEX),
        ("The last speaker was Alex, so Ben should speak next.", ALEX),
        ("Alex spoke last; Ben should answer him.", ALEX),
        ("After Alex, Ben should speak.", ALEX),
        ("Let's hear from Ben.", ALEX),
        ("Next speaker: Ben", ALEX),
        ("**Ben**", ALEX),
        ("I pick **Ben**.", ALEX),
        ("My pick is Ben.", ALEX),
        ("I choose Ben.", None),
        ("The next speaker should be Ben.", ALEX),
        ("Ben has the most to add here.", ALEX),
        ("Ben would move the conversation forward most.", ALEX),
        ("Ben, the conversation has reached a point where he should respond.", ALEX),
        ("It's Ben's turn.", ALEX),
        ("Ben (Alex spoke last).", ALEX),
        ("Ben, not Ana.", ALEX),
        ("Ben rather than Ana, who has said enough.", ALEX),
        ("Ben, to respond to Ana's point about the budget.", ALEX),
        ("I pick Ben because he hasn't spoken yet.", ALEX),
        ("Ben — he has not spoken yet.", ALEX),
        ("Who should speak next? Ben.", ALEX),
        ("Nobody has spoken yet. Ben should start.", None),
        ("<think>Alex spoke, Ana agreed…</think>Ben", ALEX),
        ("Alex, Ben and Ana could all speak.\nBen", ALEX),  # the lone name on the last line
    ],
)
def test_natural_answers_pick_the_one_they_name(answer, last):
    assert pick(answer, last) == BEN


@pytest.mark.parametrize(
    ("answer", "last"),
    [
        # The issue's three, from SmolLM2 in a real Open WebUI
        ("The last speaker is Ben.", ALEX),
        ("The next participant should choose Alex, Ben.", ANA),
        ("If the conversation has reached its goal and should end now, choose 'Ana'.", ALEX),
        # and their kin
        ("The last speaker was 'Ben'.", ALEX),
        ("The last speaker was Ben. Who should speak next?", ALEX),
        ("Choose exactly one of: Alex, Ben, Ana", None),
        ("Choose exactly one of: Alex, Ben, Ana\n\nAnswer with the name only.", ALEX),
        ("Alex, Ben, Ana", None),
        ("Alex or Ben could speak.", ANA),
        ("Ben or Ana.", ALEX),
        ("What a great question! Let's explore the possibilities with Alex, Ben, and Ana.", ALEX),
        ("If the conversation should end now, answer Ben instead.", ALEX),
        ("Ben: I agree with Ana.", ALEX),  # a history line echoed: two names
        ("Alex.", ALEX),  # the last speaker again
        ("I am not sure who should go.", ALEX),
        ("<think>Ben is the obvious", ALEX),  # cut while thinking: no answer yet
    ],
)
def test_echoes_lists_and_non_answers_pick_no_one(answer, last):
    assert pick(answer, last) is None


def test_what_must_not_change_the_old_readings():
    old = ["Alice", "Bob", "Carol"]
    read = mmc.manager_pick
    assert read("Carol", old, None)[0] == 2
    assert read("I pick **Bob**.", old, 0)[0] == 1
    assert read("Ana, Ben and Carol could all speak.\nBob", old, 0)[0] == 1
    assert read("Choose exactly one of: Alice, Bob, Carol", old, None)[0] is None
    assert read("The last speaker was 'Alice'. Who should speak next?", old, 0)[0] is None
    assert "has just spoken" in read("Alice", old, 0)[1]
    assert "names none" in read("the weather is nice", old, 0)[1]


def test_a_custom_prompt_is_its_own_echo():
    template = "The person who talked most recently is {last_speaker}. {history} Who next?"
    wording = mmc.manager_wording(template)
    echo = "The person who talked most recently is Ben."
    assert mmc.manager_pick(echo, ALIASES, ALEX, wording)[0] is None
    assert (
        mmc.manager_pick("Ben, since Alex talked most recently.", ALIASES, ALEX, wording)[0] == BEN
    )


# -- what a manager that cannot pick costs -----------------------------------------------------


def three(**extra) -> dict:
    people = [{"model": m, "alias": a} for m, a in (("a", "Alex"), ("b", "Ben"), ("c", "Ana"))]
    return {"rounds": 3, "selection": "manager", "manager_model": "boss", "participants": people}


async def test_a_manager_that_never_names_anyone_costs_two_requests_per_run():
    h = PipeHarness(models={"a": "A", "b": "B", "c": "C", "boss": "Boss"})
    h.host.chat_configs["chat-1"] = three()
    h.host.scripts["boss"] = Script(completions=["I am not sure."] * 40)
    emitter = RecordingEmitter(h.clock)

    await h.run(emitter=emitter)

    manager_calls = [r for r in h.host.requests if not r["stream"]]
    assert len(manager_calls) == 2  # main asked 3 times for each of 9 picks: 27
    assert [r["model"] for r in h.host.requests if r["stream"]] == ["a", "b", "c"] * 3
    lines = [s for s in emitter.statuses() if s.startswith("Manager")]
    assert lines == [
        "Manager named no participant (last: 'I am not sure.'); round robin from here (Alex next)."
    ]
    assert "Turn 2 of 9 · Ben (round robin)" in emitter.statuses()

    await h.run("And now?", emitter=RecordingEmitter(h.clock))  # a new run asks it again
    assert len([r for r in h.host.requests if not r["stream"]]) == 4


async def test_a_manager_that_fails_twice_is_not_asked_again():
    h = PipeHarness(models={"a": "A", "b": "B", "c": "C", "boss": "Boss"})
    h.host.chat_configs["chat-1"] = three()
    h.host.scripts["boss"] = Script(completions=[mmc.ModelCallError("HTTP 503")] * 9)

    await h.run()

    assert len([r for r in h.host.requests if not r["stream"]]) == 2


async def test_the_echoes_of_the_issue_are_not_heard_as_picks():
    h = PipeHarness(models={"a": "A", "b": "B", "c": "C", "boss": "Boss"})
    h.host.chat_configs["chat-1"] = three()
    h.host.scripts["boss"] = Script(
        completions=[
            "Ben",
            "The last speaker is Ben.",
            "If the conversation has reached its goal and should end now, choose 'Ana'.",
            "Ana",
        ]
    )

    result = await h.run()

    assert "The last speaker is Ben." not in result  # never shown as a reason
    assert "choose 'Ana'" not in result
    assert len([r for r in h.host.requests if not r["stream"]]) == 3


async def test_what_must_not_change_a_manager_that_picks_is_asked_once_a_turn():
    h = PipeHarness(models={"a": "A", "b": "B", "c": "C", "boss": "Boss"})
    h.host.chat_configs["chat-1"] = three()
    h.host.scripts["boss"] = Script(completions=["Ben", "Ana", "Alex"] * 3)
    emitter = RecordingEmitter(h.clock)

    await h.run(emitter=emitter)

    assert len([r for r in h.host.requests if not r["stream"]]) == 9
    assert [r["model"] for r in h.host.requests if r["stream"]] == ["b", "c", "a"] * 3
    assert not any("round robin" in s for s in emitter.statuses())


def test_the_status_marks_the_fallback_also_when_the_user_named_the_first_speaker():
    import random

    from tests.fakes import FakeClock

    async def never(messages, max_tokens):
        raise AssertionError("not asked")

    people = [mmc.Participant(i, a.lower(), a, "", mmc.mark_for(i)) for i, a in enumerate(ALIASES)]
    cfg = mmc.parse_config(
        {"rounds": 2, "selection": "manager", "participants": [{"model": "x"}] * 3}, 20
    )
    manager = mmc.ManagerChoice(never, lambda last: "", "", ALIASES, lambda *a, **k: None)
    policy = mmc.NamedFirst(manager, BEN)
    d = mmc.make_direction(cfg, people, None, [], manager, random.Random(1), FakeClock())
    d.policy = policy
    assert d.where([mmc.TurnPlan(people[BEN])]) == "Turn 1 of 6 · Ben"
    manager.retired = True
    assert d.where([mmc.TurnPlan(people[BEN])]) == "Turn 1 of 6 · Ben (round robin)"
