"""Issue 27 in a real browser: the page follows a conversation as it follows a native answer.

Every 250 ms while a reply streams, the page records how far the last line of the reply is below
the bottom of the chat's scroll area (0 when it is in view), and where the scroll area stands.
While the user stays at the bottom, a long conversation's last line stays within two lines of
where a native answer of the same length keeps it; once the user scrolls up, nothing moves the
page until the conversation ends. The tab's long tasks (PerformanceObserver 'longtask') are
recorded too, for `bench/follow.py`, which prints them beside native's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from playwright.async_api import Page

from tests.backend import ModelScript
from tests.integration.owui import Owui
from tests.integration.test_browser import (
    CHROMIUM,
    CONTENT,
    COPY_BUTTON,
    FUNCTION_ID,
    PIPE_MODEL,
    browser_page,
    install_pipe,
    sign_in,
)

pytestmark = pytest.mark.browser

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)", allow_module_level=True)

# 2 participants x 3 rounds x 200 words, a word each 15 ms (a fast model): about 18 s of text,
# several screens long at 1280x800. The native answer streams as many words in one reply.
PARTICIPANTS, ROUNDS, WORDS, DELAY = 2, 3, 200, 0.015

# Runs in the page from its first script: long tasks, and a sampler started by __followStart().
SAMPLER = """
window.__longtasks = [];
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) window.__longtasks.push([e.startTime, e.duration]);
}).observe({ type: 'longtask', buffered: true });
window.__followStart = () => {
  window.__follow = [];
  window.__followFrom = performance.now();
  clearInterval(window.__followTimer);
  window.__followTimer = setInterval(() => {
    const box = document.getElementById('messages-container');
    const replies = document.querySelectorAll('CONTENT');
    if (!box || !replies.length) return;
    const below = replies[replies.length - 1].getBoundingClientRect().bottom
      - box.getBoundingClientRect().bottom;
    const shown = replies[replies.length - 1].textContent.length;
    window.__follow.push([performance.now(), Math.max(0, below), box.scrollTop, shown]);
  }, 250);
};
window.__followStop = () => clearInterval(window.__followTimer);
""".replace("CONTENT", CONTENT)


@dataclass
class Watch:
    """What the page recorded while one reply streamed."""

    below: list[float] = field(default_factory=list)  # px of the reply below the scroll area
    tops: list[float] = field(default_factory=list)  # the scroll area's scrollTop
    times: list[float] = field(default_factory=list)  # ms since the sampler started
    lengths: list[int] = field(default_factory=list)  # the reply's text length
    line_px: float = 24.0  # the reply's line height
    longest_task_ms: float = 0.0  # the tab's longest task while it streamed and just after
    end_task_ms: float = 0.0  # ... of those that began in the last 2 s before it was done
    streaming_task_ms: float = 0.0  # ... of those that began earlier

    def worst(self, share: float = 1.0) -> float:
        """The `share` quantile of the distance (1.0: the largest)."""
        ordered = sorted(self.below)
        return ordered[min(len(ordered) - 1, int(share * (len(ordered) - 1) + 0.5))]


async def open_page_for(page: Page, owui: Owui, model: str) -> None:
    """A new chat with `model` picked; the sampler armed."""
    await page.goto(owui.url)
    await page.locator("#chat-input").wait_for()
    await page.click("#model-selector-model-button")
    await page.click(f'#model-selector-list [role=option][data-value="{model}"]')
    name = (await owui.models())[model]["name"]
    await page.locator("#model-selector-model-button").filter(has_text=name).wait_for()


async def send(page: Page, text: str) -> None:
    await page.click("#chat-input")
    await page.keyboard.type(text)
    await page.evaluate("window.__followStart()")
    await page.click("#send-message-button")


async def until_done(page: Page, watch: Watch, timeout_ms: int = 120_000) -> Watch:
    """Wait for the reply's Copy button and a second more; fill `watch` from the page."""
    await page.locator(COPY_BUTTON).last.wait_for(timeout=timeout_ms)
    done = await page.evaluate("performance.now()")
    await page.wait_for_timeout(1_000)
    await page.evaluate("window.__followStop()")
    samples = await page.evaluate("window.__follow")
    start = await page.evaluate("window.__followFrom")
    watch.times = [t - start for t, *_ in samples]
    watch.below = [b for _, b, _, _ in samples]
    watch.tops = [s for _, _, s, _ in samples]
    watch.lengths = [n for *_, n in samples]
    tasks = await page.evaluate("window.__longtasks")
    watch.longest_task_ms = max((d for t, d in tasks if t >= start), default=0.0)
    end = [d for t, d in tasks if t >= done - 2_000]
    watch.end_task_ms = max(end, default=0.0)
    watch.streaming_task_ms = max((d for t, d in tasks if start <= t < done - 2_000), default=0.0)
    watch.line_px = await page.locator(CONTENT).last.evaluate(
        "el => parseFloat(getComputedStyle(el.querySelector('p') || el).lineHeight) || 24"
    )
    return watch


async def script_models(owui: Owui, backend, reasoning: int = 0, usage: bool = False) -> None:
    """Two participants and a native model saying as many words; `reasoning` tokens before
    each reply (the native model's once), the usage table at the end with `usage`."""
    for model in ("model-a", "model-b"):
        backend.set_script(
            model, ModelScript(tokens=WORDS, delay=DELAY, reasoning_tokens=reasoning)
        )
    native = ModelScript(
        tokens=WORDS * PARTICIPANTS * ROUNDS, delay=DELAY, reasoning_tokens=reasoning
    )
    backend.set_script("model-c", native)
    await install_pipe(owui, usage=usage)
    await owui.set_function_valves(FUNCTION_ID, {"CONFIG_OVERLAY": False})
    await owui.set_user_valves(
        FUNCTION_ID,
        {
            "NUM_PARTICIPANTS": PARTICIPANTS,
            "ROUNDS_PER_CONVERSATION": ROUNDS,
            "Participant1Model": "model-a",
            "Participant1Alias": "Ada",
            "Participant2Model": "model-b",
            "Participant2Alias": "Bob",
        },
        merge=False,
    )


async def watch_native_and_pipe(page: Page, owui: Owui) -> tuple[Watch, Watch]:
    """The same text streamed by a plain model, then by the conversation, at the bottom."""
    await open_page_for(page, owui, "model-c")
    await send(page, "Tell me a long story.")
    native = await until_done(page, Watch())
    await open_page_for(page, owui, PIPE_MODEL)
    await send(page, "Tell me a long story.")
    pipe = await until_done(page, Watch())
    return native, pipe


async def test_at_the_bottom_the_newest_line_stays_in_view_as_for_a_native_answer(
    owui: Owui, backend
) -> None:
    await script_models(owui, backend)
    try:
        async with browser_page(1280, 800) as (_, page, _dialogs):
            await page.add_init_script(SAMPLER)
            await sign_in(page, owui)
            native, pipe = await watch_native_and_pipe(page, owui)
    finally:
        await owui.set_user_valves(FUNCTION_ID, {}, merge=False)

    report = (
        f"native: worst {native.worst():.0f} px, 90% {native.worst(0.9):.0f} px; "
        f"conversation: worst {pipe.worst():.0f} px, 90% {pipe.worst(0.9):.0f} px "
        f"(line {pipe.line_px:.0f} px, {len(pipe.below)} samples); longest task native "
        f"{native.longest_task_ms:.0f} ms (at the end {native.end_task_ms:.0f}), "
        f"conversation {pipe.longest_task_ms:.0f} ms (at the end {pipe.end_task_ms:.0f})"
    )
    print(report)
    assert len(pipe.below) >= 20 and len(native.below) >= 20, report
    # The reply outgrew the window (else following proves nothing) ...
    assert max(pipe.tops) > 800 and max(native.tops) > 800, report
    # ... and its last line stayed within two lines of where native streaming keeps it.
    two_lines = 2 * pipe.line_px
    assert pipe.worst(0.9) <= native.worst(0.9) + two_lines, report
    assert pipe.worst() <= native.worst() + two_lines, report
    assert pipe.below[-1] <= two_lines, report  # the end is in view


async def scroll_up_while_it_streams(page: Page, owui: Owui, model: str) -> tuple[list, list]:
    """Scroll up once the reply is over a screen tall; the scroll area's positions after the
    scroll, (ms, scrollTop): while the reply grew, and from when it stopped growing (the end:
    for the conversation, the tab's copy emptied for the host's final text, then refilled)."""
    await open_page_for(page, owui, model)
    await send(page, "Tell me a long story.")
    await page.wait_for_function(
        "() => document.getElementById('messages-container').scrollTop > 600", timeout=90_000
    )
    await page.mouse.move(640, 400)
    await page.mouse.wheel(0, -400)
    await page.wait_for_timeout(500)
    since = await page.evaluate("performance.now() - window.__followFrom")
    watch = await until_done(page, Watch())
    # The pipe's hold on the page's height (a spacer) is gone once the final text is back.
    await page.wait_for_function(
        "document.getElementById('messages-container').children.length === 1", timeout=5000
    )
    samples = list(zip(watch.times, watch.tops, watch.lengths, strict=True))
    longest = max(n for *_, n in samples)
    grown = next(i for i, (*_, n) in enumerate(samples) if n == longest)
    shrunk = [i for i, (*_, n) in enumerate(samples) if i and n < samples[i - 1][2]]
    end = min([grown, *shrunk])
    during = [(t, s) for t, s, _ in samples[:end] if t > since]
    after = [(t, s) for t, s, _ in samples[end:]]
    return during, after


async def test_scrolled_up_the_page_stays_where_the_user_left_it(owui: Owui, backend) -> None:
    await script_models(owui, backend)
    try:
        async with browser_page(1280, 800) as (_, page, _dialogs):
            await page.add_init_script(SAMPLER)
            await sign_in(page, owui)
            during, after = await scroll_up_while_it_streams(page, owui, PIPE_MODEL)
            native_during, native_after = await scroll_up_while_it_streams(page, owui, "model-c")
    finally:
        await owui.set_user_valves(FUNCTION_ID, {}, merge=False)

    tops = sorted({round(s) for _, s in during})
    report = (
        f"conversation while streaming: {tops}, at its end {[round(s) for _, s in after]}; "
        f"native: {sorted({round(s) for _, s in native_during})}, "
        f"at its end {[round(s) for _, s in native_after]}"
    )
    print(report)
    assert len(during) >= 8, report  # the conversation went on for a while after the scroll
    assert max(tops) - min(tops) <= 2, report  # nothing moved the page while it streamed
    native_moved = native_after[-1][1] - native_during[-1][1]
    assert abs(native_moved) <= 2, report  # a native answer leaves it there at its end too
    # At its end the pipe empties the tab's copy for an instant (so the host's final text is
    # not shown twice); the page holds its height meanwhile, so the reader stays put.
    assert abs(after[-1][1] - during[-1][1]) <= 2, report
    assert max(abs(s - during[-1][1]) for _, s in after) <= 2, report  # not even for a moment
