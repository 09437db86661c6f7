"""Issue 27 in a real browser: lines that are true.

A cancelled /reconfigure says the chat keeps its setup (and the next message runs it without a
dialog); there "Use defaults" asks before it replaces the chat's setup, and replaces it only
when confirmed. The usage table fits a 390-px phone screen.
"""

from __future__ import annotations

import pytest

from tests.backend import ModelScript
from tests.integration.owui import Owui
from tests.integration.test_browser import (
    CHROMIUM,
    CONTENT,
    FUNCTION_ID,
    OVERLAY,
    browser_page,
    fill_overlay,
    install_pipe,
    send_to_pipe,
    sign_in,
    speaker_headings,
    wait_finished,
)
from tests.integration.test_browser_setup import chat_id_of, follow_up

pytestmark = pytest.mark.browser

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)", allow_module_level=True)

VALVES = {
    "NUM_PARTICIPANTS": 2,
    "ROUNDS_PER_CONVERSATION": 1,
    "Participant1Model": "model-c",
    "Participant1Alias": "Val",
    "Participant2Model": "model-d",
    "Participant2Alias": "Dee",
}


async def reconfigure(page) -> None:
    await page.click("#chat-input")
    await page.keyboard.type("/reconfigure")
    await page.click("#send-message-button")
    await page.locator(OVERLAY).wait_for()


async def test_reconfigure_cancelled_keeps_the_setup_and_use_defaults_asks_first(
    owui: Owui, backend
) -> None:
    for model in ("model-a", "model-b", "model-c", "model-d"):
        backend.set_script(model, ModelScript(tokens=8, delay=0.01))
    await install_pipe(owui)
    await owui.set_user_valves(FUNCTION_ID, VALVES, merge=False)
    try:
        async with browser_page() as (_, page, dialogs):
            await sign_in(page, owui)
            await send_to_pipe(page, owui, "Tea or coffee?")
            await fill_overlay(page, 1, [("model-a", "Ada", ""), ("model-b", "Bob", "")])
            await wait_finished(page)
            chat_id = chat_id_of(page)
            chosen = (await owui.get_chat(chat_id))["meta"]["multi_model_config"]

            await reconfigure(page)
            overlay = page.locator(OVERLAY)
            await overlay.locator("#mmc-cancel").click()
            await overlay.wait_for(state="detached")
            line = await wait_finished(page, assistant_messages=2)
            assert "keeps its saved setup" in line and "open it again" not in line, line
            await follow_up(page, "And tea?", assistant_messages=3)
            assert await page.locator(OVERLAY).count() == 0  # as the line said: no dialog
            assert await speaker_headings(page) == ["Ada", "Bob"]

            # Use defaults would replace the chat's setup: it asks first, and Cancel keeps it.
            await reconfigure(page)
            await overlay.locator("#mmc-skip").click()
            await page.wait_for_timeout(500)
            assert await overlay.is_visible(), "Use defaults replaced the setup without asking"
            question = await overlay.locator(".mmc-error").inner_text()
            assert "replaces this chat's saved setup" in question, question
            await overlay.locator("#mmc-cancel").click()
            await overlay.wait_for(state="detached")
            await wait_finished(page, assistant_messages=4)
            assert (await owui.get_chat(chat_id))["meta"]["multi_model_config"] == chosen

            # Confirmed, it replaces it with the user's defaults.
            await reconfigure(page)
            await overlay.locator("#mmc-skip").click()
            await overlay.locator("#mmc-skip", has_text="Replace it").click()
            await overlay.wait_for(state="detached")
            await page.locator(CONTENT).last.get_by_text("Dee").wait_for()
            await wait_finished(page)
            assert await speaker_headings(page) == ["Val", "Dee"]
            replaced = (await owui.get_chat(chat_id))["meta"]["multi_model_config"]
            assert [p["alias"] for p in replaced["participants"]] == ["Val", "Dee"]
            assert dialogs == []
    finally:
        await owui.set_user_valves(FUNCTION_ID, {}, merge=False)


async def test_the_usage_table_fits_a_phone(owui: Owui, backend) -> None:
    for model in ("model-c", "model-d"):
        backend.set_script(model, ModelScript(tokens=8, delay=0.01))
    await install_pipe(owui, usage=True)
    await owui.set_function_valves(FUNCTION_ID, {"CONFIG_OVERLAY": False, "SHOW_MODELS": True})
    await owui.set_user_valves(FUNCTION_ID, VALVES, merge=False)
    try:
        async with browser_page(390, 844) as (_, page, _dialogs):
            await sign_in(page, owui)
            await send_to_pipe(page, owui, "Tea or coffee?")
            await wait_finished(page)
            content = page.locator(CONTENT).last
            await content.get_by_text("Usage:").click()  # open the collapsed block
            table = content.locator("table").last
            await table.wait_for()
            cells = await table.locator("th, td").evaluate_all(
                "els => els.map(e => [e.innerText, e.getBoundingClientRect().right])"
            )
            width = await page.evaluate("window.innerWidth")
            header = [text.strip().lower() for text, _ in cells[:5]]
            assert header[0] == "speaker" and header[-1] == "seconds", header
            assert not any("<" in text for text, _ in cells), cells  # no tag shown as text
            cut = [(text, round(right)) for text, right in cells if right > width]
            assert cut == [], f"cut off at {width} px: {cut}"
    finally:
        await owui.set_user_valves(FUNCTION_ID, {}, merge=False)
        await owui.set_function_valves(FUNCTION_ID, {"SHOW_MODELS": False})
