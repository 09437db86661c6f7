"""Issue 21 in the real host: a council round (with Stop and a follow-up), peer review, the
moderator between rounds (words, end, Stop and a closed tab while it asks), hand-offs and
per-participant sampling."""

from __future__ import annotations

import asyncio

from tests.integration.owui import NO_ANSWER, run_chat, start_chat
from tests.integration.test_faults_live import stop_and_check, until
from tests.integration.test_pipe_live import overlay_answer, speakers, text_of


def council(*models: str, **extra) -> dict:
    return overlay_answer(*models, selection="council", **extra)


def seen_by(request) -> str:
    return " ".join(text_of(m["content"]) for m in request.messages)


async def test_a_council_round_runs_at_once_and_a_follow_up_hears_it(
    owui, backend, admin_socket, pipe
):
    # A streams for 3 s: long enough that a loaded machine still starts B and C meanwhile.
    for model, delay in (("model-a", 0.075), ("model-b", 0.03), ("model-c", 0.01)):
        backend.set_script(model, tokens=40, delay=delay)
    admin_socket.answer("execute", council("model-a", "model-b", "model-c"))

    first = await run_chat(admin_socket, None, pipe, "Tea or coffee?", timeout=120)

    assert speakers(first.saved) == ["A", "B", "C"] and first.saved == first.delivered
    a, b, c = (backend.requests_for(m)[0] for m in ("model-a", "model-b", "model-c"))
    # All three were asked before the slowest (A, 3 s of tokens) finished.
    assert max(r.received_at for r in (a, b, c)) < a.last_token_at
    for request in (a, b, c):  # nobody heard another's answer of the round
        assert not any(r.reply.strip() in seen_by(request) for r in (a, b, c))
    assert first.saved.index(a.reply.strip()) < first.saved.index(c.reply.strip())

    backend.reset()
    follow = await run_chat(admin_socket, None, pipe, "And why?", chat_id=first.chat_id)

    assert follow.calls == [] and speakers(follow.saved) == ["A", "B", "C"]
    heard = seen_by(backend.requests_for("model-b")[0])
    assert a.reply.strip() in heard and c.reply.strip() in heard


async def test_stop_during_a_council_round_keeps_what_was_shown(owui, backend, admin_socket, pipe):
    backend.set_script("model-a", tokens=400, delay=0.05)
    backend.set_script("model-b", tokens=20)
    admin_socket.answer("execute", council("model-a", "model-b"))
    run = await start_chat(admin_socket, None, pipe, "Think hard.")
    await until(lambda: len(backend.requests) == 2 and backend.requests[0].first_token_at, 30)
    await asyncio.sleep(1)

    stopped = await stop_and_check(owui, backend, admin_socket, run)

    assert speakers(stopped.saved) == ["A"] and "(stopped)" in stopped.saved
    assert backend.requests_for("model-b")[0].reply.strip() not in stopped.saved
    assert await until(lambda: backend.requests_for("model-a")[0].client_closed, 10)


async def test_peer_review_and_a_chair_in_the_real_host(owui, backend, admin_socket, pipe):
    def reviewer(first: str):
        return lambda request: "My answer." if request.n == 1 else f"Fine.\nRANKING: {first}"

    backend.set_script("model-a", reply=reviewer("B, A"))
    backend.set_script("model-b", reply=reviewer("A, B"))
    backend.set_script("model-c", reply=reviewer("A"))
    answer = council(
        "model-a",
        "model-b",
        "model-c",
        peer_review=True,
        closing={"model": "model-a", "alias": "Chair", "prompt": "Synthesize."},
    )
    admin_socket.answer("execute", answer)

    result = await run_chat(admin_socket, None, pipe, "Best tea?", timeout=120)

    reviews = ["A · 🏅 review", "B · 🏅 review", "C · 🏅 review"]  # labelled (issue 27)
    assert speakers(result.saved) == ["A", "B", "C", *reviews, "Chair"]
    assert "| # | Answer by | Points | Placed by |" in result.saved
    assert result.saved == result.delivered
    chair = backend.requests_for("model-a")[-1]
    assert "Points" in seen_by(chair) and "Synthesize." in seen_by(chair)


async def test_the_moderators_words_are_shown_and_heard_and_end_closes(
    owui, backend, admin_socket, pipe
):
    admin_socket.answer("execute", overlay_answer("model-a", "model-b", rounds=3))
    answers = iter(["Please focus on price.", "end"])
    admin_socket.answer("input", lambda data: next(answers))
    answer = overlay_answer("model-a", "model-b", rounds=3, moderator="between_rounds")
    answer["closing"] = {"model": "model-b", "alias": "Judge"}
    admin_socket.answer("execute", answer)

    result = await run_chat(admin_socket, None, pipe, "Tea or coffee?", timeout=120)

    asked = [c for c in admin_socket.calls if c.type == "input"]
    assert len(asked) == 2 and "before round 2" in asked[0].data["message"]
    assert speakers(result.saved) == ["A", "B", "Admin", "A", "B", "Judge"]
    assert "Please focus on price." in result.saved and result.saved == result.delivered
    for request in backend.requests[2:]:
        assert "Please focus on price." in seen_by(request)
    assert "the moderator ended it" in result.saved

    backend.reset()
    admin_socket.answer("input", "")
    follow = await run_chat(admin_socket, None, pipe, "Go on.", chat_id=result.chat_id)
    assert "Please focus on price." in seen_by(backend.requests[0])
    assert speakers(follow.saved) == ["A", "B", "A", "B", "A", "B", "Judge"]


async def test_stop_while_the_moderator_asks_ends_everything(owui, backend, admin_socket, pipe):
    admin_socket.answer("input", NO_ANSWER)
    admin_socket.answer(
        "execute", overlay_answer("model-a", "model-b", rounds=2, moderator="between_rounds")
    )
    run = await start_chat(admin_socket, None, pipe, "Wait for me.")
    await until(lambda: any(c.type == "input" for c in admin_socket.calls), 30)

    stopped = await stop_and_check(owui, backend, admin_socket, run)

    assert speakers(stopped.saved) == ["A", "B"] and len(backend.requests) == 2


async def test_a_closed_tab_during_the_prompt_does_not_hang_the_run(owui, backend, pipe, valves):
    await valves(MODERATOR_TIMEOUT=3)
    tab = await owui.connect()
    tab.answer("input", NO_ANSWER)
    tab.answer(
        "execute", overlay_answer("model-a", "model-b", rounds=2, moderator="between_rounds")
    )
    run = await start_chat(tab, owui.admin_token, pipe, "Anyone there?")
    await until(lambda: any(c.type == "input" for c in tab.calls), 30)
    await tab.disconnect()

    async def done() -> bool:
        row = await owui.get_chat(run.chat_id)
        message = row["chat"]["history"]["messages"].get(run.assistant_message_id) or {}
        return bool(message.get("done"))

    assert await until(done, 60, every=0.5)
    row = await owui.get_chat(run.chat_id)
    saved = row["chat"]["history"]["messages"][run.assistant_message_id]["content"]
    assert speakers(saved) == ["A", "B", "A", "B"]


async def test_hand_offs_and_own_sampling_in_the_real_host(owui, backend, admin_socket, pipe):
    backend.set_script("model-a", reply="I'd keep it.\n\n@C, can the schedule take it?")
    answer = overlay_answer("model-a", "model-b", "model-c", selection="mention")
    answer["participants"][0]["temperature"] = 0.3
    answer["participants"][2]["top_p"] = 0.5
    admin_socket.answer("execute", answer)

    result = await run_chat(admin_socket, None, pipe, "Plan it.", timeout=120)

    assert speakers(result.saved) == ["A", "C", "B"]
    a, c, b = backend.requests
    assert a.body["temperature"] == 0.3 and c.body["top_p"] == 0.5
    assert b.body["temperature"] == 1.0 and b.body["top_p"] == 0.8

    # A follow-up: the stored setup keeps each one's sampling, and the hand-off works again.
    backend.reset()
    backend.set_script("model-b", reply="Fine by me.\n\n@A, your call.")
    follow = await run_chat(admin_socket, None, pipe, "@b first, please.", chat_id=result.chat_id)
    assert follow.calls == [] and speakers(follow.saved) == ["B", "A", "C"]
    by_model = {r.model: r for r in backend.requests}
    assert by_model["model-a"].body["temperature"] == 0.3
    assert by_model["model-c"].body["top_p"] == 0.5
