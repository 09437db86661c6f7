"""The context fitter: time to fit one request's history, main before issue 29 against now.

    python -m bench.fit                 # 1,000-10,000 turns, 100,000-1,000,000 characters
    python -m bench.fit --turns 1000 4000 --chars 100000

Each case is a conversation of N turns (equal sizes, C characters in all) fitted into an
8,192-token model's room (24,000 characters), so most turns are left out: the case that was
quadratic. "old" is main's `plan_fit` and `fit_turns` before issue 29 (copied below, verbatim
but for names); "new" is the plugin's. Both run in this process, one after the other, and
keep the same turns (but for the room the new one no longer sets aside for a second note
that cannot occur). Times are the best of a few runs (CPU time of this process).
"""

from __future__ import annotations

import argparse
import time

import multi_model_conversation as mmc

ROOM = 24_000  # 8,192 tokens at 3 characters a token, less the reply's share: about this


def old_plan_fit(sizes: list[int], keep: list[bool], room: int) -> list[int] | None:
    if sum(min(s, mmc.MIN_KEPT_CHARS) for s, k in zip(sizes, keep, strict=True) if k) > room:
        return None
    alive = [i for i, size in enumerate(sizes) if size]
    while sum(sizes[i] for i in alive) > room:
        level = mmc.water_level([sizes[i] for i in alive], room)
        droppable = [i for i in alive if not keep[i]]
        if level >= max(mmc.MIN_CUT_CHARS, room // 8) or not droppable:
            return [min(sizes[i], level) if i in alive else 0 for i in range(len(sizes))]
        alive.remove(droppable[0])
    return [sizes[i] if i in alive else 0 for i in range(len(sizes))]


def old_fit_turns(turns: list[mmc.Turn], room: int) -> list[int] | None:
    """The old fit_turns up to its plan (what follows the plan is the same in both)."""
    users = [i for i, t in enumerate(turns) if t.speaker is None]
    protected = {users[0], users[-1]} if users else set()
    sizes = [len(mmc._text_of(t.content)) + mmc.TURN_OVERHEAD_CHARS for t in turns]
    if sum(sizes) > room:
        room -= 2 * (len(mmc.omitted_line(999)) + mmc.MESSAGE_OVERHEAD_CHARS)
    return old_plan_fit(sizes, [i in protected for i in range(len(turns))], room)


def conversation(turns: int, chars: int) -> list[mmc.Turn]:
    size = max(1, chars // turns)
    out = [mmc.Turn(None, "T" * size)]
    for i in range(1, turns - 1):
        out.append(mmc.Turn("Ana" if i % 2 else "Ben", chr(97 + i % 26) * size))
    return [*out, mmc.Turn(None, "L" * size)]


def best(fn, repeat: int, budget: float = 20.0) -> float:
    """Best CPU seconds of up to `repeat` runs (fewer when one run is slow)."""
    times: list[float] = []
    spent = 0.0
    while len(times) < repeat and (not times or spent + times[0] < budget):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
        spent += times[-1]
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, nargs="*", default=[1000, 2000, 4000, 10000])
    parser.add_argument("--chars", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    head = ("turns", "chars", "kept old/new", "old ms", "new ms", "old/new")
    print("{:>7} {:>10} {:>12} {:>9} {:>8} {:>8}".format(*head))
    for chars in args.chars:
        for n in args.turns:
            turns = conversation(n, chars)
            fitted = mmc.fit_turns(turns, ROOM)
            old = old_fit_turns(turns, ROOM)
            assert fitted is not None and old is not None
            kept = sum(1 for t in fitted.turns if not t.note)
            was = sum(1 for k in old if k)  # differs by the room for one note at most
            t_old = best(lambda turns=turns: old_fit_turns(turns, ROOM), args.repeat)
            t_new = best(lambda turns=turns: mmc.fit_turns(turns, ROOM), args.repeat)
            print(
                f"{n:>7,} {chars:>10,} {f'{was}/{kept}':>12} {t_old * 1e3:>9.1f} "
                f"{t_new * 1e3:>8.2f} {t_old / max(t_new, 1e-9):>7.0f}x"
            )


if __name__ == "__main__":
    main()
