"""ReFT's partial reward (Luong et al., ACL 2024; docs/algorithms.md §23), registered as `reft`.

1 if the extracted answer is correct, 0.1 if an answer could be extracted but is wrong, 0 if none could.
This is the `accuracy` reward with `partial=0.1` (one implementation, in accuracy.py); `reft` only changes
the default. OpenRFT's outcome reward (§14: 1 correct option, 0.1 wrong option extracted, 0 otherwise) is
the same rule.

    rl.rewards: [{name: reft}]          # = [{name: accuracy, options: {partial: 0.1}}]
"""

from __future__ import annotations

from typing import Any

from coldstart.rewards.accuracy import make_accuracy
from coldstart.rewards.basic import RewardFn


def make_reft(partial: float = 0.1, timeout_s: int = 5, max_chars: int = 1000, task: Any = None) -> RewardFn:
    """Build ReFT's reward: 1 right, `partial` (0.1) extracted but wrong, 0 nothing extracted.

    >>> make_reft()(["q"] * 3, ["<answer>4</answer>", "<answer>5</answer>", "4"], answer=["4"] * 3)
    [1.0, 0.1, 0.0]
    """
    return make_accuracy(partial=partial, timeout_s=timeout_s, max_chars=max_chars, task=task)
