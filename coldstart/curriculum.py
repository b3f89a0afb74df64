"""Phased curricula and difficulty-aware retrospective sampling (QwenLong-L1, arXiv 2505.17667; docs/algorithms.md §18).

`rl.curriculum` splits the RL training pool into phases by a sort key and trains them in order, the steps
split across the phases:

- `by: length`: the prompt's plus the solution's characters (for arithmetic this follows the digits and the
  carries); QwenLong-L1's progressive context scaling sorts by input length. `by: difficulty`: the example's
  `meta[key]` (`key: difficulty` by default; any numeric meta field works).
- `phases`: upper bounds `[L_1, L_2, ...]` of the key, phase k holding the examples with key in
  `(L_{k−1}, L_k]` (`null` = no bound; examples above the last bound are not used, as QwenLong-L1 drops
  over-long inputs), or a count n: n equal-size phases of the sorted keys (ties stay in one phase).
- `steps`: each phase's share of `rl.steps` (default: equal shares).

Retrospective sampling: when a phase starts, examples of earlier phases whose mean reward so far is below
`hard_below` are candidates to carry into it. Their difficulty is the inverse of the mean reward,
`w = 1 / (mean + δ)` with δ = 0.1 (our choice: keeps a never-solved example finite, weight 10, against
≈ 0.9 for an always-solved one); `retrospective · |phase pool|` of them are drawn without replacement
with probability ∝ w and join the phase's pool. The paper's exact weighting and share are unconfirmed.
Mean rewards are tracked per prompt over every rollout sampled (all G of a group) in `state["curriculum"]`,
which is checkpointed, so `--resume` keeps the phase, the carried examples and the rewards.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .types import Example

DELTA = 0.1  # keeps the inverse-reward difficulty finite for never-solved examples


def sort_key(example: Example, by: str, key: str = "difficulty") -> float:
    """The curriculum key of one example: `length` = characters of prompt + solution; `difficulty` =
    float(meta[key]) (a missing key is an error that names it)."""
    if by == "length":
        return float(len(example.key) + len(example.solution or ""))
    if by == "difficulty":
        if key not in example.meta:
            raise ValueError(f"rl.curriculum: by difficulty needs meta[{key!r}] on every example; "
                             f"{example.key[:40]!r} has meta keys {sorted(example.meta)}")
        return float(example.meta[key])
    raise ValueError(f"rl.curriculum.by must be length or difficulty, got {by!r}")


def split_phases(keys: list[float], phases: list[float | None] | int) -> list[list[int]]:
    """Indices of `keys` per phase, each in pool order. `phases`: upper bounds (phase k: key in (L_{k−1}, L_k],
    None = unbounded) or a count of equal-size phases of the sorted keys (a tie never straddles two phases).

    >>> split_phases([5, 1, 3, 9, 7], [3, 7])
    [[1, 2], [0, 4]]
    >>> split_phases([5, 1, 3, 9], 2)
    [[1, 2], [0, 3]]
    """
    if isinstance(phases, int):
        if phases < 1:
            raise ValueError(f"rl.curriculum.phases: a count must be >= 1, got {phases}")
        ranked = sorted(keys)
        cuts = [ranked[min(len(ranked), math.ceil(len(ranked) * (k + 1) / phases)) - 1] for k in range(phases)]
        bounds: list[float | None] = [*cuts[:-1], None]
    else:
        bounds = list(phases)
        finite = [b for b in bounds[:-1] if b is not None]
        if len(finite) != len(bounds) - 1 or finite != sorted(set(finite)) or (
                bounds[-1] is not None and finite and bounds[-1] <= finite[-1]):
            raise ValueError(f"rl.curriculum.phases: upper bounds must increase (only the last may be null), "
                             f"got {phases}")
    out, low = [], -math.inf
    for b in bounds:
        high = math.inf if b is None else b
        out.append([i for i, k in enumerate(keys) if low < k <= high])
        low = high
    return out


def phase_ends(steps: int, shares: list[float]) -> list[int]:
    """Step at which each phase ends (exclusive), from shares of `steps` (normalised; rounded, last = steps).

    >>> phase_ends(10, [1, 1, 1])
    [3, 7, 10]
    """
    if not shares or any(s <= 0 for s in shares):
        raise ValueError(f"rl.curriculum.steps: shares must be > 0, got {shares}")
    total, acc, ends = sum(shares), 0.0, []
    for s in shares:
        acc += s
        ends.append(round(steps * acc / total))
    ends[-1] = steps
    return ends


def phase_at(step: int, ends: list[int]) -> int:
    """The phase of 0-based `step`: the first whose end is beyond it (the last phase after the run's end).

    >>> [phase_at(s, [3, 7, 10]) for s in (0, 2, 3, 9, 12)]
    [0, 0, 1, 2, 2]
    """
    return next((k for k, e in enumerate(ends) if step < e), len(ends) - 1)


def record_rewards(table: dict[str, list[float]], prompts: list[str], scores: torch.Tensor, group_size: int) -> None:
    """Add each group's rewards to `table[prompt] = [sum, count]`: prompts (B,), scores (B·G,) prompt-major."""
    per_group = scores.detach().float().cpu().view(len(prompts), group_size)
    for p, row in zip(prompts, per_group, strict=True):
        s, n = table.get(p, [0.0, 0])
        table[p] = [s + float(row.sum()), n + group_size]


def difficulty_weights(mean_rewards: torch.Tensor, delta: float = DELTA) -> torch.Tensor:
    """(K,) mean rewards → (K,) difficulty weights 1 / (mean + delta) (rewards below −delta are clamped).

    >>> difficulty_weights(torch.tensor([0.0, 0.4, 0.9])).tolist()
    [10.0, 2.0, 1.0]
    """
    return 1.0 / (mean_rewards.float().clamp(min=0.0) + delta)


def retrospective_select(candidates: list[int], mean_rewards: list[float], count: int, hard_below: float,
                         generator: torch.Generator | None = None) -> list[int]:
    """Carry `count` of the candidates (indices) whose mean reward is below `hard_below`, drawn without
    replacement with probability ∝ `difficulty_weights`; all of them when there are at most `count`.
    Returns the chosen indices in ascending order."""
    hard = [(c, r) for c, r in zip(candidates, mean_rewards, strict=True) if r < hard_below]
    if count <= 0 or not hard:
        return []
    if len(hard) <= count:
        return sorted(c for c, _ in hard)
    w = difficulty_weights(torch.tensor([r for _, r in hard]))
    picks = torch.multinomial(w, count, replacement=False, generator=generator)
    return sorted(hard[i][0] for i in picks.tolist())


def curriculum_pool(pool: list[Example], state: dict[str, Any], cfg, steps: int, seed: int
                    ) -> tuple[list[Example], dict[str, float]]:
    """The training pool at `state["step"]`: the current phase's examples plus the ones carried into it.

    Keeps `state["curriculum"] = {"phase", "carried" (pool indices), "rewards" (prompt → [sum, count])}`;
    entering a new phase draws the carried examples (seeded by `seed` and the phase). `cfg` is the
    recipe's `rl.curriculum`. Returns (pool, metrics `curriculum/phase`, `curriculum/pool`, `curriculum/carried`).
    """
    keys = [sort_key(e, cfg.by, cfg.key) for e in pool]
    split = split_phases(keys, cfg.phases)
    for k, idx in enumerate(split):
        if not idx:
            raise ValueError(f"rl.curriculum: phase {k + 1} of {cfg.phases} by {cfg.by} holds no training example "
                             f"(keys range {min(keys):g} .. {max(keys):g})")
    shares = cfg.steps or [1.0] * len(split)
    if len(shares) != len(split):
        raise ValueError(f"rl.curriculum.steps has {len(shares)} shares for {len(split)} phases")
    phase = phase_at(state["step"], phase_ends(steps, shares))
    cur = state.setdefault("curriculum", {"phase": 0, "carried": [], "rewards": {}})
    if phase != cur["phase"]:
        earlier = [i for k in range(phase) for i in split[k] if pool[i].key in cur["rewards"]]
        means = [cur["rewards"][pool[i].key][0] / max(1, cur["rewards"][pool[i].key][1]) for i in earlier]
        gen = torch.Generator().manual_seed(seed * 7919 + 104729 * phase)
        count = math.ceil(cfg.retrospective * len(split[phase]))
        cur.update(phase=phase, carried=retrospective_select(earlier, means, count, cfg.hard_below, gen))
    own = set(split[phase])
    ids = split[phase] + [i for i in cur["carried"] if i not in own]
    metrics = {"curriculum/phase": phase + 1, "curriculum/pool": len(ids), "curriculum/carried": len(cur["carried"])}
    return [pool[i] for i in ids], metrics
