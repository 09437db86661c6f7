"""Issue 29.6: "everyone passed" counts those who still speak; a participant sitting out (its
model cannot hold the conversation) neither passes nor blocks the ending."""

from __future__ import annotations

import random

import multi_model_conversation as mmc
from tests.fakes import FakeClock, PipeHarness, Script, config

ALIASES = ["Ana", "Ben", "Cy"]


def direction(**raw) -> mmc.Direction:
    cfg = mmc.parse_config(
        {"participants": [{"model": a.lower(), "alias": a} for a in ALIASES], **raw}, 20
    )
    people = [mmc.Participant(i, a.lower(), a, "", mmc.mark_for(i)) for i, a in enumerate(ALIASES)]
    return mmc.make_direction(cfg, people, None, [], None, random.Random(1), FakeClock())


def test_those_who_still_speak_all_passing_ends_it():
    d = direction(rounds=4, pass_allowed=True)
    ana, ben, cy = d.participants
    d.heard(mmc.TurnPlan(ana), mmc.Heard("", benched=True), 0)
    d.heard(mmc.TurnPlan(ben), mmc.Heard("PASS", passed=True), 0)
    assert d.reason == ""
    d.heard(mmc.TurnPlan(cy), mmc.Heard("PASS", passed=True), 0)
    assert d.reason == "everyone passed" and d.outcome == "everyone passed"


def test_what_must_not_change_sitting_out_or_speaking_is_no_pass():
    d = direction(rounds=4, pass_allowed=True)
    ana, ben, cy = d.participants
    d.heard(mmc.TurnPlan(ana), mmc.Heard("", benched=True), 0)
    assert d.reason == ""  # nobody passed yet: sitting out alone ends nothing
    d.heard(mmc.TurnPlan(ben), mmc.Heard("PASS", passed=True), 0)
    d.heard(mmc.TurnPlan(cy), mmc.Heard("I do have a point."), 0)
    d.heard(mmc.TurnPlan(ben), mmc.Heard("PASS", passed=True), 0)
    assert d.reason == ""  # Cy spoke since: only Ben passed after it
    # A reply that failed (no text, not sitting out) is no pass either: Cy must still pass.
    d.heard(mmc.TurnPlan(cy), mmc.Heard(""), 0)
    assert d.reason == ""
    # Without anyone sitting out, all three must pass (as before).
    e = direction(rounds=4, pass_allowed=True)
    for who in e.participants[:2]:
        e.heard(mmc.TurnPlan(who), mmc.Heard("PASS", passed=True), 0)
    assert e.reason == ""


async def test_a_run_ends_when_the_two_who_speak_pass_and_the_third_sits_out():
    """The issue's run: two passed 8 times, the third sat out, all 4 rounds went on."""
    h = PipeHarness(models={"a": "Ana", "b": "Ben", "c": "Cy"})
    h.host.records["a"] = mmc_record(num_ctx=1000)
    h.host.chat_configs["chat-1"] = {
        "rounds": 4,
        "pass_allowed": True,
        "participants": [
            {"model": "a", "alias": "Ana", "system_message": "You are Ana. " * 400},
            {"model": "b", "alias": "Ben"},
            {"model": "c", "alias": "Cy"},
        ],
    }
    h.host.scripts["b"] = Script(default_text="PASS")
    h.host.scripts["c"] = Script(default_text="PASS")

    result = await h.run("Anything to add?")

    assert [r["model"] for r in h.host.requests] == ["b", "c"]
    assert "sits out the rest" in result
    assert result.endswith("2 passed: everyone passed.*"), result[-200:]


async def test_what_must_not_change_a_run_where_one_speaks_goes_on():
    h = PipeHarness(models={"a": "Ana", "b": "Ben"})
    h.host.chat_configs["chat-1"] = config("a", "b", rounds=2, pass_allowed=True)
    h.host.scripts["a"] = Script(default_text="PASS")

    await h.run("Anything to add?")

    assert [r["model"] for r in h.host.requests] == ["a", "b", "a", "b"]


def mmc_record(**params):
    from types import SimpleNamespace

    return SimpleNamespace(params=params, meta={})
