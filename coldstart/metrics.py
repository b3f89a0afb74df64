"""Evaluation math on sampled answers: pass@k, maj@k, mean@k, reflection counts. Pure Python.

- `pass_at_k(n, c, k)`: the unbiased estimator of Chen et al. 2021 ("Evaluating Large Language Models
  Trained on Code"), `1 − C(n−c, k) / C(n, k)`: the chance that at least one of k samples drawn without
  replacement from n samples (c of them correct) is correct. Computed in the stable product form
  `1 − Π_{i=n−c+1}^{n} (1 − k/i)`, which avoids huge binomials.
- `maj_at_k(answers, correct, k)`: majority vote (self-consistency, Wang et al. 2023; ReFT's voting@100,
  docs/algorithms.md §23) over the first k extracted answers. `None` (nothing extracted) does not vote; ties go
  to the answer seen first. Answers are compared as given: normalise them before calling.
- `mean_at_k(correct, k)`: mean correctness of the first k samples (avg@k).
- `count_reflections(text)`: how many reflection / backtracking phrases a completion contains
  (cf. docs/algorithms.md §16, Cai et al.), matched case-insensitively on word boundaries, non-overlapping and
  longest first, so "let me double-check" counts once. The phrases are `REFLECTION_PATTERNS`.
- `summarize(correct, answers, texts, ks)`: the above averaged over problems.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

# Regexes (case-insensitive, word-bounded); longer phrases first so they win over their sub-phrases.
REFLECTION_PATTERNS: tuple[str, ...] = (
    r"on second thought",
    r"let me (?:go back|check|double[- ]check|re-?check|verify|reconsider|re-?examine)",
    r"let'?s (?:go back|check|double[- ]check|re-?check|verify|reconsider|re-?examine)",
    r"that(?:'s|’s| is) (?:not right|wrong|incorrect)",
    r"(?:go|going|went) back",
    r"backtrack(?:s|ed|ing)?",
    r"double[- ]check(?:s|ed|ing)?",
    r"re-?check(?:s|ed|ing)?",
    r"dead end",
    r"try again",
    r"mistakes?",
    r"wait",
    r"hmm+",
    r"however",
    r"actually",
    r"alternatively",
)
_REFLECTION_RE = re.compile(r"\b(?:" + "|".join(REFLECTION_PATTERNS) + r")\b", re.IGNORECASE)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021). Needs 0 <= c <= n, 1 <= k <= n.

    >>> pass_at_k(4, 1, 2)
    0.5
    """
    if not (0 <= c <= n) or not (1 <= k <= n):
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def _check_k(name: str, size: int, k: int) -> None:
    if not 1 <= k <= size:
        raise ValueError(f"{name} needs 1 <= k <= number of samples ({size}), got k={k}")


def maj_at_k(answers: Sequence[str | None], correct: Sequence[bool], k: int) -> float:
    """1.0 if the majority answer among the first k is correct, else 0.0 (also when none was extracted).

    answers[i] is sample i's extracted answer (None if none), correct[i] whether it is right; the vote's
    correctness is that of the first sample giving the voted answer.

    >>> maj_at_k(["4", "5", "5", None], [True, False, False, False], 3)
    0.0
    """
    if len(answers) != len(correct):
        raise ValueError(f"answers ({len(answers)}) and correct ({len(correct)}) differ in length")
    _check_k("maj_at_k", len(answers), k)
    counts: dict[str, int] = {}
    first: dict[str, int] = {}
    for i, a in enumerate(answers[:k]):
        if a is None:
            continue
        counts[a] = counts.get(a, 0) + 1
        first.setdefault(a, i)
    if not counts:
        return 0.0
    # max() keeps the first maximum in insertion order, i.e. the answer that appeared first
    winner = max(counts, key=lambda a: counts[a])
    return 1.0 if correct[first[winner]] else 0.0


def mean_at_k(correct: Sequence[bool | float], k: int) -> float:
    """Mean correctness of the first k samples (avg@k); floats in [0, 1] count as partial credit."""
    _check_k("mean_at_k", len(correct), k)
    return sum(float(c) for c in correct[:k]) / k


def count_reflections(text: str) -> int:
    """Number of reflection / backtracking phrases in text (see `REFLECTION_PATTERNS`).

    >>> count_reflections("Wait, that's wrong. Let me double-check: however, 3+4=7.")
    4
    """
    return len(_REFLECTION_RE.findall(text))


def summarize(
    correct: Sequence[Sequence[bool]],
    answers: Sequence[Sequence[str | None]] | None = None,
    texts: Sequence[Sequence[str]] | None = None,
    ks: Sequence[int] = (1,),
) -> dict[str, float]:
    """Average over P problems of `pass@k`, `mean@k` (and `maj@k` given answers) for each k in ks, plus
    `reflections/mean` (per completion) given texts. correct[p][i] is sample i of problem p."""
    if not correct:
        raise ValueError("summarize needs at least one problem")
    if answers is not None and len(answers) != len(correct):
        raise ValueError(f"answers has {len(answers)} problems, correct has {len(correct)}")
    out: dict[str, float] = {}
    for k in ks:
        out[f"pass@{k}"] = sum(pass_at_k(len(c), sum(map(bool, c)), k) for c in correct) / len(correct)
        out[f"mean@{k}"] = sum(mean_at_k(c, k) for c in correct) / len(correct)
        if answers is not None:
            out[f"maj@{k}"] = sum(maj_at_k(a, c, k) for a, c in zip(answers, correct, strict=True)) / len(
                correct
            )
    if texts is not None:
        flat = [count_reflections(t) for group in texts for t in group]
        out["reflections/mean"] = sum(flat) / max(len(flat), 1)
    return out
