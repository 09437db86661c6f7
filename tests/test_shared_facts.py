"""Issue 29.1 (second half): one user's failure never reaches another. A context error
that names no size shrinks its own request only; what every run shares about a model
(`Pipe.model_facts`) is written only from what a server stated."""

from __future__ import annotations

from types import SimpleNamespace

import multi_model_conversation as mmc
from tests.fakes import PipeHarness, Script, reply

USAGE = 'data: {"choices": [], "usage": {"prompt_tokens": 900, "total_tokens": 950}}\n\n'
NAMELESS = "HTTP 400: the request exceeds the available context size, try increasing it"


def harness() -> PipeHarness:
    h = PipeHarness(models={"a": "Ana", "b": "Ben"})
    h.host.users["u2"] = SimpleNamespace(id="u2", role="user", name="Bea")
    for model in ("a", "b"):  # the admin set a large context for both
        h.host.records[model] = SimpleNamespace(params={"num_ctx": 131072}, meta={})
    for chat in ("chat-1", "chat-2"):
        h.host.chat_configs[chat] = {
            "rounds": 1,
            "participants": [
                {"model": "a", "alias": "Ana", "system_message": "You are Ana. " * 100},
            ],
        }
    return h


def streamed(h: PipeHarness) -> list[dict]:
    return [r for r in h.host.requests if r["stream"]]


def chars(request: dict) -> int:
    return mmc.message_chars(request["messages"])


async def test_one_users_failed_paste_leaves_another_users_requests_as_they_were():
    """The issue's run: after user 2's 300,000-character paste failed with an error naming
    no size, user 1's next request carried 3,048 of 63,120 characters of history."""
    h = harness()
    history = [
        {"role": "user", "content": "Topic " + "notes on the plan " * 3500},
        {"role": "assistant", "content": "### 🔴 Ana\n\nnoted"},
    ]
    h.host.scripts["a"] = Script(
        streams=[
            [*reply("fine"), USAGE],  # user 1: a 900-token prompt worked (proven)
            mmc.ModelCallError(NAMELESS),  # user 2: the paste fails, no size named
            mmc.ModelCallError(NAMELESS),  # and its one smaller retry
            [*reply("again fine"), USAGE],  # user 1 again
        ]
    )
    await h.run("Hi", user_id="u1")
    before = dict(vars(h.pipe.model_facts))

    await h.run("x" * 300_000, chat_id="chat-2", user_id="u2")
    failed, retry = streamed(h)[1:3]
    assert chars(retry) < chars(failed)  # the failure shrank its own request
    assert vars(h.pipe.model_facts) == before  # and taught the others nothing
    assert h.pipe.model_facts.sizes == {}

    await h.run("Where were we?", history=history, user_id="u1")
    latest = streamed(h)[-1]
    shown = "\n".join(mmc._text_of(m.get("content")) for m in latest["messages"])
    assert "notes on the plan " * 3500 in shown  # the whole history, as before the failure
    assert "sits out" not in "".join(str(m) for m in latest["messages"])


async def test_what_must_not_change_a_size_a_server_names_holds_for_every_run_of_that_model():
    h = harness()
    h.host.chat_configs["chat-2"]["participants"] = [{"model": "b", "alias": "Ben"}]
    h.host.chat_configs["chat-3"] = {"rounds": 1, "participants": [{"model": "a", "alias": "A"}]}
    named = mmc.ModelCallError("HTTP 400: This model's maximum context length is 8000 tokens.")
    h.host.scripts["a"] = Script(streams=[named])

    await h.run("x" * 300_000, user_id="u2")

    assert h.pipe.model_facts.sizes == {"a": 8000}  # named by the server: a fact about "a"
    paste = "y" * 60_000
    await h.run(paste, chat_id="chat-3", user_id="u1")  # another user, same model
    assert mmc.message_chars(streamed(h)[-1]["messages"]) <= 8000 * 3
    await h.run(paste, chat_id="chat-2", user_id="u1")  # another model: untouched
    assert paste in streamed(h)[-1]["messages"][-1]["content"]
