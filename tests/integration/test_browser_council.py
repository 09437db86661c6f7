"""Issue 21 in a real browser: a council preset with peer review shows the answers, the ranking
table and the chair's synthesis (also after a reload); the moderator prompt appears between
rounds, and what the user types there shows in the transcript and is heard by the next speaker.

The setup comes from the user valves (the dialog off), as a user who set them once would run it.
"""

from __future__ import annotations

import pytest

from tests.backend import ModelScript, default_reply
from tests.integration.owui import Owui
from tests.integration.test_browser import (
    CHROMIUM,
    CONTENT,
    FUNCTION_ID,
    browser_page,
    install_pipe,
    send_to_pipe,
    sign_in,
    speaker_headings,
    wait_finished,
)

pytestmark = pytest.mark.browser

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)", allow_module_level=True)

ANSWERS = {
    "model-a": "Python: readable, and it runs everywhere.",
    "model-b": "Scratch for children, then Python.",
    "model-c": "C, to learn how a computer really works.",
}
RANKINGS = {"model-a": "RANKING: A, B", "model-b": "RANKING: A, B", "model-c": "RANKING: B, A"}
SYNTHESIS = "The council recommends Python first, with C later for the fundamentals."


def council_reply(record) -> str:
    """Told apart by what is asked: the answer, a ranking, or the chair's synthesis."""
    asked = " ".join(str(m.get("content")) for m in record.messages)
    if "Synthesize the best answer" in asked:
        return SYNTHESIS
    if "Rank them from best to worst" in asked:
        return f"My reasons are short.\n{RANKINGS[record.model]}"
    if record.stream:
        return ANSWERS[record.model]
    return default_reply(record.model, record.n, 12)  # a title or tags task


async def user_setup(owui: Owui, **valves) -> None:
    await owui.set_function_valves(FUNCTION_ID, {"CONFIG_OVERLAY": False})
    await owui.set_user_valves(FUNCTION_ID, valves, merge=False)


async def test_a_council_with_peer_review_in_the_browser(owui: Owui, backend) -> None:
    for model in ANSWERS:
        backend.set_script(model, ModelScript(reply=council_reply, delay=0.01))
    await install_pipe(owui)
    await user_setup(
        owui,
        Preset="council",
        NUM_PARTICIPANTS=3,
        ROUNDS_PER_CONVERSATION=1,
        Participant1Model="model-a",
        Participant2Model="model-b",
        Participant3Model="model-c",
    )
    try:
        async with browser_page() as (_, page, dialogs):
            await sign_in(page, owui)
            await send_to_pipe(page, owui, "What is the best first programming language?")
            await wait_finished(page)

            for attempt in ("live", "after a reload"):
                names = ["Analyst", "Expert", "Contrarian"]
                assert await speaker_headings(page) == [*names, *names, "Chair"], attempt
                content = page.locator(CONTENT).last
                text = await content.inner_text()
                assert all(answer in text for answer in ANSWERS.values()), attempt
                table = content.locator("table")
                assert await table.count() == 1, attempt
                header = await table.locator("th").all_inner_texts()
                assert [h.strip().lower() for h in header] == [
                    "#",
                    "answer by",
                    "points",
                    "placed by",
                ]
                rows = await table.locator("tbody tr").all_inner_texts()
                assert len(rows) == 3 and rows[0].split()[1] == "Expert", rows  # 2 firsts
                assert text.rstrip().endswith(SYNTHESIS), attempt
                await page.reload()
                await wait_finished(page)
            assert dialogs == []
    finally:
        await owui.set_user_valves(FUNCTION_ID, {}, merge=False)


async def test_the_moderator_prompt_between_rounds_in_the_browser(owui: Owui, backend) -> None:
    for model in ("model-a", "model-b"):
        backend.set_script(model, ModelScript(tokens=10, delay=0.01))
    await install_pipe(owui)
    await user_setup(
        owui,
        NUM_PARTICIPANTS=2,
        ROUNDS_PER_CONVERSATION=2,
        Participant1Model="model-a",
        Participant1Alias="Ada",
        Participant2Model="model-b",
        Participant2Alias="Bob",
        AskBetweenRounds=True,
    )
    words = "Please compare the prices too."
    try:
        async with browser_page() as (_, page, _dialogs):
            await sign_in(page, owui)
            await send_to_pipe(page, owui, "Tea or coffee?")

            prompt = page.get_by_text("Anything to add before round 2?")
            await prompt.wait_for()
            box = page.locator("textarea:visible").last
            await box.fill(words)
            await page.get_by_role("button", name="Confirm").click()
            await wait_finished(page)

            assert await speaker_headings(page) == ["Ada", "Bob", "Admin", "Ada", "Bob"]
            assert words in await page.locator(CONTENT).last.inner_text()
            assert not await prompt.is_visible()  # the prompt closed with the answer
            ada_round_2 = [r for r in backend.requests if r.model == "model-a"][-1]
            assert words in str(ada_round_2.messages)
            await page.reload()
            await wait_finished(page)
            assert await speaker_headings(page) == ["Ada", "Bob", "Admin", "Ada", "Bob"]
    finally:
        await owui.set_user_valves(FUNCTION_ID, {}, merge=False)
