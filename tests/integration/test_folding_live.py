"""Issue 26 in a real Open WebUI 0.12.4: what a guard cuts stays in the message, folded under
the turn, after a reload and a follow-up; the other participants never hear it."""

from __future__ import annotations

import html
import re

from tests.backend import ModelScript
from tests.integration.owui import run_chat
from tests.integration.test_pipe_live import overlay_answer, speakers, text_of

FOLD = re.compile(
    r'<details type="cut" reason="(\w+)">\n<summary>(.*?)</summary>\n(.*?)\n</details>', re.DOTALL
)
SAID = "I would take the train, it is cheap."
WENT_ON = "B: No, we drive, it is faster and we can leave whenever we like."


async def test_a_cut_turn_keeps_its_folded_text_after_a_reload_and_a_follow_up(
    owui, backend, admin_socket, pipe
):
    backend.set_script("model-a", ModelScript(reply=f"{SAID}\n{WENT_ON}\nA: Fine, we drive."))
    admin_socket.answer("execute", overlay_answer("model-a", "model-b"))

    first = await run_chat(admin_socket, None, pipe, "How do we get to the lake?")

    assert speakers(first.saved) == ["A", "B"] and first.saved == first.delivered
    reloaded = (await owui.get_chat(first.chat_id))["chat"]["history"]["messages"]
    saved = reloaded[first.assistant_message_id]["content"]  # what a reload shows
    [(reason, summary, folded)] = FOLD.findall(saved)
    assert reason == "speaker" and summary == "✂️ A went on as B — not heard by the others"
    # the line spoken as B, read to its end; then the pipe closed the stream
    assert html.unescape(folded).startswith(WENT_ON) and "Fine" not in folded
    assert SAID in saved.split("<details")[0]
    b_request = backend.requests_for("model-b")[0]
    assert "we drive" not in str(b_request.messages) and SAID in str(b_request.messages)

    # The browser's own save of the chat, then a follow-up in the same chat.
    await owui.browser_save(first.chat_id)
    second = await run_chat(admin_socket, None, pipe, "Any other ideas?", chat_id=first.chat_id)

    assert speakers(second.saved) == ["A", "B"]
    for request in backend.requests[2:]:
        views = [text_of(m["content"]) for m in request.messages]
        assert not any("we drive" in v or "✂️" in v for v in views), request.model
        assert any(SAID in v for v in views), request.model  # the turn itself is heard
    kept = (await owui.get_chat(first.chat_id))["chat"]["history"]["messages"]
    assert kept[first.assistant_message_id]["content"] == saved
