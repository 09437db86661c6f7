"""The speaker guard and its stop sequences on the labelled corpus (tests/guard_corpus.json):
no legitimate reply cut, and every impersonation 09aa316's guard caught is caught still.

`python -m bench.guard` prints the same figures as a table; the old guard's outcomes are
recorded in the corpus (`--record-baseline`) and checked against git where 09aa316 is at hand.
"""

from __future__ import annotations

import pytest

import multi_model_conversation as mmc
from bench import guard as bench

CORPUS = bench.load()
BASELINE = CORPUS["baseline"]


def test_the_corpus_holds_enough_of_both_and_each_impersonation_names_its_source():
    items = CORPUS["items"]
    legit = [i for i in items if i["line"] is None]
    impersonations = [i for i in items if i["line"] is not None]
    assert len(legit) >= 40 and len(impersonations) >= 40
    assert len({i["id"] for i in items}) == len(items)
    for item in impersonations:
        assert item["source"]["scenario"] in CORPUS["prompts"], item["id"]
        assert isinstance(item["source"]["seed"], int), item["id"]
        assert 0 < item["line"] < len(item["text"].splitlines()), item["id"]


def test_no_legitimate_reply_is_cut_and_every_impersonation_the_old_guard_caught_is_caught():
    new = bench.outcomes(CORPUS, mmc.SpeakerGuard, mmc.stop_sequences)

    assert new["legit_cut"] == []
    assert set(BASELINE["caught"]) <= set(new["caught"])
    assert len(new["caught"]) >= len(BASELINE["caught"])
    assert len(BASELINE["legit_cut"]) >= 20, "the old guard cut these; the corpus must show it"


def test_the_recorded_baseline_is_what_the_old_guard_does():
    old = bench.old_pipe(BASELINE["rev"])
    if old is None:
        pytest.skip(f"{BASELINE['rev']} is not in this checkout's git history")
    o = bench.outcomes(CORPUS, old.SpeakerGuard, old.stop_sequences)
    assert {k: o[k] for k in ("caught", "missed", "legit_cut")} == {
        k: BASELINE[k] for k in ("caught", "missed", "legit_cut")
    }


def test_the_corpus_figures_do_not_depend_on_where_the_stream_splits():
    """The bench feeds whole lines; the pipe feeds whatever chunks arrive."""
    for item in CORPUS["items"]:
        names = [item["own"], *item["others"], item["user"], "User"]
        whole = mmc.SpeakerGuard(item["own"], names)
        expected = (whole.feed(item["text"]) + whole.flush(), whole.stopped_by)
        for size in (1, 3, 7):
            g = mmc.SpeakerGuard(item["own"], names)
            text = item["text"]
            shown = "".join(g.feed(text[i : i + size]) for i in range(0, len(text), size))
            assert (shown + g.flush(), g.stopped_by) == expected, (item["id"], size)
