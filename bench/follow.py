"""Following a conversation in the page, beside a native answer of the same length (issue 27).

Boots Open WebUI 0.12.4 with the scripted backend, opens a headless Chromium tab at 1280x800,
and streams the same words twice: as one native answer (model-c) and as a conversation of two
participants over three rounds. Every 250 ms the page records how far the reply's last line is
below the chat's scroll area; PerformanceObserver('longtask') records the tab's long tasks,
split into those while it streamed and those of its last 2 s (the end). Prints both side by
side with their ratios.

Run: .venv/bin/python -m bench.follow [--runs 2] [--reasoning 30] [--usage]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics

from bench.run import booted
from tests.backend import ModelScript
from tests.integration.test_browser import browser_page, sign_in
from tests.integration.test_browser_follow import SAMPLER, script_models, watch_native_and_pipe


async def bench(runs: int, reasoning: int, usage: bool) -> list[tuple]:
    scripts = {m: ModelScript() for m in ("model-a", "model-b", "model-c")}
    out = []
    async with booted(scripts, "mmc-follow-") as owui:
        await script_models(owui, owui.backend, reasoning, usage)
        async with browser_page(1280, 800) as (_, page, _dialogs):
            await page.add_init_script(SAMPLER)
            await sign_in(page, owui)
            for _ in range(runs):
                out.append(await watch_native_and_pipe(page, owui))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--reasoning", type=int, default=0, help="reasoning tokens per reply")
    parser.add_argument("--usage", action="store_true", help="the usage table at the end")
    args = parser.parse_args()
    pairs = asyncio.run(bench(args.runs, args.reasoning, args.usage))
    rows = [
        ("last line below the window, worst (px)", lambda w: w.worst()),
        ("last line below the window, 90% (px)", lambda w: w.worst(0.9)),
        ("longest task while streaming (ms)", lambda w: w.streaming_task_ms),
        ("longest task at the end (ms)", lambda w: w.end_task_ms),
    ]
    print(f"{'':42}{'conversation':>14}{'native':>10}{'ratio':>8}")
    for name, get in rows:
        ours = statistics.median(get(pipe) for _, pipe in pairs)
        native = statistics.median(get(n) for n, _ in pairs)
        ratio = f"{ours / native:.2f}" if native else "-"
        print(f"{name:42}{ours:>14.0f}{native:>10.0f}{ratio:>8}")
    print(f"(median of {len(pairs)} runs each; line height {pairs[0][1].line_px:.0f} px)")


if __name__ == "__main__":
    main()
