"""Issue 29.11: the fitter's cost grows with the history, not with its square.

The old `plan_fit` computed the water level again (a sort of every part kept) for each turn it
left out, and scanned a list for `i in alive`: 68 ms for 1,000 turns, 849 ms for 4,000.
`bench/fit.py` prints the times side by side; here the work is counted, not timed.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

import multi_model_conversation as mmc
from bench.fit import old_plan_fit  # main's plan_fit before issue 29, verbatim


@settings(max_examples=400)
@given(
    st.lists(st.integers(0, 20_000), min_size=1, max_size=60),
    st.integers(0, 120_000),
    st.data(),
)
def test_what_must_not_change_the_plan_is_the_old_one(sizes, room, data):
    keep = [data.draw(st.booleans()) for _ in sizes]
    assert mmc.plan_fit(sizes, keep, room) == old_plan_fit(sizes, keep, room)


@given(st.lists(st.integers(1, 3_000), min_size=1, max_size=400), st.integers(2_000, 60_000))
def test_what_must_not_change_many_short_turns(sizes, room):
    keep = [i in (0, len(sizes) - 1) for i in range(len(sizes))]
    assert mmc.plan_fit(sizes, keep, room) == old_plan_fit(sizes, keep, room)


def test_leaving_out_many_turns_computes_the_level_once(monkeypatch):
    calls = []
    real = mmc.water_level

    def counted(sizes, room):
        calls.append(len(sizes))
        return real(sizes, room)

    monkeypatch.setattr(mmc, "water_level", counted)
    sizes = [300] * 4_000
    keep = [i in (0, 3_999) for i in range(4_000)]

    plan = mmc.plan_fit(sizes, keep, 30_000)

    assert plan is not None and sum(plan) <= 30_000 and plan.count(0) > 3_800
    assert len(calls) <= 1, len(calls)  # the old one: once per turn left out (3,900 sorts)
