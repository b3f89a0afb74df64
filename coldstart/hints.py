"""Hint-infer (START, Li et al., arXiv 2503.04625, docs/algorithms.md §9): cut a sampled chain of thought at a
reflection point, append a hand-written hint from a library, and let the model continue from there.

START stops long-CoT decoding at reflective conjunctions ("Wait", "Alternatively") or before the stop token,
inserts a hint such as "Wait, maybe using Python here is a good idea." and decodes on; Hint-RFT then keeps
the verified-correct hinted trajectories as SFT data (`rsft.hints: true` in coldstart.rsft).

Our reading (the paper's exact rule for choosing among several reflection points is unconfirmed):
- the insertion points of a completion are the starts of the reflection words inside its `<think>` block
  (whole words, case-sensitive: "Wait", "Alternatively") and the position of its first `</think>`;
- the hint goes at the *first* insertion point (`hint_point`): the text after it is dropped and regenerated,
  so a trace that already reflects is redirected at its first reflection, and one that never does gets the
  hint just before it would stop thinking;
- a completion without `</think>` (truncated, or off-format) gets no hint (there is nothing to continue);
- the hint starts on a new line unless the cut already ends in whitespace or a tag (`>`), and a newline
  follows it, so the model continues on a fresh line as in the task's traces;
- code execution (START's tool calls) is not part of this toolkit.

    prefix = hinted_prefix("<think>2+2=5\\n</think><answer>5</answer>", "Wait, let me check.")
    # '<think>2+2=5\\nWait, let me check.\\n'
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

REFLECTION_WORDS = ("Wait", "Alternatively")

# Generic hints for the built-in step-by-step tasks (column addition, countdown search); a recipe can pass
# its own library as `rsft.hint_library`.
DEFAULT_HINTS = (
    "Wait, let me double-check the last column.",
    "Wait, let me redo the steps one at a time.",
    "Wait, let me check each step again.",
    "Alternatively, let me verify the result another way.",
)


def insertion_points(text: str, words: Sequence[str] = REFLECTION_WORDS, end_tag: str = "</think>") -> list[int]:
    """Character offsets where a hint may go: each reflection word inside the think block, then `end_tag`.

    Only text before the first `end_tag` counts; without `end_tag` there are no points.

    >>> insertion_points("<think>1+1=3\\nWait, no. 1+1=2</think><answer>2</answer>")
    [13, 28]
    >>> insertion_points("<think>Waiting</think>"), insertion_points("<think>1+1=2")
    ([14], [])
    """
    end = text.find(end_tag)
    if end < 0:
        return []
    pattern = re.compile(r"\b(?:" + "|".join(re.escape(w) for w in words) + r")\b") if words else None
    points = [m.start() for m in pattern.finditer(text, 0, end)] if pattern else []
    return [*points, end]


def hint_point(text: str, words: Sequence[str] = REFLECTION_WORDS, end_tag: str = "</think>") -> int | None:
    """The offset where the hint goes: the first insertion point, or None when there is none.

    >>> hint_point("<think>a\\nWait, b</think>"), hint_point("<think>a</think>"), hint_point("no tags")
    (9, 8, None)
    """
    points = insertion_points(text, words, end_tag)
    return points[0] if points else None


def hinted_prefix(text: str, hint: str, words: Sequence[str] = REFLECTION_WORDS,
                  end_tag: str = "</think>") -> str | None:
    """The completion cut at its hint point with the hint appended (the prefix to continue), or None.

    >>> hinted_prefix("<think>2+2=5</think><answer>5</answer>", "Wait, check.")
    '<think>2+2=5\\nWait, check.\\n'
    >>> hinted_prefix("<think>2+2=5\\nWait, 2+2=4</think>", "Alternatively, count.")
    '<think>2+2=5\\nAlternatively, count.\\n'
    """
    point = hint_point(text, words, end_tag)
    if point is None:
        return None
    head = text[:point]
    sep = "" if not head or head[-1].isspace() or head.endswith(">") else "\n"
    return f"{head}{sep}{hint}\n"


def hinted_prefixes(texts: Sequence[str], hints: Sequence[str], generator: torch.Generator | None = None,
                    words: Sequence[str] = REFLECTION_WORDS, end_tag: str = "</think>") -> list[str | None]:
    """One hinted prefix per completion (None where it has no hint point); the hint of each is drawn
    uniformly from the library with `generator` (N draws, one per text, whether or not it is used)."""
    if not hints:
        raise ValueError("hints: the hint library is empty")
    picks = torch.randint(len(hints), (len(texts),), generator=generator).tolist()
    return [hinted_prefix(t, hints[i], words, end_tag) for t, i in zip(texts, picks)]
