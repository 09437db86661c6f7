"""Issue 29.7: Continue on a council chat adds one round of answers, as the README says, not
peer review and a ranking table again (6 requests on main: 3 answers and 3 reviews)."""

from __future__ import annotations

import multi_model_conversation as mmc
from tests.fakes import PipeHarness, Script, config, reply
from tests.test_host_buttons import continue_response


def council(h: PipeHarness) -> None:
    h.host.chat_configs["chat-1"] = config(
        "a",
        "b",
        "c",
        selection="council",
        peer_review=True,
        closing={"model": "a", "alias": "Chair", "prompt": "Synthesize."},
    )
    for model in "abc":
        h.host.scripts[model] = Script(
            streams=[reply(f"ANSWER-{model.upper()}"), reply("Fine.\n\nRANKING: B, A")]
        )


async def test_continue_on_a_council_adds_one_round_of_answers_only():
    h = PipeHarness(models={"a": "Ana", "b": "Ben", "c": "Chen"})
    council(h)
    earlier = await h.run("Which database?")
    assert "Peer review, combined" in earlier  # the first message had its review and chair
    h.host.requests.clear()

    added = await continue_response(h, earlier, assistant_message_id="msg-1")

    asked = [r for r in h.host.requests if r["stream"]]
    assert sorted(r["model"] for r in asked) == ["a", "b", "c"]  # one answer each
    assert "Peer review" not in added
    assert not any("Rank them from best to worst" in str(r["messages"][-1]) for r in asked)
    assert [t.speaker for t in mmc.split_turns(added)] == ["A", "B", "C"]


async def test_what_must_not_change_a_new_council_message_has_its_review_and_chair():
    h = PipeHarness(models={"a": "Ana", "b": "Ben", "c": "Chen"})
    council(h)
    await h.run("Which database?")
    h.host.requests.clear()
    for model in "abc":
        h.host.scripts[model] = Script(streams=[reply("again"), reply("RANKING: A, B")])

    result = await h.run("And for analytics?", history=[{"role": "user", "content": "x"}])

    assert len([r for r in h.host.requests if r["stream"]]) == 7  # 3 answers, 3 reviews, chair
    assert "Peer review, combined" in result
