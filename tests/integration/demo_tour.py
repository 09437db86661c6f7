"""A newcomer's tour of the demo (scripts/demo_models.py behind every participant), in a page.

Two conversations, set up in the pipe's own dialog the way a person would:
- a moderated one: three personas, three rounds, PASS allowed, the user's words before round 2
  (naming Linus), nothing before round 3, and a vote at the end;
- a council: the council preset, answers at once, peer review, the ranking table, the chair.

Used by tests/integration/test_browser_demo.py (which checks what appears) and by
scripts/demo_screenshots.py (which photographs it for the README).
"""

from __future__ import annotations

import time

from playwright.async_api import Page

TOPIC = "Should we rewrite our billing service in Rust?"
WORDS = "Linus, name the one risk that worries you most."
COUNCIL_TOPIC = "Should we move our CI from Jenkins to GitHub Actions?"
OVERLAY = "#mmc-config-overlay"
CONTENT = ".chat-assistant #response-content-container"
COPY_BUTTON = "button.copy-response-button"
PIPE_MODEL = "mmc.Conversation-pipe"
WAIT_MS = 60_000


async def new_chat(page: Page, url: str, text: str) -> None:
    """A new chat with the pipe picked, the message sent."""
    await page.goto(url)
    await page.locator("#chat-input").wait_for()
    await page.click("#model-selector-model-button")
    await page.click(f'#model-selector-list [role=option][data-value="{PIPE_MODEL}"]')
    await page.click("#chat-input")
    await page.keyboard.type(text)
    await page.click("#send-message-button")
    await page.locator(OVERLAY).wait_for()


async def setup_moderated(page: Page) -> None:
    """The dialog as the demo fills it (Ada, Grace, Linus), then three rounds, PASS, the
    moderator and a vote."""
    overlay = page.locator(OVERLAY)
    await overlay.locator("input[name=rounds]").fill("3")
    await overlay.locator("select[name=selection]").select_option("round_robin")
    await overlay.locator("input[name=pass_allowed]").check()
    await overlay.locator("input[name=moderator]").check()
    await overlay.locator("select[name=closing_kind]").select_option("vote")


async def start(page: Page) -> None:
    overlay = page.locator(OVERLAY)
    await overlay.locator("#mmc-start").click()
    await overlay.wait_for(state="detached")


async def answer_moderator(page: Page, before_round: int, words: str) -> None:
    """Types the words into the host's prompt between rounds (empty: Cancel, go on)."""
    prompt = page.get_by_text(f"Anything to add before round {before_round}?")
    await prompt.wait_for(timeout=WAIT_MS)
    if words:
        await page.locator("textarea:visible").last.fill(words)
        await page.get_by_role("button", name="Confirm").click()
    else:
        await page.get_by_role("button", name="Cancel").click()
    await prompt.wait_for(state="hidden")


async def wait_finished(page: Page, stable_ms: int = 800) -> str:
    """Waits for the reply's Copy button, then until its text stops changing."""
    await page.locator(COPY_BUTTON).last.wait_for(timeout=WAIT_MS)
    content = page.locator(CONTENT).last
    deadline = time.monotonic() + WAIT_MS / 1000
    text = await content.inner_text()
    while time.monotonic() < deadline:
        await page.wait_for_timeout(stable_ms)
        again = await content.inner_text()
        if again == text:
            return text
        text = again
    raise AssertionError(f"the reply kept changing:\n{text[-500:]}")


async def moderated(page: Page, url: str, shoot=None) -> str:
    """The moderated conversation end to end; `shoot(name)` photographs the dialog."""
    await new_chat(page, url, TOPIC)
    await setup_moderated(page)
    if shoot:
        await page.locator(f"{OVERLAY} .mmc-body").evaluate("el => { el.scrollTop = 0; }")
        await shoot("setup-dialog.png")
    await start(page)
    await answer_moderator(page, 2, WORDS)
    await answer_moderator(page, 3, "")
    return await wait_finished(page)


async def council(page: Page, url: str) -> str:
    """The council preset, chosen in the dialog, end to end."""
    await new_chat(page, url, COUNCIL_TOPIC)
    await page.locator(f"{OVERLAY} select[name=preset]").select_option("council")
    await start(page)
    return await wait_finished(page)


async def headings(page: Page) -> list[str]:
    """The last reply's speaker headings, as rendered (`Ada`, `Ada · 🗳️ vote`, …)."""
    found = await page.locator(CONTENT).last.locator("h3").all_inner_texts()
    return [h.strip().split(" ", 1)[-1] for h in found]


async def scroll_to(page: Page, text: str, offset: int = 80) -> None:
    """Scrolls the chat so the first element showing `text` sits near the window's top."""
    target = page.locator(CONTENT).last.get_by_text(text).first
    await target.evaluate(
        "(el, offset) => { const box = document.getElementById('messages-container');"
        " box.scrollTop += el.getBoundingClientRect().top - offset; }",
        offset,
    )
    await page.wait_for_timeout(300)
