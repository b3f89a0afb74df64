"""KAT-V1's think-mode reward (AutoThink / Step-SRPO, arXiv 2507.08297; docs/algorithms.md §8), simplified.

KAT trains a model to decide per query whether to think (`<think_on>`, then `<think>…</think>`) or to answer
directly (`<think_off>`), with two reward streams: one for choosing the mode appropriately, one for the
answer. How "appropriate" is decided is unconfirmed; we implement the spec's "likely rule": think-off is the
right mode for a prompt when think-off answers are as accurate as think-on answers.

Our reading, per group of completions of the same prompt (the G rollouts of one prompt in an RL batch):
- mode(c): "off" if c contains `<think_off>`, "on" if it contains `<think_on>`; without a mode token, "on"
  when c has a `<think>…</think>` block with non-blank content, else "off";
- correct(c): the task's verifier ≥ 1 (with the `example` column), else math-verify against `answer`;
- when both modes occur in the group: preferred = off if mean correct(off) ≥ mean correct(on), else on;
  each completion scores 1 if its mode is the preferred one, else 0. A group with one mode only scores 0
  throughout (nothing to compare; a constant gives no GRPO advantage anyway).

Deviations: this is the mode stream only. Add the answer stream as another reward (`task` or `accuracy`);
Step-SRPO's separate per-stage advantages for judge and answer tokens are not implemented (the weighted sum
gets one group-relative advantage). No `<judge>` segment is required.

    rl.rewards: [{name: task}, {name: kat, weight: 0.5}]
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Sequence
from typing import Any

from coldstart.rewards.accuracy import verify_answer
from coldstart.rewards.basic import RewardFn

_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)


def think_mode(text: str) -> str:
    """"on" or "off": the mode token if there is one, else whether a non-blank think block exists.

    >>> think_mode("<think_off><answer>4</answer>"), think_mode("<think> 2+2 </think><answer>4</answer>")
    ('off', 'on')
    >>> think_mode("<think> </think><answer>4</answer>"), think_mode("<think_on><think>a</think>")
    ('off', 'on')
    """
    if "<think_off>" in text:
        return "off"
    if "<think_on>" in text:
        return "on"
    return "on" if any(block.strip() for block in _THINK.findall(text)) else "off"


def mode_rewards(modes: Sequence[str], correct: Sequence[float], groups: Sequence[Hashable]) -> list[float]:
    """(N,) 1 where a completion's mode is its group's preferred mode, else 0 (see the module docstring).

    >>> mode_rewards(["on", "on", "off", "off", "on", "off"], [1, 0, 1, 1, 1, 0], ["a"] * 4 + ["b"] * 2)
    [0.0, 0.0, 1.0, 1.0, 1.0, 0.0]
    """
    preferred: dict[Hashable, str | None] = {}
    for g in dict.fromkeys(groups):
        idx = [i for i, h in enumerate(groups) if h == g]
        on = [correct[i] for i in idx if modes[i] == "on"]
        off = [correct[i] for i in idx if modes[i] == "off"]
        preferred[g] = None if not on or not off else "off" if sum(off) / len(off) >= sum(on) / len(on) else "on"
    return [float(preferred[g] == m) for m, g in zip(modes, groups)]


def make_kat(task: Any = None) -> RewardFn:
    """Build the think-mode reward; groups are the completions sharing a prompt.

    >>> reward = make_kat()
    >>> reward(["2+2"] * 3, ["<think_off><answer>4</answer>", "<think>2+2=4</think><answer>4</answer>",
    ...                      "<think>2+2=5</think><answer>5</answer>"], answer=["4"] * 3)
    [1.0, 0.0, 0.0]
    """

    def kat(prompts: list[str], completions: list[str], answer: list[str], example: list | None = None,
            **columns) -> list[float]:
        if task is not None and example is not None:
            correct = [float(task.verify(ex, c) >= 1.0) for ex, c in zip(example, completions, strict=True)]
        else:
            correct = [verify_answer(c, a) for c, a in zip(completions, answer, strict=True)]
        return mode_rewards([think_mode(c) for c in completions], correct, prompts)

    return kat
