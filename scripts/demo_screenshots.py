"""Photographs a running demo (scripts/demo) for the README: docs/*.png at 1280x800.

Signs in with the demo's login, takes the tour in tests/integration/demo_tour.py (a moderated
conversation with a PASS and a vote, then a council), and writes the setup dialog (also at
390x844), the user's words answered by name, the PASS and the vote, the ranking and the chair.
Each picture is cut to its window and reduced to 256 colours to stay small.

    scripts/demo &   # then, once it printed its login:
    .venv/bin/python scripts/demo_screenshots.py [--url http://127.0.0.1:8080] [--out docs]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from PIL import Image
from playwright.async_api import Page, async_playwright

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.integration import demo_tour  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
SIZE = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
SHOTS = (
    "setup-dialog.png",
    "conversation.png",
    "vote.png",
    "council.png",
    "setup-dialog-phone.png",
)


def shrink(path: Path) -> None:
    """256 colours: a screenshot of text and flat colour loses nothing a reader sees."""
    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


async def sign_in(page: Page, url: str, email: str, password: str) -> None:
    await page.goto(f"{url}/auth")
    await page.fill("#email", email)
    await page.fill("#password", password)
    await page.get_by_role("button", name="Sign in").click()
    await page.locator("#chat-input").wait_for()


async def tour(page: Page, url: str, out: Path) -> None:
    async def shoot(name: str) -> None:
        await page.wait_for_timeout(400)
        await page.screenshot(path=str(out / name))
        shrink(out / name)

    await demo_tour.moderated(page, url, shoot)
    await demo_tour.scroll_to(page, demo_tour.WORDS, offset=100)
    await shoot("conversation.png")
    await demo_tour.scroll_to(page, "passed", offset=150)
    await shoot("vote.png")
    await demo_tour.council(page, url)
    await demo_tour.scroll_to(page, "Peer review, combined", offset=260)
    await shoot("council.png")
    await page.set_viewport_size(PHONE)
    await demo_tour.new_chat(page, url, "Tea or coffee?")
    await page.locator(f"{demo_tour.OVERLAY} select[name=preset]").select_option("debate")
    await shoot("setup-dialog-phone.png")
    await page.locator(f"{demo_tour.OVERLAY} #mmc-skip").click()


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--email", default="admin@example.com")
    parser.add_argument("--password", default="demo-password")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"], headless=True
        )
        try:
            page = await browser.new_page(viewport=SIZE)
            page.set_default_timeout(demo_tour.WAIT_MS)
            await page.add_locator_handler(
                page.get_by_role("button", name="Okay, Let's Go!"), lambda b: b.click()
            )
            await sign_in(page, args.url.rstrip("/"), args.email, args.password)
            await tour(page, args.url.rstrip("/"), args.out)
        finally:
            await browser.close()
    print(f"wrote {', '.join(SHOTS)} in {args.out}")


if __name__ == "__main__":
    asyncio.run(main())
