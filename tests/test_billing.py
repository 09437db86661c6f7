"""Issue 29.5: a failed request costs what the server counted, else nothing, and a retry is
one call: its counted usage is what the ledger, the message's usage and the token budget get.

On main a 503 before any token was charged an estimated full prompt, and the plain retry's
counted usage never reached the token budget."""

from __future__ import annotations

import json

import multi_model_conversation as mmc
from tests.fakes import PipeHarness, Script, config, reply
from tests.test_usage import ledger_rows


def usage_frame(prompt: int, completion: int) -> str:
    usage = {"prompt_tokens": prompt, "completion_tokens": completion}
    usage["total_tokens"] = prompt + completion
    return f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n"


def counted(text: str, prompt: int, completion: int) -> list[str]:
    *frames, done = reply(text)
    return [*frames, usage_frame(prompt, completion), done]


def harness() -> PipeHarness:
    h = PipeHarness(models={"a": "Model A", "b": "Model B"})
    h.pipe.valves.SHOW_USAGE = True
    return h


LONG = [{"role": "user", "content": "background " * 4000}, {"role": "assistant", "content": "ok"}]


async def test_a_503_then_a_counted_retry_costs_what_the_retry_counted():
    h = harness()
    h.host.chat_configs["chat-1"] = config("a")
    h.host.scripts["a"] = Script(
        streams=[mmc.ModelCallError("HTTP 503: busy")],
        completions=["Here I am."],
        counted=(100, 4),
    )

    result = await h.run("Hello", history=LONG)

    assert [r["stream"] for r in h.host.requests] == [True, False]  # the 503, the retry
    rows = ledger_rows(result)
    assert rows["A"][:4] == ["Model A", "1", "100", "4"]  # was ~4,156-style: an estimate
    assert "~" not in result
    assert h.usage_frames[-1]["usage"]["prompt_tokens"] == 100  # Open WebUI's tooltip


async def test_a_failed_request_nobody_counted_costs_nothing():
    h = harness()
    h.host.chat_configs["chat-1"] = config("a")
    h.host.scripts["a"] = Script(
        streams=[mmc.ModelCallError("HTTP 503: busy")],
        completions=[mmc.ModelCallError("HTTP 503: still busy")],
    )

    result = await h.run("Hello", history=LONG)

    assert "could not answer" in result or "busy" in result
    assert ledger_rows(result)["A"][2:4] == ["0", "0"]


async def test_the_token_budget_counts_the_retrys_counted_usage():
    h = harness()
    h.pipe.valves.SHOW_USAGE = False
    h.host.chat_configs["chat-1"] = config("a", "b", rounds=3, max_total_tokens=500)
    h.host.scripts["a"] = Script(
        streams=[mmc.ModelCallError("HTTP 503: busy")],
        completions=["Here I am."],
        counted=(400, 5),  # the retry, as the backend counted it
    )
    h.host.scripts["b"] = Script(streams=[counted("Me too.", 120, 3)])

    result = await h.run("Hello")

    assert [r["model"] for r in h.host.requests] == ["a", "a", "b"]
    assert "ended after 2 turns: the budget of 500 tokens was used up (528).*" in mmc.md_unescape(
        result
    )


async def test_what_must_not_change_a_reply_the_backend_did_not_count_is_estimated_and_marked():
    h = harness()
    h.host.chat_configs["chat-1"] = config("a", "b")
    h.host.scripts["a"] = Script(streams=[counted("one two", 50, 2)])
    h.host.scripts["b"] = Script(streams=[reply("three four five six")])

    result = await h.run("Hello")

    rows = ledger_rows(result)
    assert rows["A"][2:4] == ["50", "2"]
    assert rows["B"][2].startswith("~") and rows["Total"][2].startswith("~")
