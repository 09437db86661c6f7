"""Issue 29.2: a peer review's `RANKING:` line is read as the reviewer wrote it.

On the old parser every word starting with A-D on the line counted as a letter (its
`(?![a-z])` guard ran after `.upper()`), so "C (best), A, B (weakest)" read C, B, A.
"""

from __future__ import annotations

import pytest

import multi_model_conversation as mmc

C_A_B = [2, 0, 1]


@pytest.mark.parametrize(
    "line",
    [
        "RANKING: C (best), A, B (weakest)",  # the first example
        "RANKING: Based on accuracy, C > A > B",  # the second
        "RANKING: C, A, B",
        "RANKING: C > A > B",
        "RANKING: C>A>B",
        "RANKING: C >> A >> B",
        "RANKING: C → A → B",
        "RANKING: C; A; B",
        "RANKING: C | A | B",
        "RANKING: C / A / B",
        "RANKING: C - A - B",
        "RANKING: C-A-B",
        "RANKING: C A B",
        "RANKING: [C, A, B]",
        "RANKING: C, A, B.",
        "RANKING: C, A and B",
        "RANKING: C, then A, then B",
        "RANKING: C first, A second, B third",
        "RANKING: 1st C, 2nd A, 3rd B",
        "RANKING: 1. C 2. A 3. B",
        "RANKING: 1) C, 2) A, 3) B",
        "RANKING: **C**, **A**, **B**",
        "**RANKING:** C, A, B",
        "> RANKING: `C, A, B`",
        "Ranking: C, A, B",
        "RANKING: Response C, Response A, Response B",
        "RANKING: Response C > Response A > Response B",
        "RANKING: answer C, answer A, answer B",
        "RANKING: C (accurate and complete) > A (good, but brief) > B (has errors)",
        "RANKING: C [most thorough], A, B [misread the question]",
        "RANKING: C is the best, A is good, B is the weakest",
        "RANKING: C is best, then A, then B",
        "RANKING: A close call, but C > A > B",
        "RANKING: Best to worst: C, A, B",
        "RANKING: From best to worst, C, A, B",
        "RANKING: C, A, B (B had factual errors)",
        "RANKING: C > A > B, since A is vague about the dates",
        "RANKING: C = A > B",
        "RANKING: c > a > b",
        "RANKING: c, a, b",
        "RANKING: C, A, B, D",  # a letter beyond the answers shown is skipped
        "RANKING：C、A、B",
        "RANKING:\n1. C\n2. A\n3. B",
        "RANKING:\n\n- C\n- A\n- B\n\nA was close to C.",
        "RANKING: 1. C\n2. A\n3. B",
        "Some thoughts on A and B.\n\nRANKING: C, A, B\n\nAll three tried hard.",
    ],
)
def test_natural_ranking_lines_read_as_written(line):
    assert mmc.parse_ranking(line, 3) == C_A_B


@pytest.mark.parametrize(
    "line",
    [
        "RANKING: I cannot rank these answers.",
        "RANKING: All answers are equally good.",
        "RANKING: All three are correct; none stands out.",
        "RANKING: Both are accurate, choose by taste.",
        "RANKING: Cannot decide",
        "RANKING: Abstain",
        "RANKING: N/A",
        "RANKING: n/a",
        "RANKING: Not applicable",
        "RANKING: A tie between all of them.",
        "RANKING: A three-way tie.",
        "RANKING: Based on accuracy and depth, they are even.",
        "RANKING: Every answer has its merits.",
        "RANKING: (none)",
        "RANKING: a tie",
        "RANKING:",
        "Ranking the answers is hard. Accuracy counts, Breadth counts, Clarity counts.",
        "I rank A first.",  # no RANKING line
    ],
)
def test_prose_on_a_ranking_line_yields_no_letters(line):
    assert mmc.parse_ranking(line, 3) == []


def test_what_must_not_change_the_last_line_wins_and_unknown_letters_are_skipped():
    assert mmc.parse_ranking("RANKING: A, B\nOn reflection:\nRANKING: B > A", 2) == [1, 0]
    assert mmc.parse_ranking("**Ranking:** C, A, Z, A", 3) == [2, 0]
    assert mmc.parse_ranking("RANKING: B, A", 2) == [1, 0]
    assert mmc.parse_ranking("RANKING: B", 3) == [1]  # a partial ranking stays partial
    assert mmc.parse_ranking("RANKING: A", 1) == [0]
    assert mmc.parse_ranking("RANKING: A is the only answer.", 1) == [0]
    assert mmc.parse_ranking("RANKING: D, C, B, A", 4) == [3, 2, 1, 0]


def test_a_leading_a_that_is_a_letter_stays_one():
    assert mmc.parse_ranking("RANKING: A is best, then C, then B", 3) == [0, 2, 1]
    assert mmc.parse_ranking("RANKING: A over C over B", 3) == [0, 2, 1]


def test_the_table_gives_points_as_the_reviewers_ranked():
    """The table the chair reads: "C (best), A, B (weakest)" puts C first, not B."""
    order = mmc.parse_ranking("RANKING: C (best), A, B (weakest)", 3)
    others = ["Ben", "Cy", "Dee"]  # what the reviewer saw as A, B, C
    table = mmc.ranking_table({"Ann": [others[i] for i in order]}, ["Ann", *others])
    rows = [line.split(" | ")[1:3] for line in table.splitlines()[2:]]
    assert rows == [["Dee", "3"], ["Ben", "2"], ["Cy", "1"], ["Ann", "0"]], table
