"""What real models do, played by the scripted backend in a real Open WebUI 0.12.4 (issue 10).

Runaway replies, replies cut by length or by the server, context-length errors, models writing
other participants' lines, a manager naming several people, background tasks answering prose.
Each test checks what was saved, what was delivered and what each model was sent.
"""

from __future__ import annotations

import re

import multi_model_conversation as mmc
from tests.integration.owui import run_chat
from tests.integration.test_faults_live import NOTICE, turns_of
from tests.integration.test_pipe_live import overlay_answer, said_by, speakers, text_of


def view(request) -> str:
    """Everything one request showed its model, as one text."""
    return "\n".join(text_of(m.get("content")) for m in request.messages)


# ==========================================================================================
# 1. Turn bounds
# ==========================================================================================


async def test_runaway_replies_are_bounded_by_tokens_or_time_and_marked(
    owui, backend, admin_socket, pipe, valves
):
    await valves(MAX_TOKENS=40, TURN_TIME_LIMIT=2)
    backend.set_script("model-a", tokens=100_000)  # would never end; stops at max_tokens
    # Ignores max_tokens and streams on: only the wall-clock limit ends it.
    backend.set_script("model-b", tokens=100_000, delay=0.01, honor_max_tokens=False)
    answer = overlay_answer("model-a", "model-b", "model-c")
    answer["participants"][2]["max_tokens"] = 5  # its own limit from the dialog
    admin_socket.answer("execute", answer)

    result = await run_chat(admin_socket, None, pipe, "Talk as long as you like.", timeout=90)

    saved = result.saved
    assert speakers(saved) == ["A", "B", "C"] and saved == result.delivered
    turn = turns_of(saved)
    a, b, c = (backend.requests_for(m)[0] for m in ("model-a", "model-b", "model-c"))
    assert [a.body.get("max_tokens"), b.body.get("max_tokens"), c.body.get("max_tokens")] == [
        40,
        40,
        5,
    ]
    # A: the server stopped at 40 tokens and said "length"; the turn shows it.
    assert a.finish_reason == "length" and len(a.reply.split()) == 40
    assert turn["A"].endswith("*✂️ …(cut at 40 tokens)*") and a.reply.strip() in turn["A"]
    # B: cut by time; the stream was closed, so the backend stopped sending.
    assert turn["B"].endswith("*✂️ …(cut after 2 s)*") and not b.completed
    assert b.finished_at is not None and len(b.reply.split()) < 100_000
    assert turn["C"].endswith("*✂️ …(cut at 5 tokens)*")
    # The marks are not part of what the next speakers read; the text is.
    c_view = view(c)
    assert "✂️" not in c_view and "cut at" not in c_view and "cut after" not in c_view
    assert a.reply.strip() in c_view
    assert len(backend.requests) == 3, "a cut reply is not retried"


async def test_a_stream_the_server_ends_midway_keeps_its_text_and_says_so(
    owui, backend, admin_socket, pipe
):
    backend.set_script("model-a", tokens=30, end_after=6)  # clean close, no finish, no [DONE]
    admin_socket.answer("execute", overlay_answer("model-a", "model-b"))

    result = await run_chat(admin_socket, None, pipe, "Go.")

    saved = result.saved
    assert speakers(saved) == ["A", "B"] and saved == result.delivered
    turn = turns_of(saved)
    (a,) = backend.requests_for("model-a")
    assert re.match(re.escape(a.reply.strip()), turn["A"]) and len(a.reply.split()) == 6
    assert turn["A"].endswith(
        f"{NOTICE}A could not answer: the stream ended before the model finished*"
    )
    assert a.reply.strip() in view(backend.requests_for("model-b")[0])


# ==========================================================================================
# 2. Context that fits
# ==========================================================================================


def earlier_messages(count: int, words: int = 40) -> list[dict]:
    """A chat's earlier messages, user and assistant by turns, `words` words each."""
    return [
        {
            "role": "user" if i % 2 == 0 else "assistant",
            "content": " ".join(f"m{i}w{j}" for j in range(words)),
        }
        for i in range(count)
    ]


FITS = "earlier turns of this conversation left out."
# A server that names a size nothing fits in (issue 29.1 reads it): one line, no retry.
CANNOT_HOLD = "could not answer: its model's context cannot hold even its instructions"


async def test_requests_are_trimmed_to_fit_and_a_full_context_gets_one_clear_line(
    owui, backend, admin_socket, pipe
):
    backend.set_script("model-a", context_limit=1)  # nothing ever fits
    backend.set_script("model-b", context_limit=900)  # says so in its 400
    backend.set_script("ctx-known", context_limit=900)  # its Open WebUI params say so
    await owui.set_model_params("ctx-known", params={"num_ctx": 900})
    answer = overlay_answer("model-a", "model-b", "ctx-known")
    admin_socket.answer("execute", answer)

    first = await run_chat(
        admin_socket, None, pipe, "LATEST one", previous_messages=earlier_messages(40)
    )

    saved = first.saved
    assert speakers(saved) == ["A", "B", "KNOWN"] and saved == first.delivered
    turn = turns_of(saved)
    a_calls = backend.requests_for("model-a")
    # It names its size (1 token): nothing can fit, so no second, futile request (issue 29.1
    # reads any size a server names; the old pattern wanted 3 digits and retried at 3/4).
    assert [(r.stream, r.status) for r in a_calls] == [(True, 400)]
    assert turn["A"].count(CANNOT_HOLD) == 1 and saved.count(NOTICE) == 1
    b_calls = backend.requests_for("model-b")
    assert [r.status for r in b_calls] == [400, 200]
    assert FITS in view(b_calls[1]) and b_calls[1].reply.strip() in turn["B"]
    (known,) = backend.requests_for("ctx-known")
    assert known.status == 200 and FITS in view(known)
    for request in (b_calls[1], known):
        assert (
            request.messages[0]["role"] == "system" and "Persona" in request.messages[0]["content"]
        )
        assert said_by("Admin", "LATEST one") in text_of(request.messages[-1]["content"])
        # The topic (the first message) stays; the turns after it go first (issue 20).
        assert "m0w0" in view(request) and "m1w0" not in view(request) and "m39w0" in view(request)

    backend.reset()
    backend.set_script("model-a", context_limit=1)
    backend.set_script("model-b", context_limit=900)
    backend.set_script("ctx-known", context_limit=900)
    again = await run_chat(admin_socket, None, pipe, "LATEST two", chat_id=first.chat_id)

    assert speakers(again.saved) == ["A", "B", "KNOWN"]
    assert again.saved.count(NOTICE) == 1 and again.saved.count(CANNOT_HOLD) == 1
    assert backend.requests_for("model-a") == []  # the size it named holds: not asked again
    assert [r.status for r in backend.requests_for("ctx-known")] == [200]


# ==========================================================================================
# 3. Speakers stay themselves; 4. a manager naming several people
# ==========================================================================================


def imitation_lines(text: str, names: list[str]) -> list[str]:
    """Lines that start like one of `names` speaking (`Name:`)."""
    return [
        line
        for line in text.splitlines()
        if any(re.match(rf"\W*{re.escape(n)}\W*:", line) for n in names)
    ]


async def test_models_writing_other_participants_lines_are_cut_before_them(
    owui, backend, admin_socket, pipe
):
    # A's server honours `stop`; B's ignores it, so only the pipe's own guard can cut it.
    # A line speaking as someone else opens like a sentence; `B: a line…` in lower case reads
    # as addressing B, which issue 18 says must not be cut.
    backend.set_script("model-a", reply="A: Opening words.\nStill A.\nB: A line for B\nC: And C")
    backend.set_script(
        "model-b",
        reply="I am B.\nAnd more B.\nC: A line for C\nAdmin: And the user",
        honor_stop=False,
    )
    admin_socket.answer("execute", overlay_answer("model-a", "model-b", "model-c"))

    result = await run_chat(admin_socket, None, pipe, "Talk among yourselves.")

    assert speakers(result.saved) == ["A", "B", "C"] and result.saved == result.delivered
    # issue 26: each cut line is folded under its turn (the user may open it), not said
    folds = re.findall(r'<details type="cut".*?</details>', result.saved, re.DOTALL)
    assert len(folds) == 2 and "B: A line for B" in folds[0] and "C: A line for C" in folds[1]
    saved = mmc.BLOCK_RE.sub("", result.saved)
    turn = turns_of(saved)
    assert turn["A"] == "Opening words.\nStill A."
    assert turn["B"] == "I am B.\nAnd more B."
    assert imitation_lines(saved, ["A", "B", "C", "Admin"]) == []
    a, b, c = (backend.requests_for(m)[0] for m in ("model-a", "model-b", "model-c"))
    # Stops in the pipe's own transcript format only (issue 18), for the next two speakers.
    assert a.body["stop"] == ['\nB said: "', '\nB: "', '\nC said: "', '\nC: "']
    assert b.body["stop"] == ['\nC said: "', '\nC: "', '\nA said: "', '\nA: "']
    c_view = view(c)
    assert "A line for" not in c_view and "And the user" not in c_view
    assert "And more B." in c_view and "Still A." in c_view


async def test_a_manager_naming_several_people_gives_the_turn_to_the_first_who_may_speak(
    owui, backend, admin_socket, pipe
):
    # After B, "B\nA" names a repeat first: A, the first who may speak, gets the turn
    # (round robin would have given it to C).
    picks = iter(["B", "B\nA", "C"])
    backend.set_script("manager", manager_rule=lambda messages: next(picks))
    answer = overlay_answer("model-a", "model-b", "model-c", rounds=1)
    admin_socket.answer("execute", {**answer, "use_manager": True, "manager_model": "manager"})

    result = await run_chat(admin_socket, None, pipe, "Who speaks?")

    assert speakers(result.saved) == ["B", "A", "C"] and result.saved == result.delivered
    statuses = [s.get("description", "") for s in result.view.statuses]
    assert statuses.count("Manager picked A.") == 1, statuses
    # Each pick took one answer: "B\nA" was accepted, not re-asked as a repeat.
    assert len(backend.requests_for("manager")) == 3


# ==========================================================================================
# 5. Background tasks
# ==========================================================================================

ALL_TASKS = {"title_generation": True, "tags_generation": True, "follow_up_generation": True}


def task_rule(title: str, tags: str, follow_ups: str):
    """A non-streamed answer per task, told apart by the host's prompt templates."""

    def answer(messages: list[dict]) -> str:
        prompt = "\n".join(text_of(m.get("content")) for m in messages)
        if '"follow_ups"' in prompt:
            return follow_ups
        if '"tags"' in prompt:
            return tags
        return title if '"title"' in prompt else "?"

    return answer


async def test_background_tasks_use_the_task_model_and_prose_answers_do_not_leak(
    owui, backend, admin_socket, pipe
):
    before = await owui.request("GET", "/api/v1/tasks/config")

    async def task_model(model: str) -> None:
        form = {**before, "TASK_MODEL": model, "TASK_MODEL_EXTERNAL": ""}
        await owui.request("POST", "/api/v1/tasks/config/update", json_body=form)

    try:
        await task_model("model-e")
        backend.set_script(
            "model-e",
            manager_rule=task_rule(
                'Sure: {"title": "Coffee Talk"}',
                '{"tags": ["coffee", "### 🟢 A"]}',
                '{"follow_ups": ["More coffee?"]}',
            ),
        )
        admin_socket.answer("execute", overlay_answer("model-a", "model-b"))
        first = await run_chat(
            admin_socket, None, pipe, "Discuss coffee.", background_tasks=ALL_TASKS
        )

        row = await owui.get_chat(first.chat_id)
        assert row["title"] == "Coffee Talk"
        assert row["meta"].get("tags") == ["coffee"]
        assert first.saved_message.get("followUps") == ["More coffee?"]
        plain = [(r.model, r.stream) for r in backend.requests if not r.stream]
        assert plain == [("model-e", False)] * 3

        # No task model: the first participant answers, in prose and placeholders.
        await task_model("")
        backend.reset()
        backend.set_script(
            "model-a",
            manager_rule=task_rule(
                '{ "title": "your concise title here" }', "### 🟢 B\nTags!", "Why? How?"
            ),
        )
        admin_socket.answer("execute", overlay_answer("model-a", "model-b"))
        second = await run_chat(
            admin_socket, None, pipe, "Discuss tea.", background_tasks=ALL_TASKS
        )

        row = await owui.get_chat(second.chat_id)
        assert row["title"] == "Discuss tea."  # the host's own fallback
        assert not row["meta"].get("tags")
        assert not second.saved_message.get("followUps")
        plain = [(r.model, r.stream) for r in backend.requests if not r.stream]
        assert plain == [("model-a", False)] * 3
    finally:
        await owui.request("POST", "/api/v1/tasks/config/update", json_body=before)


async def test_background_tasks_fit_the_task_models_context(owui, backend, admin_socket, pipe):
    """A long conversation quoted in a task prompt overflows a small model: it is cut to fit."""
    backend.set_script(
        "model-a",
        context_limit=900,  # words + max_tokens
        manager_rule=task_rule(
            '{"title": "Long Talk"}', '{"tags": ["talk"]}', '{"follow_ups": ["More?"]}'
        ),
    )
    backend.set_script("model-b", tokens=250)
    answer = overlay_answer("model-a", "model-b")
    answer["rounds"] = 2
    admin_socket.answer("execute", answer)

    result = await run_chat(
        admin_socket, None, pipe, "Talk at length.", background_tasks=ALL_TASKS, timeout=90
    )

    assert speakers(result.saved) == ["A", "B", "A", "B"] and NOTICE not in result.saved
    row = await owui.get_chat(result.chat_id)
    assert row["title"] == "Long Talk" and row["meta"].get("tags") == ["talk"]
    assert result.saved_message.get("followUps") == ["More?"]
    tasks = [r for r in backend.requests_for("model-a") if not r.stream]
    # The server names its limit once; that task is refitted and every later one fits at once.
    statuses = [r.status for r in tasks]
    assert sorted(statuses) == [200, 200, 200, 400], [
        (r.status, r.body["max_tokens"]) for r in tasks
    ]
    refitted = tasks[statuses.index(400) + 1 :]
    assert all(r.body["max_tokens"] == 900 // 4 and "[…]" in view(r) for r in refitted)
    assert all(r.status == 400 or "Talk at length." in view(r) for r in tasks)
