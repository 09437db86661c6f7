"""The speaker guard and the echo guard on the labelled corpora (tests/guard_corpus.json, issue
18; tests/guard_corpus_wide.json, issue 26): the counts `python -m bench.guard` prints.

The old guards' outcomes are checked against git where their revisions are at hand (09aa316's
recorded in guard_corpus.json; 16ddf33, main when issue 26 was filed, measured live).
"""

from __future__ import annotations

import pytest

import multi_model_conversation as mmc
from bench import guard as bench

CORPUS = bench.load()
BASELINE = CORPUS["baseline"]
WIDE = bench.load(bench.WIDE)
ITEMS = bench.speaker_items()


def test_the_corpus_holds_enough_of_both_and_each_model_reply_names_its_source():
    legit = [i for i in ITEMS if i["line"] is None]
    impersonations = [i for i in ITEMS if i["line"] is not None]
    assert len(legit) >= 100 and len(impersonations) >= 40
    assert len({i["id"] for i in ITEMS}) == len(ITEMS)
    assert {i["split"] for i in ITEMS} == {"tuning", "held_out"}
    for item in ITEMS:
        if item["source"] != "hand":
            assert item["source"]["scenario"] in bench.SCENARIOS, item["id"]
            assert isinstance(item["source"]["seed"], int), item["id"]
        if item["line"] is not None:
            assert 0 <= item["line"] < len(item["text"].splitlines()), item["id"]
    cases = WIDE["echo"]
    assert len({c["id"] for c in cases}) == len(cases)
    assert sum(c["echo"] for c in cases) >= 10 and sum(not c["echo"] for c in cases) >= 10


def test_the_speaker_guard_cuts_no_legitimate_reply_and_misses_what_it_missed_when_tuned():
    whole = bench.outcomes({"items": ITEMS}, mmc.SpeakerGuard, mmc.stop_sequences)
    held = [i for i in ITEMS if i["split"] == "held_out"]
    held_out = bench.outcomes({"items": held}, mmc.SpeakerGuard, mmc.stop_sequences)

    assert whole["legit_cut"] == []
    assert whole["missed"] == [
        "debate-plain-6",  # introduced by "For example:", kept
        "local-japanese-plain-t1.2-7",  # held out: garbled Japanese with no mark of speech
    ]
    assert (len(held_out["caught"]), len(held_out["missed"])) == (2, 1)
    assert held_out["legit_cut"] == []


def test_todays_speaker_guard_cut_the_formats_issue_26_names():
    today = bench.old_pipe(bench.TODAY)
    if today is None:
        pytest.skip(f"{bench.TODAY} is not in this checkout's git history")
    o = bench.outcomes({"items": ITEMS}, today.SpeakerGuard, today.stop_sequences)
    assert {"scorecard-issue", "sample-dialogue-user", "note-alias-statement"} <= set(
        o["legit_cut"]
    )
    assert {"ja-impersonation", "closing-said"} <= set(o["missed"])


def test_the_echo_guard_does_no_worse_than_todays_on_the_echo_cases():
    """The echo guard is issue 26's other half: this only holds the line against today's."""
    now = bench.echo_outcomes(WIDE["echo"], bench.pipe_at(None))
    today_pipe = bench.pipe_at(bench.TODAY)
    if today_pipe is None:
        pytest.skip(f"{bench.TODAY} is not in this checkout's git history")
    today = bench.echo_outcomes(WIDE["echo"], today_pipe)
    assert set(today["caught"]) <= set(now["caught"])
    assert set(now["legit_cut"]) <= set(today["legit_cut"])
    assert (len(now["caught"]), len(now["legit_cut"])) == (9, 0)  # of 12 copies, 25 not
    # Today: the stop phrase said alone and a council revision are cut; loops are missed.
    assert {"stop-phrase-alone", "council-revision"} <= set(today["legit_cut"])
    assert {"loop-paragraph", "loop-line"} <= set(today["missed"])


def test_the_recorded_baseline_is_what_the_old_guard_does():
    old = bench.old_pipe(BASELINE["rev"])
    if old is None:
        pytest.skip(f"{BASELINE['rev']} is not in this checkout's git history")
    o = bench.outcomes(CORPUS, old.SpeakerGuard, old.stop_sequences)
    assert {k: o[k] for k in ("caught", "missed", "legit_cut")} == {
        k: BASELINE[k] for k in ("caught", "missed", "legit_cut")
    }


def test_the_corpus_figures_do_not_depend_on_where_the_stream_splits():
    """The bench feeds whole replies; the pipe feeds whatever chunks arrive."""
    for item in ITEMS:
        names = [item["own"], *item["others"], item.get("closing", ""), item["user"]]
        said = bench.said_before(item)
        whole = mmc.SpeakerGuard(item["own"], names, said)
        expected = (whole.feed(item["text"]) + whole.flush(), whole.stopped_by, whole.held_back)
        for size in (1, 3, 7):
            g = mmc.SpeakerGuard(item["own"], names, said)
            text = item["text"]
            shown = "".join(g.feed(text[i : i + size]) for i in range(0, len(text), size))
            assert (shown + g.flush(), g.stopped_by, g.held_back) == expected, (item["id"], size)
