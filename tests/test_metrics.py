"""Evaluation math (coldstart/metrics.py)."""

import itertools

import pytest

from coldstart.metrics import count_reflections, maj_at_k, mean_at_k, pass_at_k, summarize


def _pass_brute(n: int, c: int, k: int) -> float:
    """Share of k-subsets of n samples (the first c correct) that hold a correct one."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize(
    "n,c,k",
    [(1, 0, 1), (1, 1, 1), (4, 1, 2), (5, 2, 3), (6, 0, 3), (6, 6, 2), (8, 3, 1), (8, 3, 4), (9, 2, 8)],
)
def test_pass_at_k_matches_enumeration(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(_pass_brute(n, c, k), abs=1e-12)


def test_pass_at_k_values_and_errors():
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 − C(3,2)/C(4,2) = 1 − 3/6
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 = c/n
    assert pass_at_k(100, 1, 100) == 1.0
    for bad in [(4, 5, 1), (4, 1, 5), (4, 1, 0), (4, -1, 1)]:
        with pytest.raises(ValueError, match="pass_at_k"):
            pass_at_k(*bad)


def test_maj_at_k():
    answers = ["4", "5", "5", None, "4", "4"]
    correct = [True, False, False, False, True, True]
    assert maj_at_k(answers, correct, 1) == 1.0
    assert maj_at_k(answers, correct, 3) == 0.0  # "5" twice beats "4" once
    assert maj_at_k(answers, correct, 4) == 0.0  # None does not vote
    assert maj_at_k(answers, correct, 5) == 1.0  # 2–2 tie: "4" appeared first
    assert maj_at_k(["7", "4", "4", "7"], [False, True, True, False], 4) == 0.0  # tie to first, "7"
    assert maj_at_k([None, None, "3"], [False, False, True], 2) == 0.0  # nothing extracted
    with pytest.raises(ValueError, match="differ in length"):
        maj_at_k(["1"], [True, False], 1)
    with pytest.raises(ValueError, match="k"):
        maj_at_k(["1"], [True], 2)


def test_mean_at_k():
    assert mean_at_k([True, False, True, True], 2) == 0.5
    assert mean_at_k([1.0, 0.5, 0.0], 3) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        mean_at_k([True], 0)


@pytest.mark.parametrize(
    "text,count",
    [
        ("Wait, that's wrong. Let me double-check: however, 3+4=7.", 4),
        ("Let me go back to step 2. I made a mistake.", 2),
        ("let me check this. LET ME RE-CHECK. recheck.", 3),
        ("Hmm. Actually, alternatively we can backtrack; backtracking again.", 5),
        ("This is a dead end, try again. On second thought, go back.", 4),
        ("awaiting the mistaken however-ish answer", 1),  # only "however" stands as a word
        ("The answer is 42.", 0),
    ],
)
def test_count_reflections(text, count):
    assert count_reflections(text) == count


def test_summarize():
    correct = [[True, False, False, False], [False, False, False, False]]
    answers = [["1", "2", "2", None], [None, "9", "8", "9"]]
    texts = [["wait", "ok"], ["hmm wait", "x"]]
    out = summarize(correct, answers, texts, ks=(1, 2))
    assert out["pass@1"] == pytest.approx((0.25 + 0.0) / 2)
    assert out["pass@2"] == pytest.approx((0.5 + 0.0) / 2)
    assert out["mean@1"] == pytest.approx(0.5) and out["mean@2"] == pytest.approx(0.25)
    assert out["maj@1"] == 0.5 and out["maj@2"] == 0.5  # tie "1"/"2" → "1" (correct)
    assert out["reflections/mean"] == pytest.approx(3 / 4)
