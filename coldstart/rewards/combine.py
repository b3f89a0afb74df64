"""The reward registry and the weighted sum of reward functions that the RL loop calls.

A recipe lists rewards as specs `{"name": str, "weight": float = 1.0, "options": dict = {}}`;
`build_reward(specs, task)` turns them into a `CombinedReward`. A name is a key of `REWARDS` (a factory
`factory(**options, task=task) -> reward function`) or "package.module:function" for a user function.

`CombinedReward(prompts, completions, **columns) -> RewardResult` calls each part on the batch, checks
what it returns, and sums the parts with their weights. A reward function that misbehaves never stops
training and never leaks garbage into the advantages (DESIGN.md "Contracts"):
- a part that raises on the batch is retried item by item;
- an item that raises, or whose score is not a finite number (NaN, None, a string), or that comes from
  a part returning the wrong number of scores, scores 0 for that part, is logged to
  `logging.getLogger("coldstart.rewards")` and counted in `RewardResult.errors`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from coldstart.rewards.accuracy import make_accuracy
from coldstart.rewards.basic import RewardFn, import_reward, make_exact, make_format, make_overlong, make_task
from coldstart.rewards.code import make_code
from coldstart.rewards.kat import make_kat
from coldstart.rewards.mt import make_mt
from coldstart.rewards.reft import make_reft
from coldstart.rewards.rlt import make_rlt

log = logging.getLogger("coldstart.rewards")

REWARDS: dict[str, Callable[..., RewardFn]] = {
    "accuracy": make_accuracy,
    "exact": make_exact,
    "format": make_format,
    "task": make_task,
    "overlong": make_overlong,
    "code": make_code,
    "reft": make_reft,  # accuracy with partial=0.1 (ReFT §23)
    "mt": make_mt,  # MT-R1-Zero format gate + BLEU/chrF (§19)
    "kat": make_kat,  # KAT think-mode choice (§8, simplified)
    "rlt": make_rlt,  # RLT student log-likelihood (§12)
}


@dataclass
class RewardResult:
    """Scores of N completions.

    total:          (N,) weighted sum of the parts
    parts:          name -> (N,) unweighted score of each part (0 where it failed)
    errors:         number of (part, item) scores that failed and were set to 0
    error_messages: the first few failures, "name[i]: message"
    """

    total: list[float]
    parts: dict[str, list[float]]
    errors: int = 0
    error_messages: list[str] = field(default_factory=list)

    def metrics(self, prefix: str = "reward/") -> dict[str, float]:
        """Batch means of the total and of each part, and the error count, for metrics.jsonl."""
        out = {f"{prefix}total": _mean(self.total)}
        out.update({f"{prefix}{name}": _mean(scores) for name, scores in self.parts.items()})
        out[f"{prefix}errors"] = float(self.errors)
        return out


@dataclass
class RewardPart:
    """One weighted reward function of a CombinedReward."""

    name: str
    weight: float
    fn: RewardFn


@dataclass
class CombinedReward:
    """The weighted sum of reward parts; see the module docstring for how failures are handled.

    >>> reward = build_reward([{"name": "accuracy"}, {"name": "format", "weight": 0.5}])
    >>> result = reward(["1+1?"] * 2, ["<think>1+1</think><answer>2</answer>", "3"], answer=["2", "2"])
    >>> result.total, result.parts, result.errors
    ([1.5, 0.0], {'accuracy': [1.0, 0.0], 'format': [1.0, 0.0]}, 0)
    """

    parts: list[RewardPart]
    max_messages: int = 5

    def __call__(self, prompts: list[str], completions: list[str], **columns: Any) -> RewardResult:
        n = len(completions)
        for key, column in {"prompts": prompts, **columns}.items():
            if not isinstance(column, Sequence) or isinstance(column, str) or len(column) != n:
                size = len(column) if isinstance(column, Sequence) else type(column).__name__
                raise ValueError(f"reward column {key!r} must be a list of {n} items (one per completion); "
                                 f"got {size}")
        failures: list[str] = []
        parts = {p.name: _run_part(p, prompts, completions, columns, failures) for p in self.parts}
        total = [sum(p.weight * parts[p.name][i] for p in self.parts) for i in range(n)]
        for message in failures[: self.max_messages]:
            log.warning("reward failed, scored 0: %s", message)
        if len(failures) > self.max_messages:
            log.warning("... and %d more reward failures in this batch", len(failures) - self.max_messages)
        return RewardResult(total, parts, len(failures), failures[: self.max_messages])


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def _score(value: Any) -> float | None:
    """`value` as a finite float, or None if it is not one (NaN, inf, None, a string, a list)."""
    if isinstance(value, (str, bytes)):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _run_part(part: RewardPart, prompts: list[str], completions: list[str], columns: dict[str, list],
              failures: list[str]) -> list[float]:
    """(N,) scores of one part; failed items score 0 and append "name[i]: why" to `failures`."""
    n = len(completions)
    try:
        out = list(part.fn(prompts, completions, **columns))
        if len(out) != n:
            raise ValueError(f"returned {len(out)} scores for {n} completions")
    except Exception as e:  # noqa: BLE001 - any failure of user code is retried item by item
        log.debug("reward %s failed on the batch (%s: %s); retrying item by item", part.name,
                  type(e).__name__, e)
        return [_run_item(part, i, prompts, completions, columns, failures) for i in range(n)]
    scores = []
    for i, value in enumerate(out):
        x = _score(value)
        if x is None:
            failures.append(f"{part.name}[{i}]: returned {value!r}, not a finite number")
        scores.append(0.0 if x is None else x)
    return scores


def _run_item(part: RewardPart, i: int, prompts: list[str], completions: list[str],
              columns: dict[str, list], failures: list[str]) -> float:
    """Score of item i alone; 0 (and a failure message) if the part raises or returns garbage."""
    try:
        out = list(part.fn([prompts[i]], [completions[i]], **{k: [v[i]] for k, v in columns.items()}))
    except Exception as e:  # noqa: BLE001
        failures.append(f"{part.name}[{i}]: {type(e).__name__}: {e}")
        return 0.0
    x = _score(out[0]) if len(out) == 1 else None
    if x is None:
        failures.append(f"{part.name}[{i}]: returned {out!r} for one completion, not one finite number")
    return 0.0 if x is None else x


def _build_part(spec: Any, task: Any) -> tuple[str, float, RewardFn]:
    """(name, weight, reward function) of one spec; ValueError naming the field on bad input."""
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise ValueError(f"reward spec must be a dict with a string 'name'; got {spec!r}")  # noqa: TRY004 - config error
    name = spec["name"]
    unknown = sorted(set(spec) - {"name", "weight", "options"})
    if unknown:
        raise ValueError(f"reward {name!r}: unknown spec keys {unknown} (allowed: name, weight, options)")
    weight, options = spec.get("weight", 1.0), spec.get("options") or {}
    if isinstance(weight, bool) or _score(weight) is None:
        raise ValueError(f"reward {name!r}: weight must be a finite number; got {weight!r}")
    if not isinstance(options, dict) or "task" in options:
        raise ValueError(f"reward {name!r}: options must be a dict without 'task'; got {options!r}")
    if ":" in name:
        return name, float(weight), import_reward(name, **options)
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}; valid: {', '.join(sorted(REWARDS))} "
                         f"or 'package.module:function'")
    try:
        fn = REWARDS[name](**options, task=task)
    except TypeError as e:
        raise ValueError(f"reward {name!r}: bad options {options!r}: {e}") from e
    return name, float(weight), fn


def build_reward(specs: list[dict], task: Any = None) -> CombinedReward:
    """Build the weighted sum of the rewards in `specs`; a repeated name gets a suffix (`format_2`).

    >>> build_reward([{"name": "accuracy"}, {"name": "format"}, {"name": "format", "options": {"tag": "plan"}}]
    ...              ).parts[2].name
    'format_2'
    """
    if not isinstance(specs, list) or not specs:
        raise ValueError(f"rewards: need a non-empty list of reward specs; got {specs!r}")
    parts: list[RewardPart] = []
    for spec in specs:
        name, weight, fn = _build_part(spec, task)
        key, k = name, 1
        while any(p.name == key for p in parts):
            k += 1
            key = f"{name}_{k}"
        parts.append(RewardPart(key, weight, fn))
    return CombinedReward(parts)
