"""Directing the conversation (issue 12) inside a real Open WebUI 0.12.4.

Each test answers the setup dialog with the new keys, runs the chat over socket.io like the
browser, and checks what the socket delivered against what the database kept, what each model
was sent (the scripted backend records every request), and a follow-up message in the same chat.
"""

from __future__ import annotations

import pytest

from tests.backend import default_reply
from tests.integration.owui import run_chat
from tests.integration.test_pipe_live import (
    CONFIG_KEY,
    overlay_answer,
    said_by,
    script_models,
    speakers,
    text_of,
)


def statuses(result) -> list[str]:
    return [s.get("description", "") for s in result.view.statuses]


def unescaped(text: str) -> str:
    """The transcript with our markdown escapes taken out (as the page shows it)."""
    import multi_model_conversation as mmc

    return mmc.md_unescape(text)


def participant_requests(backend) -> list:
    return [r for r in backend.requests if r.model != "manager"]


async def test_manager_wrong_once_then_right_then_end(owui, backend, admin_socket, pipe):
    # Issue 29.10: a pick is re-asked once (two failures would end asking for the run).
    answers = iter(["nobody at all", "I pick B.", "END", "C", "End."])
    backend.set_script("manager", manager_rule=lambda messages: next(answers))
    answer = overlay_answer("model-a", "model-b", "model-c", rounds=2)
    admin_socket.answer("execute", {**answer, "selection": "manager", "manager_model": "manager"})

    result = await run_chat(admin_socket, None, pipe, "Who starts?")

    assert speakers(result.saved) == ["B"] and result.saved == result.delivered
    asked = backend.requests_for("manager")
    assert len(asked) == 3 and not any(r.stream for r in asked)
    # Re-asked with the wrong answer and what was wrong with it.
    assert [m["role"] for m in asked[1].messages] == ["system", "user", "assistant", "user"]
    assert asked[1].messages[-2]["content"] == "nobody at all"
    assert "'nobody at all' names none of the participants" in text_of(
        asked[1].messages[-1]["content"]
    )
    # Why B speaks: the manager's answer, collapsed under B's heading.
    assert (
        '<details type="manager" done="true">\n<summary>Why this speaker</summary>\n> I pick B.'
        in result.saved
    )
    assert result.saved.endswith("*🏁 The conversation ended after 1 turn: the manager ended it.*")
    assert "Conversation ended: the manager ended it." in statuses(result)
    assert [r.model for r in participant_requests(backend)] == ["model-b"]

    # A follow-up in the same chat: same setup, no dialog, and B's turn is in the history.
    follow = await run_chat(admin_socket, None, pipe, "Go on.", chat_id=result.chat_id)
    assert follow.calls == [] and speakers(follow.saved) == ["C"]
    assert follow.saved == follow.delivered
    b_said = backend.requests_for("model-b")[0].reply
    c_view = backend.requests_for("model-c")[0]
    assert said_by("B", b_said) in text_of(c_view.messages[-1]["content"])
    assert "Why this speaker" not in str(c_view.messages) and "🏁" not in str(c_view.messages)
    row = await owui.get_chat(result.chat_id)
    assert row["meta"][CONFIG_KEY]["selection"] == "manager"


async def test_pass_and_a_stop_phrase(owui, backend, admin_socket, pipe):
    backend.set_script("model-b", reply="PASS")
    # The stop phrase on a line of its own; each reply its own (a repeated one is an echo).
    backend.set_script("model-c", reply="I think we agree on tea (reply {n}).\nWE AGREE.")
    answer = overlay_answer("model-a", "model-b", "model-c", rounds=3)
    admin_socket.answer("execute", {**answer, "pass_allowed": True, "stop_phrase": "we agree"})

    result = await run_chat(admin_socket, None, pipe, "Tea?")

    assert [r.model for r in backend.requests] == ["model-a", "model-b", "model-c"]
    assert speakers(result.saved) == ["A", "C"] and result.saved == result.delivered
    assert "*⏭️ B passed.*" in result.saved and "PASS" not in result.saved
    assert result.saved.endswith(
        "*🏁 The conversation ended after 2 turns, 1 passed: C said the stop phrase “we agree”.*"
    )
    assert "Conversation ended: C said the stop phrase “we agree”." in statuses(result)
    system = text_of(backend.requests[0].messages[0]["content"])
    assert "Round 1 of 3. This is turn 1 of 9; 8 more after yours." in system
    assert "answer only the word PASS" in system and "say “we agree” to end it" in system
    # C hears A, and nothing of B's pass.
    c_view = str(backend.requests[2].messages[1:])
    assert "A said: " in c_view and "PASS" not in c_view and "passed" not in c_view

    follow = await run_chat(admin_socket, None, pipe, "Coffee?", chat_id=result.chat_id)
    assert follow.calls == [] and speakers(follow.saved) == ["A", "C"]
    assert follow.saved == follow.delivered
    assert "*⏭️ B passed.*" in follow.saved


async def test_time_and_token_budgets(owui, backend, admin_socket, pipe):
    # Time: each turn streams 8 tokens 0.2 s apart (1.6 s) against a 1 s budget.
    script_models(backend, ("model-a", "model-b"), delay=0.2)
    admin_socket.answer(
        "execute", {**overlay_answer("model-a", "model-b", rounds=5), "max_seconds": 1}
    )
    timed = await run_chat(admin_socket, None, pipe, "Quick one.")
    assert [r.model for r in backend.requests] == ["model-a"]
    assert speakers(timed.saved) == ["A"] and timed.saved == timed.delivered
    assert timed.saved.endswith("the time budget of 1 s was used up.*")
    assert "at most 10" in text_of(backend.requests[0].messages[0]["content"])

    # Tokens: the backend reports usage (prompt + reply words); the first turn uses it up.
    backend.reset()
    admin_socket.answer(
        "execute", {**overlay_answer("model-a", "model-b", rounds=5), "max_total_tokens": 40}
    )
    counted = await run_chat(admin_socket, None, pipe, "Count.")
    first = backend.requests[0]
    assert first.body["stream_options"] == {"include_usage": True}
    used = len(first.reply.split()) + sum(
        len(text_of(m["content"]).split()) for m in first.messages
    )
    assert used >= 40, used
    assert [r.model for r in backend.requests] == ["model-a"]
    assert unescaped(counted.saved).endswith(f"the budget of 40 tokens was used up ({used:,}).*")
    assert counted.saved == counted.delivered


@pytest.mark.smoke
async def test_a_closing_turn_then_a_follow_up(owui, backend, admin_socket, pipe):
    backend.set_script("model-d", reply="Verdict: A argued better.")
    answer = overlay_answer("model-a", "model-b")
    closing = {"model": "model-d", "alias": "Judge", "prompt": "Give your verdict."}
    admin_socket.answer("execute", {**answer, "closing": closing})

    result = await run_chat(admin_socket, None, pipe, "Tea or coffee?")

    assert speakers(result.saved) == ["A", "B", "Judge"] and result.saved == result.delivered
    assert result.saved.endswith("Verdict: A argued better.")
    judge = backend.requests_for("model-d")[0]
    said = [r.reply for r in backend.requests[:2]]
    last = text_of(judge.messages[-1]["content"])
    assert "Tea or coffee?" in last and said_by("A", said[0]) in last
    assert said_by("B", said[1]) in last
    assert last.endswith("Give your verdict.")
    assert text_of(judge.messages[0]["content"]).startswith("You are Judge.")
    row = await owui.get_chat(result.chat_id)
    assert row["meta"][CONFIG_KEY]["closing"] == closing

    follow = await run_chat(admin_socket, None, pipe, "And now?", chat_id=result.chat_id)
    assert follow.calls == [] and speakers(follow.saved) == ["A", "B", "Judge"]
    a_view = backend.requests_for("model-a")[1]
    assert said_by("Judge", "Verdict: A argued better.") in str(a_view.messages)


async def test_a_vote_is_cast_and_tallied(owui, backend, admin_socket, pipe):
    votes = {"model-a": "VOTE: tea - calmer", "model-b": "VOTE: Coffee.", "model-c": "Vote: Tea"}
    for model, vote in votes.items():
        backend.set_script(
            model,
            reply=lambda r, vote=vote: vote if r.n == 2 else default_reply(r.model, r.n, 8),
        )
    admin_socket.answer(
        "execute", {**overlay_answer("model-a", "model-b", "model-c"), "closing": "vote"}
    )

    result = await run_chat(admin_socket, None, pipe, "Tea or coffee?")

    assert [r.model for r in backend.requests] == ["model-a", "model-b", "model-c"] * 2
    # Vote turns are labelled as votes (issue 19).
    voters = [f"{x} · 🗳️ vote" for x in "ABC"]
    assert speakers(result.saved) == ["A", "B", "C", *voters] and result.saved == result.delivered
    assert unescaped(result.saved).endswith("*🗳️ Vote: tea 2 (A, C) · Coffee 1 (B)*")
    assert all("VOTE: <your choice" in str(r.messages[-1]) for r in backend.requests[3:])


async def test_mentions_speak_first(owui, backend, admin_socket, pipe):
    answer = overlay_answer("model-a", "model-b", "model-c")
    admin_socket.answer("execute", {**answer, "selection": "mention"})

    result = await run_chat(admin_socket, None, pipe, "@C, then @a: what do you think?")
    assert speakers(result.saved) == ["C", "A", "B"] and result.saved == result.delivered

    follow = await run_chat(admin_socket, None, pipe, "@B first now.", chat_id=result.chat_id)
    assert speakers(follow.saved) == ["B", "A", "C"] and follow.calls == []
    assert [r.model for r in backend.requests] == [
        "model-c",
        "model-a",
        "model-b",
        "model-b",
        "model-a",
        "model-c",
    ]


async def test_a_preset_from_the_dialog_runs_as_saved(owui, backend, admin_socket, pipe):
    admin_socket.answer(
        "execute",
        {"preset": "debate", "participants": [{"model": "model-a"}, {"model": "model-b"}]},
    )

    result = await run_chat(admin_socket, None, pipe, "Motion: tea beats coffee.")

    assert speakers(result.saved) == ["Pro", "Con", "Pro", "Con", "Judge"]
    assert result.saved == result.delivered
    assert "argue FOR the motion" in text_of(backend.requests[0].messages[0]["content"])
    assert "Weigh both sides" in text_of(backend.requests[-1].messages[0]["content"])
