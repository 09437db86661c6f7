"""Issue 26 in the browser: a turn cut by a guard shows its cut text folded, in a collapsed
block under the turn whose title is the cut's mark; opened, it shows the text; a reload shows
the same. Open WebUI 0.12.4 renders `<details type="cut">` as it renders any `<details>` whose
type it does not know: a `Collapsible` titled by the summary, its inside as markdown
(MarkdownTokens.svelte, utils/marked/extension.ts)."""

from __future__ import annotations

import pytest

from tests.backend import ModelScript
from tests.integration.owui import Owui
from tests.integration.test_browser import (
    CHROMIUM,
    CONTENT,
    browser_page,
    fill_overlay,
    install_pipe,
    send_to_pipe,
    sign_in,
    speaker_headings,
    wait_finished,
)

pytestmark = pytest.mark.browser

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)", allow_module_level=True)

PARAGRAPH = (
    "We should ship the smaller model first because it answers fast enough on the laptops we "
    "have, costs nothing per request, and lets us learn what users actually ask before we "
    "spend money on a bigger one that we may not need at all in the end."
)
TITLE = "✂️ Ada began repeating itself — not heard by the others"


async def test_a_looping_turn_shows_its_repeats_folded_under_the_turn(owui: Owui, backend):
    backend.set_script("model-a", ModelScript(reply=" ".join([PARAGRAPH] * 4), delay=0.01))
    backend.set_script("model-b", ModelScript(reply="I would rent a bigger one.", delay=0.01))
    await install_pipe(owui)

    async with browser_page() as (_, page, dialogs):
        await sign_in(page, owui)
        await send_to_pipe(page, owui, "Which model first?")
        await fill_overlay(page, 1, [("model-a", "Ada", ""), ("model-b", "Grace", "")])
        for reload in (False, True):
            if reload:
                await page.reload()
            text = await wait_finished(page)
            content = page.locator(CONTENT).last
            assert await speaker_headings(page) == ["Ada", "Grace"], reload
            assert text.count("smaller model") == 1, reload  # closed: the repeats are hidden
            title = content.locator("button[aria-expanded]", has_text=TITLE)
            assert await title.get_attribute("aria-expanded") == "false", reload
            await title.click()
            await content.get_by_text("We should ship the smaller model").nth(1).wait_for()
            opened = await content.inner_text()  # the repeat, under Ada's turn, before Grace's
            assert opened.count("smaller model") >= 2, reload
            assert opened.index(TITLE) < opened.index("I would rent a bigger one."), reload
            assert "<details" not in opened and "&lt;" not in opened, reload
        assert dialogs == []
