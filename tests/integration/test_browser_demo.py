"""Issue 27: the demo shows what the product is for. The demo's models (scripts/demo_models.py)
answer behind every participant while headless Chromium takes the newcomer's tour
(tests/integration/demo_tour.py) through the setup dialog:

- three rounds of Ada, Grace and Linus (the demo's personas) with PASS allowed, the user's words
  before round 2 naming Linus, and a vote: Linus answers the words by name, the others hear
  them, the last turn is a PASS, and the vote is tallied;
- the council preset: three answers, three rankings that the pipe can read (a ranking table,
  not "no reviewer gave a ranking"), and the chair's synthesis built on the table's winner.
"""

from __future__ import annotations

import importlib.util
import re
import sys

import pytest

from tests.integration import demo_tour
from tests.integration.owui import Owui
from tests.integration.test_browser import (
    CHROMIUM,
    CONTENT,
    FUNCTION_ID,
    ROOT,
    browser_page,
    install_pipe,
    sign_in,
)

pytestmark = pytest.mark.browser

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)", allow_module_level=True)

spec = importlib.util.spec_from_file_location("demo_models", ROOT / "scripts" / "demo_models.py")
demo_models = importlib.util.module_from_spec(spec)
sys.modules["demo_models"] = demo_models
spec.loader.exec_module(demo_models)
spec = importlib.util.spec_from_file_location("demo_setup", ROOT / "scripts" / "demo_setup.py")
demo_setup = importlib.util.module_from_spec(spec)
spec.loader.exec_module(demo_setup)

MODELS = ("model-a", "model-b", "model-c")


async def demo_valves(owui: Owui) -> None:
    """The user valves scripts/demo gives its admin: its personas, on this session's models."""
    valves = {"NUM_PARTICIPANTS": 3, "ROUNDS_PER_CONVERSATION": demo_setup.DEMO_ROUNDS}
    for i, (model, (alias, persona)) in enumerate(zip(MODELS, demo_setup.PERSONAS, strict=True), 1):
        valves |= {
            f"Participant{i}Model": model,
            f"Participant{i}Alias": alias,
            f"Participant{i}SystemMessage": persona,
        }
    await owui.set_user_valves(FUNCTION_ID, valves, merge=False)


async def turns_of(page) -> list[tuple[str, str]]:
    """(heading, text under it) for each turn of the last reply, as rendered: a line that is a
    whole heading (`🔴 Ada`) starts a turn."""
    content = page.locator(CONTENT).last
    marks = [h.strip() for h in await content.locator("h3").all_inner_texts()]
    out: list[tuple[str, str]] = []
    for line in (await content.inner_text()).splitlines():
        if line.strip() in marks:
            out.append((line.strip().split(" ", 1)[-1], ""))
        elif out:
            out[-1] = (out[-1][0], f"{out[-1][1]}\n{line}".strip())
    return out


async def test_the_demo_shows_words_answered_by_name_a_pass_a_vote_and_a_council(
    owui: Owui, backend
) -> None:
    for model in MODELS:
        backend.set_script(model, demo_models.demo_script(delay=0.005))
    await install_pipe(owui)
    await demo_valves(owui)
    try:
        async with browser_page(height=800) as (_, page, dialogs):
            await sign_in(page, owui)
            text = await demo_tour.moderated(page, owui.url)
            said = await turns_of(page)
            heads = [h for h, _ in said]
            assert heads[:4] == ["Ada", "Grace", "Linus", "Admin"], heads
            assert heads[-3:] == ["Ada · 🗳️ vote", "Grace · 🗳️ vote", "Linus · 🗳️ vote"]
            # Round 1: each builds on or disputes the one before, by name.
            assert "rewrite our billing service in Rust" in said[0][1]
            assert "Ada" in said[1][1] and "Grace" in said[2][1]
            # The user's words: Linus answers them; the others say whose question it was.
            after = said[4:7]
            assert [h for h, _ in after] == ["Ada", "Grace", "Linus"]
            assert "The one risk I'd name" in after[2][1]
            assert all("Linus" in t and "risk I'd name" not in t for _, t in after[:2])
            # The last turn is a PASS, and the votes are tallied.
            assert re.search(r"⏭️ Linus passed\.\s+\S+ Ada · 🗳️ vote", text), text[-800:]
            assert "Vote: Yes, with a pilot first 2 (Ada, Grace) · Not yet 1 (Linus)" in text
            assert "began repeating" not in text  # a cut line, or a fold's title

            text = await demo_tour.council(page, owui.url)
            heads = await demo_tour.headings(page)
            answers = ["Analyst", "Expert", "Contrarian"]
            reviews = [f"{name} · 🏅 review" for name in answers]  # labelled (issue 27)
            assert heads == [*answers, *reviews, "Chair"], heads
            table = page.locator(CONTENT).last.locator("table")
            assert await table.count() == 1
            rows = await table.locator("tbody tr").all_inner_texts()
            assert len(rows) == 3
            top = rows[0].split()[1]
            chair = text[text.rindex("Chair") :]
            assert f"The council ranked {top}'s answer first" in chair
            assert "no reviewer gave a ranking" not in text
            assert dialogs == []
    finally:
        await owui.set_user_valves(FUNCTION_ID, {}, merge=False)
