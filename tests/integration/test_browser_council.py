"""Issue 21 in a real browser: a council preset with peer review shows the answers, the ranking
table and the chair's synthesis (also after a reload), each review labelled as one (issue 27);
the moderator prompt appears between rounds, the status says it waits for the user, and what
the user types there shows in the transcript and is heard by the next speaker.

The setup comes from the user valves (the dialog off), as a user who set them once would run it.
"""

from __future__ import annotations

import pytest

from tests.backend import ModelScript, default_reply
from tests.integration.owui import Owui
from tests.integration.test_browser import (
    ASSISTANT,
    CHROMIUM,
    CONTENT,
    FUNCTION_ID,
    OVERLAY,
    browser_page,
    install_pipe,
    pick_model,
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
                # The reviews say what they are (issue 27); the answers and the chair as they are.
                reviews = [f"{n} · 🏅 review" for n in names]
                assert await speaker_headings(page) == [*names, *reviews, "Chair"], attempt
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
            # While the prompt waits, the status says so, not the last speaker (issue 27).
            status = page.locator(f'{ASSISTANT} button[aria-label="Toggle status history"]')
            await status.filter(has_text="Waiting for you · Before round 2 of 2").wait_for()
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


async def test_the_dialog_sets_up_a_council_a_moderator_and_own_sampling(
    owui: Owui, backend
) -> None:
    for model in ANSWERS:
        backend.set_script(model, ModelScript(reply=council_reply, delay=0.01))
    await install_pipe(owui)
    await owui.set_user_valves(FUNCTION_ID, {}, merge=False)
    async with browser_page() as (_, page, dialogs):
        await sign_in(page, owui)
        await send_to_pipe(page, owui, "Best first language?")
        overlay = page.locator(OVERLAY)
        await overlay.wait_for()
        await overlay.locator("input[name=rounds]").fill("1")
        await overlay.locator("input[name=count]").fill("3")
        review = overlay.locator("input[name=peer_review]")
        assert not await review.is_visible()  # shown for a council only
        await overlay.locator("select[name=selection]").select_option("council")
        await review.check()
        boxes = overlay.locator("fieldset[data-participant]")
        for i, model in enumerate(ANSWERS):
            await pick_model(boxes.nth(i), "model", model)
        # A temperature out of range is named by its field, and nothing is lost.
        await boxes.nth(0).locator("input[name=temperature]").fill("3")
        await overlay.locator("#mmc-start").click()
        assert await overlay.is_visible()
        assert "from 0 to 2" in await overlay.inner_text()
        await boxes.nth(0).locator("input[name=temperature]").fill("0.3")
        await boxes.nth(2).locator("input[name=top_p]").fill("0.5")
        await overlay.locator("#mmc-start").click()
        await overlay.wait_for(state="detached")
        await wait_finished(page)

        assert len(await speaker_headings(page)) == 6  # three answers, three reviews
        assert await page.locator(CONTENT).last.locator("table").count() == 1
        firsts = [r for r in backend.requests if r.stream][:3]
        by_model = {r.model: r for r in firsts}
        assert by_model["model-a"].body["temperature"] == 0.3
        assert by_model["model-c"].body["top_p"] == 0.5
        saved = (await owui.get_chat(page.url.rsplit("/", 1)[-1]))["meta"]["multi_model_config"]
        assert saved["selection"] == "council" and saved["peer_review"] is True
        assert saved["participants"][0]["temperature"] == 0.3
        assert dialogs == []
