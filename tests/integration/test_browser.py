"""The pipe in a real browser: headless Chromium drives the session's Open WebUI 0.12.4 UI.

The user signs in through the form, picks the pipe in the model picker, sends a message, fills
the pipe's setup dialog in the page and watches three scripted models talk for two rounds.
The rendered page must show the speakers' headings in order, a collapsed reasoning block per
turn and the whole last turn, the same after a reload. A second chat checks that an alias
holding HTML shows as text and injects nothing. A third picks the debate preset and a closing
model in the dialog, then checks the page after a reload and a follow-up message.

The dialog itself: Escape, Cancel, a click outside it and a Stop while it is open each end the
request with one line (in the page, in the saved chat, after a reload); it fits 1280x720 with
its buttons in view, its fields are labelled, focus stays in it, it follows the dark theme, and
its model picker finds a model by name from the keyboard.

Screenshots go into the test's temporary directory, so a run leaves the tree clean; the
README's pictures come from the demo itself (scripts/demo_screenshots.py).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright

from tests.backend import ModelScript, default_reply
from tests.integration.owui import ADMIN_EMAIL, ADMIN_PASSWORD, Owui

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "tests" / ".artifacts"
FUNCTION_ID = "mmc"
PIPE_MODEL = f"{FUNCTION_ID}.Conversation-pipe"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 30_000  # any single wait in the page
REPLY_TOKENS = 24  # length of the default reply (requests the table below does not name)
REASONING_TOKENS = 6
TOKEN_DELAY = 0.02  # seconds per streamed token: well under a second per turn

# Selectors that work on 0.12.4 (see /work/shared/OPENWEBUI_NOTES.md).
ASSISTANT = ".chat-assistant"
CONTENT = f"{ASSISTANT} #response-content-container"
COPY_BUTTON = "button.copy-response-button"
OVERLAY = "#mmc-config-overlay"
CARD = f"{OVERLAY} [role=dialog]"
STOP_BUTTON = 'button[aria-label="Stop"]'
SETUP_CANCELLED = "Setup cancelled"
# The CSS colour of each heading mark, in order (multi_model_conversation.MARK_COLOURS).
MARK_RGB = ["rgb(229, 57, 53)", "rgb(30, 136, 229)", "rgb(67, 160, 71)", "rgb(249, 168, 37)"]

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)", allow_module_level=True)


# What each model says in its n-th reply (any other request gets the default reply).
REPLIES = {
    ("model-a", 1): "Tea, clearly. Half the caffeine of coffee, so the focus lasts without "
    "the crash, and steeping it forces a pause that most working days lack.",
    ("model-b", 1): "In practice coffee wins the morning: it is quick to make for a whole "
    "team, the effect is predictable, and one shared pot gets everyone going.",
    ("model-c", 1): "You are both arguing taste as if it were data. Neither of you has "
    "measured anything; a sleep log would settle this faster than another round.",
    ("model-a", 2): "Fair. I will log my sleep for a week on tea and a week on coffee, and "
    "we compare the numbers instead of our preferences.",
    ("model-b", 2): "Agreed, and let us log the afternoon slump too: that is where I expect "
    "tea to do better than I would like to admit.",
    ("model-c", 2): "Good. Two weeks, one spreadsheet, no sugar in either cup. Until then "
    "this discussion is over, and the kettle is free.",
}


def reply_for(record) -> str:
    return REPLIES.get((record.model, record.n)) or default_reply(
        record.model, record.n, REPLY_TOKENS
    )


async def install_pipe(owui: Owui, usage: bool = False) -> None:
    """The pipe from the repo file, with default admin valves (earlier tests may change them);
    the usage table only where a test looks for it (most read the last turn at the end)."""
    await owui.install_function(ROOT / "multi_model_conversation.py", FUNCTION_ID)
    await owui.set_function_valves(FUNCTION_ID, {"SHOW_USAGE": usage}, merge=False)


def script_participants(backend) -> None:
    """model-a/b/c stream a few reasoning tokens, then their reply, a token at a time."""
    for model in ("model-a", "model-b", "model-c"):
        backend.set_script(
            model,
            ModelScript(reply=reply_for, delay=TOKEN_DELAY, reasoning_tokens=REASONING_TOKENS),
        )


def screenshot_path(tmp_path: Path, name: str) -> Path:
    """Where a test's screenshot goes: its temporary directory (docs/ is the demo's)."""
    return tmp_path / name


@asynccontextmanager
async def browser_page(
    width: int = 1280, height: int = 900
) -> AsyncIterator[tuple[Browser, Page, list[str]]]:
    """A fresh headless Chromium page; the list collects every JS dialog (alert) it opened."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            page = await browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(TIMEOUT_MS)
            dialogs: list[str] = []

            async def on_dialog(dialog) -> None:
                dialogs.append(f"{dialog.type}: {dialog.message}")
                await dialog.dismiss()

            page.on("dialog", on_dialog)
            # "What's New" opens once per account, whenever the app feels like it: close it
            # whenever it stands in the way of an action.
            whats_new = page.get_by_role("button", name="Okay, Let's Go!")

            async def close_whats_new(button) -> None:
                await button.click()

            await page.add_locator_handler(whats_new, close_whats_new)
            try:
                yield browser, page, dialogs
            except BaseException:
                await save_failure_artifacts(page)
                raise
        finally:
            await browser.close()


async def save_failure_artifacts(page: Page) -> None:
    """A screenshot and the HTML of a failed test's page, in tests/.artifacts/ (git-ignored)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    name = f"browser-failure-{int(time.time())}"
    try:
        await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), timeout=5_000)
        (ARTIFACTS / f"{name}.html").write_text(await page.content())
        print(f"\nbrowser artifacts: {ARTIFACTS / name}.png and .html")
    except Exception as exc:  # the page may be gone; the original error matters more
        print(f"\ncould not save browser artifacts: {exc}")


async def sign_in(page: Page, owui: Owui, through_form: bool = False) -> None:
    """Signs the admin in: through the form, or with the session's token as the page keeps it.

    Open WebUI 0.12.4 refuses a 16th sign-in of one account within 3 minutes
    (`signin_rate_limiter`), and a test session opens more pages than that: one test signs in
    through the form, the others reuse the token the form would have stored."""
    if not through_form:
        # Before any of the app's scripts run, on every page load: the app never sees a page
        # without it (set after loading /auth, it raced the page's own start in 2 of 12 runs).
        await page.add_init_script(f"localStorage.setItem('token', {json.dumps(owui.admin_token)})")
        await page.goto(owui.url)
        await page.locator("#chat-input").wait_for()
        return
    await page.goto(f"{owui.url}/auth")
    await page.fill("#email", ADMIN_EMAIL)
    await page.fill("#password", ADMIN_PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await page.locator("#chat-input").wait_for()


async def send_to_pipe(page: Page, owui: Owui, text: str) -> None:
    """Picks the pipe in the model picker, types the message and sends it."""
    # "Multi-Model Conversation", unless a model entry made for the pipe (a grant) renamed it.
    name = (await owui.models())[PIPE_MODEL]["name"]
    # 0.12 marks each option with its id, 0.10-0.11 only label it; 0.10 numbers the picker's
    # button (scripts/test --owui).
    button = page.locator("#model-selector-model-button, #model-selector-0-button").first
    await button.click()
    option = f'#model-selector-list [role=option][data-value="{PIPE_MODEL}"]'
    await page.locator(f'{option}, [role=option][aria-label="Select {name} model"]').first.click()
    await button.filter(has_text=name).wait_for()
    await page.click("#chat-input")
    await page.keyboard.type(text)
    await page.click("#send-message-button")


async def pick_model(scope, name: str, model_id: str) -> None:
    """Types a model's name into a model picker of `scope` and clicks the option it shows."""
    picker = scope.locator(f"input[name={name}]")
    await picker.fill(model_id)
    await scope.locator(f'[role=option][data-value="{model_id}"]').click()
    assert await picker.get_attribute("data-model-id") == model_id


async def fill_participants(page: Page, rounds: int, participants: list[tuple[str, str, str]]):
    """Fills the pipe's setup dialog: rounds, then model, alias, persona per participant."""
    overlay = page.locator(OVERLAY)
    await overlay.wait_for()
    await overlay.locator("input[name=rounds]").fill(str(rounds))
    await overlay.locator("input[name=count]").fill(str(len(participants)))
    await overlay.locator("select[name=selection]").select_option("round_robin")
    boxes = overlay.locator("fieldset[data-participant]")
    await boxes.nth(len(participants) - 1).wait_for()
    assert await boxes.count() == len(participants)
    for i, (model, alias, persona) in enumerate(participants):
        box = boxes.nth(i)
        await pick_model(box, "model", model)
        await box.locator("input[name=alias]").fill(alias)
        await box.locator("textarea[name=system_message]").fill(persona)


async def fill_overlay(page: Page, rounds: int, participants: list[tuple[str, str, str]]) -> None:
    """Fills the pipe's setup dialog and starts."""
    await fill_participants(page, rounds, participants)
    overlay = page.locator(OVERLAY)
    await overlay.locator("#mmc-start").click()
    await overlay.wait_for(state="detached")


async def wait_finished(page: Page, assistant_messages: int = 1, stable_ms: int = 600) -> str:
    """Waits for the Copy button of the last reply, then until its text stops changing."""
    await page.locator(COPY_BUTTON).nth(assistant_messages - 1).wait_for()
    content = page.locator(CONTENT).last
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    text = await content.inner_text()
    while time.monotonic() < deadline:
        await page.wait_for_timeout(stable_ms)
        again = await content.inner_text()
        if again == text:
            return text
        text = again
    raise AssertionError(f"the reply kept changing for {TIMEOUT_MS} ms:\n{text[-500:]}")


async def speaker_headings(page: Page) -> list[str]:
    """The aliases of the last reply's `### <mark> <alias>` headings, as rendered."""
    headings = await page.locator(CONTENT).last.locator("h3").all_inner_texts()
    return [h.strip().split(" ", 1)[-1] for h in headings]


async def check_rendered_conversation(
    page: Page, aliases: list[str], last_turn: str, usage: bool = False
) -> None:
    """Headings in order, one collapsed reasoning block per turn, the whole last turn (then
    the collapsed usage table, if on)."""
    content = page.locator(CONTENT).last
    assert await speaker_headings(page) == aliases
    reasoning = content.locator("button[aria-expanded]", has_text=re.compile(r"Thought for"))
    assert await reasoning.count() == len(aliases)
    for i in range(len(aliases)):
        assert await reasoning.nth(i).get_attribute("aria-expanded") == "false"
    assert "think1-model-a" not in await content.inner_text()  # collapsed: reasoning hidden
    assert not await content.locator("details").count()  # rendered, not raw HTML
    text = await content.inner_text()
    if usage:
        # The usage table: one collapsed block after the last turn, its table hidden.
        ledger = content.locator("button[aria-expanded]", has_text=re.compile(r"Usage: \d"))
        assert await ledger.count() == 1
        assert await ledger.get_attribute("aria-expanded") == "false"
        assert "Completion tokens" not in text
        text = text[: text.rindex("Usage: ")]
    assert text.rstrip().endswith(last_turn), text[-300:]
    assert "<details" not in text and "&lt;" not in text and "&gt;" not in text


async def save_screenshot(page: Page, path: Path) -> None:
    """The whole conversation in one PNG: the viewport grows to fit the scrolled messages."""
    extra = await page.evaluate(
        "() => { const m = document.getElementById('messages-container');"
        " return m ? m.scrollHeight - m.clientHeight : 0; }"
    )
    size = page.viewport_size or {"width": 1280, "height": 900}
    await page.set_viewport_size(
        {"width": size["width"], "height": min(size["height"] + max(extra, 0) + 20, 4000)}
    )
    await page.evaluate(
        "() => { const m = document.getElementById('messages-container'); if (m) m.scrollTop = 0; }"
    )
    await page.wait_for_timeout(300)  # let the resized layout paint
    path.parent.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(path))
    assert path.stat().st_size < 500_000, path.stat().st_size
    await page.set_viewport_size(size)


THREE = [
    ("model-a", "Ada", "You are Ada, a patient mathematician."),
    ("model-b", "Grace", "You are Grace, a pragmatic engineer."),
    ("model-c", "Linus", "You are Linus, a blunt reviewer."),
]


async def test_three_models_talk_in_the_browser(owui: Owui, backend, tmp_path: Path) -> None:
    started = time.monotonic()
    script_participants(backend)
    await install_pipe(owui, usage=True)
    participants = THREE
    aliases = [alias for _, alias, _ in participants] * 2

    async with browser_page() as (_, page, dialogs):
        await sign_in(page, owui, through_form=True)
        signed_in = time.monotonic()
        await send_to_pipe(page, owui, "Is tea better than coffee?")
        await fill_overlay(page, 2, participants)

        # It streams: the first heading shows long before the sixth.
        content = page.locator(CONTENT).last
        await content.locator("h3").first.wait_for()
        assert await content.locator("h3").count() < len(aliases)

        await wait_finished(page)
        finished = time.monotonic()
        last = [r for r in backend.requests if r.model == "model-c" and r.stream][-1]
        assert last.completed and last.n == 2
        assert last.reply == REPLIES[("model-c", 2)]
        assert [r.model for r in backend.requests if r.stream] == [
            "model-a",
            "model-b",
            "model-c",
        ] * 2
        await check_rendered_conversation(page, aliases, last.reply, usage=True)
        assert END_STATUS.match(await end_status(page)), await end_status(page)
        assert (await end_status(page)).startswith("3 participants, 6 turns, ")
        chat_url = page.url
        assert "/c/" in chat_url

        # The saved chat renders the same after a reload.
        await page.reload()
        await wait_finished(page)
        assert page.url == chat_url
        await check_rendered_conversation(page, aliases, last.reply, usage=True)

        # Opening a reasoning block shows what that model thought.
        first_block = content.locator("button[aria-expanded]", has_text="Thought for").first
        await first_block.click()
        await page.get_by_text("think1-model-a").first.wait_for()
        assert await first_block.get_attribute("aria-expanded") == "true"
        # Opening the usage table shows a row per participant and the totals.
        ledger = content.locator("button[aria-expanded]", has_text=re.compile(r"Usage: \d"))
        await ledger.click()
        table = content.locator("table").last
        await table.wait_for()
        rows = await table.locator("tbody tr").all_inner_texts()
        # The first cell holds the speaker with its model on the line under it (issue 27: the
        # table fits a phone).
        cells = [r.split("\t")[0].strip().splitlines() for r in rows]
        assert [c[0].strip() for c in cells] == ["Ada", "Grace", "Linus", "Total"], (
            await table.inner_html()
        )[:2000]
        assert [c[-1].strip() for c in cells[:3]] == ["model-a", "model-b", "model-c"]

        await save_screenshot(page, screenshot_path(tmp_path, "conversation.png"))
        assert dialogs == []
    print(
        f"\nbrowser: sign-in {signed_in - started:.1f}s, conversation "
        f"{finished - signed_in:.1f}s, total {time.monotonic() - started:.1f}s"
    )


async def test_alias_with_html_shows_as_text(owui: Owui, backend) -> None:
    script_participants(backend)
    await install_pipe(owui)
    evil = '"><img src=x onerror=alert(1)>'

    async with browser_page() as (_, page, dialogs):
        await sign_in(page, owui)
        await send_to_pipe(page, owui, "Introduce yourselves.")
        await fill_overlay(
            page, 1, [("model-a", "Ada", "Be brief."), ("model-b", evil, "Be brief.")]
        )
        await wait_finished(page)
        content = page.locator(CONTENT).last

        # Nothing was injected: no image, no handler, no alert, anywhere in the page.
        assert await page.locator("img[onerror]").count() == 0
        assert await page.locator('img[src="x"]').count() == 0
        assert await content.locator("img").count() == 0
        assert dialogs == []
        # The whole reply still rendered: both turns, the second one complete.
        headings = await speaker_headings(page)
        assert len(headings) == 2 and headings[0] == "Ada"
        text = await content.inner_text()
        assert text.rstrip().endswith(REPLIES[("model-b", 1)])

        # The alias shows literally, as typed.
        assert headings[1] == evil


async def test_a_preset_and_a_closing_model_from_the_dialog(owui: Owui, backend) -> None:
    script_participants(backend)
    backend.set_script("model-d", ModelScript(reply="Verdict: Pro argued better.", delay=0.01))
    await install_pipe(owui)

    async with browser_page() as (_, page, dialogs):
        await sign_in(page, owui)
        await send_to_pipe(page, owui, "Motion: tea beats coffee.")
        overlay = page.locator(OVERLAY)
        await overlay.wait_for()
        # The preset fills the fields; they stay editable.
        await overlay.locator("select[name=preset]").select_option("debate")
        assert await overlay.locator("input[name=rounds]").input_value() == "2"
        assert await overlay.locator("select[name=closing_kind]").input_value() == "turn"
        assert await overlay.locator("input[name=closing_alias]").input_value() == "Judge"
        boxes = overlay.locator("fieldset[data-participant]")
        assert await boxes.count() == 2
        assert await boxes.nth(0).locator("input[name=alias]").input_value() == "Pro"
        assert (
            "AGAINST" in await boxes.nth(1).locator("textarea[name=system_message]").input_value()
        )
        await overlay.locator("input[name=closing_alias]").fill("Referee")  # edited
        await pick_model(boxes.nth(0), "model", "model-a")
        await pick_model(boxes.nth(1), "model", "model-b")
        await pick_model(overlay, "closing_model", "model-d")
        await overlay.locator("#mmc-start").click()
        await overlay.wait_for(state="detached")

        expected = ["Pro", "Con", "Pro", "Con", "Referee"]
        await wait_finished(page)
        assert await speaker_headings(page) == expected
        text = await page.locator(CONTENT).last.inner_text()
        assert text.rstrip().endswith("Verdict: Pro argued better.")
        assert [r.model for r in backend.requests if r.stream] == ["model-a", "model-b"] * 2 + [
            "model-d"
        ]
        chat_id = page.url.rsplit("/", 1)[-1]
        saved = (await owui.get_chat(chat_id))["meta"]["multi_model_config"]
        assert saved["preset"] == "debate" and saved["closing"]["model"] == "model-d"
        assert saved["closing"]["alias"] == "Referee"

        await page.reload()
        await wait_finished(page)
        assert await speaker_headings(page) == expected

        # A follow-up message: no dialog, the same setup, the closing turn again.
        await page.click("#chat-input")
        await page.keyboard.type("Second motion: biscuits.")
        await page.click("#send-message-button")
        await wait_finished(page, assistant_messages=2)
        assert await page.locator(OVERLAY).count() == 0
        assert await speaker_headings(page) == expected
        judge = [r for r in backend.requests if r.model == "model-d"]
        assert len(judge) == 2 and "Second motion: biscuits." in str(judge[1].messages)
        assert dialogs == []


# -- the setup dialog -------------------------------------------------------------------------

INSIDE_DIALOG = "() => !!document.activeElement?.closest('#mmc-config-overlay [role=dialog]')"


async def open_dialog(page: Page, owui: Owui, text: str = "Hello?"):
    """Signs in, sends `text` to the pipe and returns the open setup dialog's overlay."""
    await sign_in(page, owui)
    await send_to_pipe(page, owui, text)
    overlay = page.locator(OVERLAY)
    await overlay.wait_for()
    return overlay


async def saved_reply(owui: Owui, page: Page) -> dict:
    """The page's chat's last assistant message, as the database holds it."""
    await page.wait_for_url(re.compile(r"/c/[\w-]+$"))
    chat_id = page.url.rsplit("/", 1)[-1]
    history = (await owui.get_chat(chat_id))["chat"]["history"]
    return history["messages"][history["currentId"]]


async def check_one_line_left(owui: Owui, page: Page, backend, line: str) -> None:
    """The request is over: no dialog, no Stop button, the message one line that says `line`,
    in the page, in the saved chat and after a reload; no model was asked anything."""
    await page.locator(OVERLAY).wait_for(state="detached")
    text = await wait_finished(page)
    assert line in text and len(text.strip().splitlines()) == 1, text
    assert await page.locator(STOP_BUTTON).count() == 0
    saved = await saved_reply(owui, page)
    assert line in saved["content"] and saved.get("done") is True, saved
    assert [r for r in backend.requests if r.stream] == []
    await page.reload()
    text = await wait_finished(page)
    assert line in text, text
    assert await page.locator(STOP_BUTTON).count() == 0
    assert await page.locator(OVERLAY).count() == 0


@pytest.mark.parametrize("how", ["escape", "escape-in-chat-input", "cancel", "outside"])
async def test_escape_cancel_or_a_click_outside_cancels_the_setup(owui: Owui, backend, how) -> None:
    script_participants(backend)
    await install_pipe(owui)

    async with browser_page() as (_, page, dialogs):
        overlay = await open_dialog(page, owui)
        assert await page.evaluate(INSIDE_DIALOG), "focus did not move into the dialog"
        if how == "escape":
            # The first Escape closes an open model list only; the next one closes the dialog
            # (before this fix it reached Open WebUI, which stopped the request under it).
            picker = overlay.locator("fieldset[data-participant] input[name=model]").first
            await picker.focus()
            await page.keyboard.press("ArrowDown")
            assert await picker.get_attribute("aria-expanded") == "true"
            await page.keyboard.press("Escape")
            assert await picker.get_attribute("aria-expanded") == "false"
            assert await overlay.count() == 1
            await page.keyboard.press("Escape")
        elif how == "escape-in-chat-input":
            # Escape in the chat input makes Open WebUI stop the request; with the dialog open
            # the dialog takes it first, wherever the focus is.
            await page.locator("#chat-input").dispatch_event("keydown", {"key": "Escape"})
        elif how == "cancel":
            await overlay.locator("#mmc-cancel").click()
        else:
            card = await page.locator(CARD).bounding_box()
            assert card and card["x"] > 40
            await page.mouse.click(20, card["y"] + 40)  # the dimmed page beside the card
        await check_one_line_left(owui, page, backend, SETUP_CANCELLED)

        # Nothing was remembered: the next message asks again, and this time it runs.
        await page.click("#chat-input")
        await page.keyboard.type("Now with a setup.")
        await page.click("#send-message-button")
        await fill_overlay(page, 1, [("model-a", "Ada", "Be brief.")])
        await wait_finished(page, assistant_messages=2)
        assert await speaker_headings(page) == ["Ada"]
        assert dialogs == []


async def test_a_stop_while_the_dialog_is_open_closes_it(owui: Owui, backend) -> None:
    """The request is stopped from elsewhere (another tab, the API): the dialog goes too."""
    script_participants(backend)
    await install_pipe(owui)

    async with browser_page() as (_, page, dialogs):
        await open_dialog(page, owui)
        await page.wait_for_url(re.compile(r"/c/[\w-]+$"))
        await owui.stop(page.url.rsplit("/", 1)[-1])
        await check_one_line_left(owui, page, backend, "Stopped before the conversation began")
        assert dialogs == []


async def test_the_dialog_fits_720p_is_labelled_and_keeps_focus(
    owui: Owui, backend, tmp_path: Path
) -> None:
    script_participants(backend)
    await install_pipe(owui)
    participants = THREE

    async with browser_page(1280, 720) as (_, page, dialogs):
        overlay = await open_dialog(page, owui, "Is tea better than coffee?")
        card = page.locator(CARD)
        assert await card.get_attribute("aria-modal") == "true"
        title = await card.get_attribute("aria-labelledby")
        assert await page.locator(f"#{title}").inner_text() == "Multi-Model Conversation"
        assert await page.evaluate(INSIDE_DIALOG)

        # Five participants: the body scrolls, the buttons stay in view.
        await overlay.locator("input[name=count]").fill("5")
        boxes = overlay.locator("fieldset[data-participant]")
        await boxes.nth(4).wait_for()
        body = overlay.locator(".mmc-body")
        assert await body.evaluate("b => b.scrollHeight > b.clientHeight")
        await body.evaluate("b => { b.scrollTop = b.scrollHeight; }")
        for button in ("#mmc-start", "#mmc-skip", "#mmc-cancel"):
            box = await overlay.locator(button).bounding_box()
            assert box, button
            assert 0 <= box["x"] and box["x"] + box["width"] <= 1280, (button, box)
            assert 0 <= box["y"] and box["y"] + box["height"] <= 720, (button, box)

        # Each field of a participant is found by its label; each card wears its mark's colour.
        for label in ("Model", "Alias", "Persona", "Max tokens per turn"):
            assert await overlay.get_by_label(label, exact=True).count() == 5, label
        for i, rgb in enumerate(MARK_RGB):
            style = await boxes.nth(i).evaluate("b => getComputedStyle(b).borderLeftColor")
            assert style == rgb, (i, style)

        # Tab and Shift+Tab go round inside the dialog.
        for key in ["Tab"] * 45 + ["Shift+Tab"] * 10:
            await page.keyboard.press(key)
            assert await page.evaluate(INSIDE_DIALOG), key

        await fill_participants(page, 2, participants)
        await body.evaluate("b => { b.scrollTop = 0; }")
        path = screenshot_path(tmp_path, "setup-dialog.png")
        path.parent.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(path))
        assert path.stat().st_size < 500_000

        # Enter on Start starts it.
        await overlay.locator("#mmc-start").focus()
        await page.keyboard.press("Enter")
        await overlay.wait_for(state="detached")
        await wait_finished(page)
        assert await speaker_headings(page) == ["Ada", "Grace", "Linus"] * 2
        assert dialogs == []


def luminance(css: str) -> float:
    """0 (black) to 1 (white) for a computed `rgb(...)`/`rgba(...)` colour."""
    r, g, b = (int(v) for v in re.findall(r"[\d.]+", css)[:3])
    return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255


async def test_the_dialog_follows_the_dark_theme(owui: Owui, backend) -> None:
    await install_pipe(owui)

    async with browser_page() as (_, page, dialogs):
        await sign_in(page, owui)
        await page.evaluate("() => localStorage.setItem('theme', 'dark')")  # as Settings does
        await page.reload()
        await page.locator("#chat-input").wait_for()
        assert "dark" in (await page.locator("html").get_attribute("class") or "")
        await send_to_pipe(page, owui, "Hello in the dark.")
        card = page.locator(CARD)
        await card.wait_for()
        colours = "c => [getComputedStyle(c).backgroundColor, getComputedStyle(c).color]"
        background, text = await card.evaluate(colours)
        assert luminance(background) < 0.2 and luminance(text) > 0.7, (background, text)
        field = page.locator(f"{OVERLAY} input[name=alias]").first
        assert luminance(await field.evaluate("f => getComputedStyle(f).color")) > 0.7

        # The page turns light while the dialog is open: the dialog follows.
        await page.evaluate("() => document.documentElement.classList.remove('dark')")
        background, text = await card.evaluate(colours)
        assert luminance(background) > 0.8 and luminance(text) < 0.3, (background, text)
        await page.locator("#mmc-cancel").click()
        await page.locator(OVERLAY).wait_for(state="detached")
        await page.evaluate("() => localStorage.setItem('theme', 'light')")
        assert dialogs == []


async def test_the_model_picker_finds_a_model_by_name_from_the_keyboard(owui: Owui, backend):
    backend.set_script("model-e", ModelScript(reply="Zephyr here, briefly.", delay=0.01))
    await owui.set_model_params("model-e", name="Zephyr Sage")
    await install_pipe(owui)

    async with browser_page() as (_, page, dialogs):
        overlay = await open_dialog(page, owui, "Who are you?")
        await overlay.locator("input[name=rounds]").fill("1")
        await overlay.locator("input[name=count]").fill("1")
        picker = overlay.locator("fieldset[data-participant] input[name=model]")
        await picker.focus()
        await page.keyboard.type("sage")  # part of the name, not of the id
        options = overlay.locator("[role=option]")
        assert await options.count() == 1
        assert await options.first.get_attribute("data-value") == "model-e"
        assert (await options.first.inner_text()).startswith("Zephyr Sage")
        assert await options.first.get_attribute("aria-selected") == "true"
        active = await picker.get_attribute("aria-activedescendant")
        assert active == await options.first.get_attribute("id")
        await page.keyboard.press("Enter")  # picks the model; the dialog stays
        assert await picker.input_value() == "Zephyr Sage"
        assert await picker.get_attribute("data-model-id") == "model-e"
        assert await picker.get_attribute("aria-expanded") == "false"
        assert await overlay.count() == 1
        await page.keyboard.press("Enter")  # now Enter starts the conversation
        await overlay.wait_for(state="detached")
        await wait_finished(page)

        assert [r.model for r in backend.requests if r.stream] == ["model-e"]
        assert await speaker_headings(page) == ["Zephyr Sage"]
        text = await page.locator(CONTENT).last.inner_text()
        assert text.rstrip().endswith("Zephyr here, briefly.")
        assert dialogs == []


# -- the end of a run -------------------------------------------------------------------------

END_STATUS = re.compile(r"^\d+ participants?, \d+ turns?, \d+ s")


async def end_status(page: Page) -> str:
    """The status line under the model name of the last reply."""
    status = page.locator(f'{ASSISTANT} button[aria-label="Toggle status history"]').last
    return (await status.inner_text()).strip()


async def test_stop_mid_conversation_marks_the_turn_as_stopped(owui: Owui, backend) -> None:
    def long_reply(record) -> str:
        return default_reply(record.model, record.n, 400)

    for model in ("model-a", "model-b"):
        backend.set_script(model, ModelScript(reply=long_reply, delay=0.05))
    await install_pipe(owui)

    async with browser_page() as (_, page, dialogs):
        await sign_in(page, owui)
        await send_to_pipe(page, owui, "Talk at length.")
        await fill_overlay(page, 3, [("model-a", "Ada", "Be long."), ("model-b", "Grace", "")])
        content = page.locator(CONTENT).last
        await content.locator("h3").nth(1).wait_for()  # Grace has begun
        await page.locator(STOP_BUTTON).click()
        text = await wait_finished(page)
        assert await speaker_headings(page) == ["Ada", "Grace"]
        assert "(stopped)" in text.rsplit("Grace", 1)[-1], text[-300:]
        assert await page.locator(STOP_BUTTON).count() == 0
        status = await end_status(page)
        assert END_STATUS.match(status) and "stopped" in status, status

        await page.reload()
        text = await wait_finished(page)
        assert "(stopped)" in text.rsplit("Grace", 1)[-1], text[-300:]
        assert dialogs == []
