"""Issue 19 in a real browser: what the user chose in the setup dialog is what runs.

A preset with two of its choices changed runs as chosen on the first message, the follow-up
and after a reload, and /reconfigure opens on that setup. The dialog keeps what was typed: an
invalid value keeps it open with the message by the field; typing keeps it open past its
timeout, and a dialog that timed out is not remembered. Its checkbox and selects look like
what they are in both themes, and it is usable at 390x844. Open WebUI's own Continue Response
adds a round whose headings start on their own lines, counted in the status, also after a
reload.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.async_api import Page

from tests.backend import ModelScript
from tests.integration.owui import Owui
from tests.integration.test_browser import (
    CONTENT,
    OVERLAY,
    browser_page,
    end_status,
    fill_overlay,
    install_pipe,
    pick_model,
    screenshot_path,
    script_participants,
    send_to_pipe,
    sign_in,
    speaker_headings,
    wait_finished,
)

pytestmark = pytest.mark.browser

FUNCTION_ID = "mmc"
BRAINSTORMERS = ["Dreamer", "Builder", "Skeptic"]


async def follow_up(page: Page, text: str, assistant_messages: int) -> str:
    await page.click("#chat-input")
    await page.keyboard.type(text)
    await page.click("#send-message-button")
    return await wait_finished(page, assistant_messages=assistant_messages)


async def headings_of(page: Page, index: int) -> list[str]:
    headings = await page.locator(CONTENT).nth(index).locator("h3").all_inner_texts()
    return [h.strip().split(" ", 1)[-1] for h in headings]


def chat_id_of(page: Page) -> str:
    return page.url.rsplit("/", 1)[-1]


async def test_a_preset_with_two_changes_runs_as_chosen_every_time(owui: Owui, backend) -> None:
    script_participants(backend)
    await install_pipe(owui)

    async with browser_page() as (_, page, dialogs):
        await sign_in(page, owui)
        await send_to_pipe(page, owui, "How do we get more people to cycle?")
        overlay = page.locator(OVERLAY)
        await overlay.wait_for()
        # Brainstorm: random order, PASS, a Summary at the end. Round robin and no ending.
        await overlay.locator("select[name=preset]").select_option("brainstorm")
        assert await overlay.locator("select[name=selection]").input_value() == "random"
        await overlay.locator("select[name=selection]").select_option("round_robin")
        await overlay.locator("select[name=closing_kind]").select_option("")
        await overlay.locator("input[name=rounds]").fill("2")
        boxes = overlay.locator("fieldset[data-participant]")
        for i, model in enumerate(("model-a", "model-b", "model-c")):
            await pick_model(boxes.nth(i), "model", model)
        await overlay.locator("#mmc-start").click()
        await overlay.wait_for(state="detached")

        chosen = BRAINSTORMERS * 2  # in order, and no Summary
        await wait_finished(page)
        assert await speaker_headings(page) == chosen
        saved = (await owui.get_chat(chat_id_of(page)))["meta"]["multi_model_config"]
        assert saved["selection"] == "round_robin" and saved["closing"] is None
        assert saved["preset"] == "brainstorm" and saved["preset_resolved"] is True

        await follow_up(page, "And in winter?", assistant_messages=2)
        assert await page.locator(OVERLAY).count() == 0
        assert await headings_of(page, 1) == chosen

        await page.reload()
        await wait_finished(page, assistant_messages=2)
        assert await headings_of(page, 0) == chosen and await headings_of(page, 1) == chosen

        # /reconfigure opens on this chat's setup, not on the user's defaults.
        await page.click("#chat-input")
        await page.keyboard.type("/reconfigure")
        await page.click("#send-message-button")
        await overlay.wait_for()
        assert await overlay.locator("select[name=preset]").input_value() == "brainstorm"
        assert await overlay.locator("select[name=selection]").input_value() == "round_robin"
        assert await overlay.locator("select[name=closing_kind]").input_value() == ""
        assert await overlay.locator("input[name=rounds]").input_value() == "2"
        aliases = overlay.locator("fieldset[data-participant] input[name=alias]")
        assert await aliases.evaluate_all("els => els.map(e => e.value)") == BRAINSTORMERS
        models = overlay.locator("fieldset[data-participant] input[name=model]")
        ids = await models.evaluate_all("els => els.map(e => e.dataset.modelId)")
        assert ids == ["model-a", "model-b", "model-c"]
        await overlay.locator("#mmc-cancel").click()
        await overlay.wait_for(state="detached")
        assert dialogs == []


async def test_the_dialog_keeps_what_was_typed(owui: Owui, backend) -> None:
    script_participants(backend)
    await install_pipe(owui)

    async with browser_page() as (_, page, dialogs):
        await sign_in(page, owui)
        await send_to_pipe(page, owui, "Tea or coffee?")
        overlay = page.locator(OVERLAY)
        await overlay.wait_for()
        # Focus starts on the first field, not on Start.
        assert await page.evaluate("() => document.activeElement.name") == "preset"

        # The count field and the cards agree.
        count = overlay.locator("input[name=count]")
        await count.fill("9")
        await count.blur()
        assert await count.input_value() == "5"
        assert await overlay.locator("fieldset[data-participant]").count() == 5
        await count.fill("2")
        await count.blur()

        # A preset fills only what nobody touched; None gives back the user's settings.
        boxes = overlay.locator("fieldset[data-participant]")
        await boxes.nth(0).locator("input[name=alias]").fill("Mine")
        persona = "Typed with care: a patient tea merchant."
        await boxes.nth(0).locator("textarea[name=system_message]").fill(persona)
        preset = overlay.locator("select[name=preset]")
        await preset.select_option("debate")
        assert await boxes.nth(0).locator("input[name=alias]").input_value() == "Mine"
        assert await boxes.nth(1).locator("input[name=alias]").input_value() == "Con"
        assert await overlay.locator("input[name=rounds]").input_value() == "2"
        await preset.select_option("")
        assert await boxes.nth(1).locator("input[name=alias]").input_value() == ""
        assert await overlay.locator("input[name=rounds]").input_value() == "3"  # the valves'
        assert await overlay.locator("select[name=closing_kind]").input_value() == ""

        # An invalid value: the dialog stays, the message is by the field, nothing is lost.
        await pick_model(boxes.nth(0), "model", "model-a")
        await pick_model(boxes.nth(1), "model", "model-b")
        rounds = overlay.locator("input[name=rounds]")
        await rounds.fill("21")
        await overlay.locator("#mmc-start").click()
        assert await overlay.count() == 1
        assert await rounds.get_attribute("aria-invalid") == "true"
        message = overlay.locator(f"#{await rounds.get_attribute('aria-describedby')}")
        assert "from 1 to 20" in await message.inner_text()
        assert await page.evaluate("() => document.activeElement.name") == "rounds"
        assert await boxes.nth(0).locator("textarea[name=system_message]").input_value() == persona
        assert await boxes.nth(0).locator("input[name=alias]").input_value() == "Mine"
        await rounds.fill("1")
        await overlay.locator("#mmc-start").click()
        await overlay.wait_for(state="detached")
        await wait_finished(page)
        headings = await speaker_headings(page)
        assert len(headings) == 2 and headings[0] == "Mine", headings
        asked = [r for r in backend.requests if r.stream and r.model == "model-a"]
        assert persona in str(asked[0].messages)
        assert dialogs == []


async def test_typing_keeps_the_dialog_open_past_its_timeout(owui: Owui, backend) -> None:
    await install_pipe(owui)
    await owui.set_function_valves(FUNCTION_ID, {"OVERLAY_TIMEOUT": 5})

    async with browser_page() as (_, page, dialogs):
        await sign_in(page, owui)
        await send_to_pipe(page, owui, "Slow typist here.")
        overlay = page.locator(OVERLAY)
        await overlay.wait_for()
        persona = overlay.locator("fieldset[data-participant] textarea[name=system_message]")
        await persona.first.click()
        for word in "one two three four five six seven eight nine".split():  # ~9 s of typing
            await page.keyboard.type(word + " ", delay=100)
            await page.wait_for_timeout(700)
        assert await overlay.count() == 1, "the dialog closed while the user typed"
        # Quiet for longer than the timeout: it closes, and the setup is not remembered.
        await overlay.wait_for(state="detached", timeout=10_000)
        text = await wait_finished(page)
        assert "participant" in text  # the user valves name nobody: the message says so
        chat = await owui.get_chat(chat_id_of(page))
        assert "multi_model_config" not in (chat.get("meta") or {})
        assert dialogs == []


CONTROLS_JS = """() => {
  const o = document.querySelector('#mmc-config-overlay');
  const s = o.querySelector('select[name=selection]');
  const style = getComputedStyle(s);
  return {appearance: style.appearance, image: style.backgroundImage};
}"""


async def pass_box_pixels(page: Page) -> tuple[bytes, bytes]:
    box = page.locator(f"{OVERLAY} input[name=pass_allowed]")
    await box.set_checked(False)
    await page.wait_for_timeout(300)  # past any transition of the host's control
    off = await box.screenshot()
    await box.set_checked(True)
    await page.wait_for_timeout(300)
    on = await box.screenshot()
    await box.set_checked(False)
    return off, on


@pytest.mark.parametrize("theme", ["light", "dark"])
async def test_checkbox_and_selects_look_like_what_they_are(
    owui: Owui, backend, theme: str, tmp_path: Path
) -> None:
    await install_pipe(owui)

    async with browser_page() as (_, page, dialogs):
        await sign_in(page, owui)
        await page.evaluate(f"() => localStorage.setItem('theme', '{theme}')")
        await page.reload()
        await page.locator("#chat-input").wait_for()
        await send_to_pipe(page, owui, "Look at the form.")
        overlay = page.locator(OVERLAY)
        await overlay.wait_for()
        off, on = await pass_box_pixels(page)
        assert off != on, "PASS allowed looks the same checked and unchecked"
        style = await page.evaluate(CONTROLS_JS)
        # A select keeps its arrow: the native one, or the host's drawn as a background image.
        assert style["appearance"] != "none" or "url(" in style["image"], style
        await overlay.locator("#mmc-cancel").click()
        await overlay.wait_for(state="detached")
        await page.evaluate("() => localStorage.setItem('theme', 'light')")
        assert dialogs == []


async def test_the_dialog_is_usable_on_a_phone(owui: Owui, backend, tmp_path: Path) -> None:
    await install_pipe(owui)

    async with browser_page(390, 844) as (_, page, dialogs):
        await sign_in(page, owui)
        await send_to_pipe(page, owui, "From my phone.")
        overlay = page.locator(OVERLAY)
        await overlay.wait_for()
        await overlay.locator("select[name=preset]").select_option("debate")
        for selector in ("select[name=preset]", "select[name=selection]", "#mmc-start"):
            node = overlay.locator(selector)
            await node.scroll_into_view_if_needed()
            box = await node.bounding_box()
            assert box and box["x"] >= 0 and box["x"] + box["width"] <= 390, (selector, box)
        for button in ("#mmc-cancel", "#mmc-skip", "#mmc-start"):
            lines = await overlay.locator(button).evaluate(
                "b => Math.round(b.getBoundingClientRect().height"
                " / parseFloat(getComputedStyle(b).lineHeight))"
            )
            assert lines <= 2, (button, lines)  # padding included: one line of text
            text = await overlay.locator(button).inner_text()
            assert "\n" not in text, (button, text)
        await overlay.locator(".mmc-body").evaluate("b => { b.scrollTop = 0; }")
        path = screenshot_path(tmp_path, "setup-dialog-phone.png")
        path.parent.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(path))
        assert path.stat().st_size < 500_000
        await overlay.locator("#mmc-cancel").click()
        await overlay.wait_for(state="detached")
        assert dialogs == []


async def saved_content(owui: Owui, page: Page) -> str:
    chat = (await owui.get_chat(chat_id_of(page)))["chat"]
    history = chat["history"]
    return history["messages"][history["currentId"]]["content"]


def headings_on_their_own_lines(content: str) -> None:
    for match in re.finditer(r"### \S+ ", content):
        before = content[: match.start()]
        assert before == "" or before.endswith("\n"), (
            before[-40:] + "|" + content[match.start() :][:20]
        )


@pytest.mark.smoke
async def test_continue_response_adds_a_round_on_its_own_lines(owui: Owui, backend) -> None:
    for model in ("model-a", "model-b"):
        backend.set_script(model, ModelScript(delay=0.01))
    await install_pipe(owui)

    async with browser_page() as (_, page, dialogs):
        await sign_in(page, owui)
        await send_to_pipe(page, owui, "Tea or coffee?")
        await fill_overlay(page, 1, [("model-a", "Ada", ""), ("model-b", "Grace", "")])
        await wait_finished(page)
        assert await speaker_headings(page) == ["Ada", "Grace"]

        await page.locator(CONTENT).last.hover()
        await page.locator('#continue-response-button[aria-label="Continue Response"]').last.click()
        await page.locator(CONTENT).last.locator("h3").nth(3).wait_for()
        await wait_finished(page)
        assert await speaker_headings(page) == ["Ada", "Grace", "Ada", "Grace"]
        content = await saved_content(owui, page)
        headings_on_their_own_lines(content)
        assert len(re.findall(r"^### ", content, re.MULTILINE)) == 4
        status = await end_status(page)
        assert status.startswith("2 participants, 4 turns"), status
        assert await page.locator(OVERLAY).count() == 0

        await page.reload()
        await wait_finished(page)
        assert await speaker_headings(page) == ["Ada", "Grace", "Ada", "Grace"]
        assert (await end_status(page)).startswith("2 participants, 4 turns")

        # Regenerate: the conversation again, from the user's message, as a new response.
        asked = len(backend.requests)
        await page.locator(CONTENT).last.hover()
        # 0.10 labels a div inside the menu's trigger, 0.11+ the button (scripts/test --owui).
        regenerate = 'button[aria-label="Regenerate"], div[aria-label="Regenerate"]'
        await page.locator(regenerate).last.click()
        await page.get_by_text("Try Again", exact=True).click()  # the menu's plain regenerate
        await page.wait_for_function(
            f"() => document.querySelectorAll('{CONTENT}').length && "
            f"[...document.querySelectorAll('{CONTENT}')].at(-1).querySelectorAll('h3').length"
            " === 2",
        )
        await wait_finished(page)
        assert await speaker_headings(page) == ["Ada", "Grace"]
        assert len([r for r in backend.requests[asked:] if r.stream]) == 2
        content = await saved_content(owui, page)
        headings_on_their_own_lines(content)
        assert len(re.findall(r"^### ", content, re.MULTILINE)) == 2
        assert (await end_status(page)).startswith("2 participants, 2 turns")
        assert dialogs == []
