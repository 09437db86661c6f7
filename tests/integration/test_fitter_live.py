"""Issue 20 in the real host: a long paste, a huge tool result and a 60,000-character message
are fitted so that no request overflows the model's context and everyone still hears the others.

The scripted backend counts a prompt's words as its tokens and refuses (HTTP 400) a request
over `context_limit`; the texts here use 3-character words, the pipe's own estimate, so
8192 tokens is the same context for both."""

from __future__ import annotations

import textwrap

from tests.backend import ToolCallScript
from tests.integration.owui import run_chat
from tests.integration.test_pipe_live import overlay_answer, speakers, text_of

CONTEXT = 8192


def paste(chars: int) -> str:
    """A report of about `chars` characters in 3-character words (about a token each)."""
    body = " ".join(f"r{i % 100:02d}" for i in range(chars // 4))
    return f"REPORT-START {body} REPORT-END"


def limited(backend, *models: str) -> None:
    for model in models:
        backend.set_script(model, context_limit=CONTEXT)


async def test_a_32000_character_paste_reaches_three_speakers_who_hear_each_other(
    owui, backend, admin_socket, pipe
):
    limited(backend, "model-a", "model-b", "model-c")
    admin_socket.answer("execute", overlay_answer("model-a", "model-b", "model-c"))
    report = paste(32_000)

    result = await run_chat(admin_socket, None, pipe, report, timeout=120)

    assert speakers(result.saved) == ["A", "B", "C"] and result.saved == result.delivered
    a, b, c = backend.requests
    assert [r.status for r in backend.requests] == [200, 200, 200]  # nothing overflowed
    for request in (a, b, c):
        sent = " ".join(text_of(m["content"]) for m in request.messages)
        assert "REPORT-START" in sent and "REPORT-END" in sent and "[…]" in sent
        assert sent.count(" r") > 0.6 * report.count(" r")  # most of the paste
    c_view = " ".join(text_of(m["content"]) for m in c.messages)
    assert a.reply.strip() in c_view and b.reply.strip() in c_view
    assert result.saved.count("Your message was shortened for") == 3


async def test_a_huge_tool_result_is_cut_to_fit_the_next_request(owui, backend, admin_socket, pipe):
    tool = textwrap.dedent(
        '''
        """
        title: MMC Big Report
        """


        class Tools:
            def fetch_report(self) -> str:
                """
                Fetch the whole quarterly report.
                """
                body = " ".join(f"r{i % 100:02d}" for i in range(14_000))
                return f"REPORT-START {body} REPORT-END"
        '''
    )
    await owui.create_tool("mmc_big_report", tool)
    await owui.set_model_params("model-a", params={"function_calling": "native"})
    backend.set_script(
        "model-a",
        tool_call=ToolCallScript(name="fetch_report", arguments="{}"),
        context_limit=CONTEXT,
    )
    admin_socket.answer("execute", overlay_answer("model-a"))

    result = await run_chat(
        admin_socket, None, pipe, "Sum up the report.", tool_ids=["mmc_big_report"], timeout=120
    )

    first, after = backend.requests_for("model-a")
    assert [first.status, after.status] == [200, 200]
    (tool_message,) = [m for m in after.messages if m["role"] == "tool"]
    content = text_of(tool_message["content"])
    assert content.startswith("REPORT-START") and content.endswith("REPORT-END")
    assert "[…]" in content and after.reply.strip() in result.saved


async def test_a_60000_character_message_ends_with_one_line_per_model_and_one_request_each(
    owui, backend, admin_socket, pipe
):
    limited(backend, "model-a", "model-b")
    admin_socket.answer("execute", overlay_answer("model-a", "model-b"))

    result = await run_chat(admin_socket, None, pipe, paste(60_000), timeout=120)

    assert [(r.model, r.status) for r in backend.requests] == [("model-a", 200), ("model-b", 200)]
    assert result.saved.count("Your message was shortened for") == 2
    assert "could not answer" not in result.saved and speakers(result.saved) == ["A", "B"]
