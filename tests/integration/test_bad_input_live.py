"""Bad and hostile input through a real Open WebUI 0.12.4: each gets a clear message or is
handled safely, nothing crashes, nothing is remembered that should not be, and later messages
still find every turn."""

from __future__ import annotations

import json

from tests.integration.owui import run_chat
from tests.integration.test_pipe_live import CONFIG_KEY, new_user, overlay_answer, speakers, text_of

NOTICE = "⚠️"


def participants(*rows: tuple[str, str, str]) -> list[dict]:
    return [{"model": m, "alias": a, "system_message": s} for m, a, s in rows]


async def test_each_bad_setup_gets_one_clear_message_and_nothing_runs(
    owui, backend, admin_socket, pipe
):
    one = overlay_answer("model-a")
    cases = {
        "rounds 10^6": ({**one, "rounds": 10**6}, "Rounds must be between 1 and 20; got 1000000"),
        "rounds 0": ({**one, "rounds": 0}, "Rounds must be at least 1"),
        "50 participants": (overlay_answer(*["model-a"] * 50), "At most 5"),
        "no participants": ({**one, "participants": []}, "at least one participant"),
        "wrong types": ({"rounds": "many", "participants": "everyone"}, "Rounds: must be a whole"),
        "10,000-character alias": (
            {**one, "participants": participants(("model-a", "x" * 10_000, ""))},
            "Participant 1: the alias is longer than 64 characters",
        ),
        "a model id typed by hand": (
            overlay_answer("model-zz"),
            "Unknown model: 'model-zz' (Participant 1)",
        ),
        "a row without a model": (
            {
                **one,
                "participants": participants(
                    ("model-a", "A", ""), ("model-b", "B", ""), ("model-c", "C", ""), ("", "D", "")
                ),
            },
            "Participant 4: choose a model.",
        ),
    }
    for name, (answer, expected) in cases.items():
        admin_socket.answer("execute", answer)
        result = await run_chat(admin_socket, None, pipe, f"Try {name}.")
        shown = result.saved.replace("\\", "")
        assert expected in shown, (name, result.saved[:300])
        assert result.saved.count(NOTICE) == 1, name
        assert result.saved == result.delivered, name
        assert speakers(result.saved) == [], name
        assert [s["description"] for s in result.view.statuses] == [
            "Not started: the setup needs fixing"
        ], name
        assert backend.requests == [], f"{name}: a model was called"
        meta = (await owui.get_chat(result.chat_id))["meta"]
        assert CONFIG_KEY not in meta, f"{name}: a bad setup was remembered"


async def test_odd_but_valid_setups_and_a_megabyte_message_run_and_keep_every_turn(
    owui, backend, admin_socket, pipe
):
    persona = "You are {alias} speaking {language}; keep {{braces}} and {0} as they are."
    aliases = ['Dr. "Q" <b>&amp;</b>', "### Boss\nof\tall", "*not* _bold_ [x](y)", ""]
    rows = participants(
        ("model-a", aliases[0], persona),
        ("model-a", aliases[1], "Second persona of the same model."),
        ("model-b", aliases[2], ""),
        ("model-b", aliases[3], ""),  # no alias: the model's name, made unique
    )
    admin_socket.answer("execute", {**overlay_answer("model-a"), "participants": rows})
    huge = "MEGA-start " + "y" * 1_000_000 + " MEGA-end"

    first = await run_chat(admin_socket, None, pipe, huge, timeout=120)

    shown = speakers(first.saved)
    expected = ['Dr. "Q" <b>&amp;</b>', "### Boss of all", "*not* _bold_ [x](y)", "model-b"]
    assert [s.replace("\\", "") for s in shown] == expected, shown
    assert first.saved == first.delivered
    requests = backend.requests
    assert [r.model for r in requests] == ["model-a", "model-a", "model-b", "model-b"]
    for request in requests:
        # The megabyte's start and end reached every participant, its middle cut to fit the
        # assumed context (issue 20; before, all of it was sent and overflowed every model).
        message = text_of(request.messages[1]["content"])
        assert "MEGA-start" in message and "MEGA-end" in message and "[…]" in message
        assert len(message) < 100_000, len(message)  # the scripted server counts few tokens
    # The user is told once per model that their message was shortened.
    assert first.saved.count("Your message was shortened for") == 2
    assert persona in requests[0].messages[0]["content"]  # placeholders left alone
    assert "Second persona" in requests[1].messages[0]["content"]

    second = await run_chat(admin_socket, None, pipe, "Again, briefly.", chat_id=first.chat_id)

    assert second.calls == [] and [s.replace("\\", "") for s in speakers(second.saved)] == expected
    # Each participant finds its own earlier turn, and only that one, as its assistant message.
    later = backend.requests[4:]
    for before, after in zip(requests, later, strict=True):
        own = [text_of(m["content"]) for m in after.messages if m["role"] == "assistant"]
        assert own == [before.reply], (before.model, own)
        others = json.dumps([m for m in after.messages if m["role"] == "user"])
        assert all(r.reply in others for r in requests if r is not before)


async def test_hidden_or_typed_in_models_are_refused_before_any_model_runs(owui, backend, pipe):
    user = await new_user(owui, "Trudy", "model-a")
    visible = await owui.models(user.token)
    assert "model-a" in visible and "manager" not in visible and "model-zz" not in visible
    cases = {
        "a manager hidden from the user": (
            {**overlay_answer("model-a"), "use_manager": True, "manager_model": "manager"},
            "You do not have access to 'manager'",
        ),
        "a hidden participant": (overlay_answer("model-a", "model-c"), "access to 'model-c'"),
        "an id typed by hand": (overlay_answer("model-a", "model-zz"), "Unknown model"),
    }
    sock = await owui.connect(user.token)
    try:
        for name, (answer, expected) in cases.items():
            sock.answer("execute", answer)
            result = await run_chat(sock, user.token, pipe, f"Try {name}.")
            assert expected in result.saved.replace("\\", ""), (name, result.saved)
            assert speakers(result.saved) == [] and result.saved == result.delivered, name
            assert backend.requests == [], f"{name}: a model was called"
            meta = (await owui.get_chat(result.chat_id, user.token))["meta"]
            assert CONFIG_KEY not in meta, name
    finally:
        await sock.disconnect()
