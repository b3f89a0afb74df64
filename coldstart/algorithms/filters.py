"""Group filters: which of the B prompt groups of a batch of N = B×G rollouts go into the loss.

Every filter in `FILTERS` has one signature:

    fn(scores (N,), group_size, **opts) -> (keep (B,) bool, metrics)

Rows are grouped prompt-major (row i belongs to group i // group_size); `expand_group_mask(keep, G)`
turns the group mask into a row mask (N,). Unknown options raise ValueError naming them.

- `none`: keep every group.
- `dynamic` (DAPO dynamic sampling, ALGORITHMS.md §0.3): keep the groups whose scores are not all equal
  (for 0/1 rewards: 0 < accuracy < 1), since their group-relative advantage is 0 and they only dilute the
  loss. Option `min_std` (default 0.0) drops also groups whose population std is ≤ min_std. DAPO then
  *resamples* new prompts until the batch is full; that refill belongs to the loop, not to this function.
  Deviation from verl's recipe: verl keeps groups of size 1; we raise, since every group of one is "all
  equal" and the filter would be meaningless.

Metrics: `groups/zero_std_frac` (share of groups with all-equal scores), `groups/kept` (count),
`groups/kept_frac`, `groups/std_mean`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

Metrics = dict[str, float]
FilterFn = Callable[..., tuple[torch.Tensor, Metrics]]


def _groups(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """(N,) → (B, G) float32, validating N % G == 0."""
    if scores.dim() != 1:
        raise ValueError(f"scores must be 1-D (N,), got shape {tuple(scores.shape)}")
    if group_size < 1 or scores.shape[0] % group_size != 0:
        raise ValueError(f"group_size={group_size} must be >= 1 and divide N={scores.shape[0]}")
    return scores.float().view(-1, group_size)


def _options(name: str, opts: dict[str, Any], allowed: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(opts) - set(allowed))
    if unknown:
        raise ValueError(f"filter {name!r} got unknown options {unknown}; it takes {sorted(allowed)}")
    return {**allowed, **opts}


def group_std(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """Population std (no Bessel correction, so a group of one gives 0): (N,) scores → (B,)."""
    return _groups(scores, group_size).std(-1, correction=0)


def expand_group_mask(keep: torch.Tensor, group_size: int) -> torch.Tensor:
    """(B,) bool group mask → (N,) bool row mask, prompt-major (row i follows group i // group_size)."""
    if keep.dim() != 1 or group_size < 1:
        raise ValueError(f"keep must be 1-D (B,) and group_size >= 1, got {tuple(keep.shape)}, {group_size}")
    return keep.bool().repeat_interleave(group_size)


def _metrics(groups: torch.Tensor, keep: torch.Tensor) -> Metrics:
    zero_std = groups.amax(-1) == groups.amin(-1)
    return {
        "groups/zero_std_frac": zero_std.float().mean().item(),
        "groups/kept": float(keep.sum().item()),
        "groups/kept_frac": keep.float().mean().item(),
        "groups/std_mean": groups.std(-1, correction=0).mean().item(),
    }


def none(scores: torch.Tensor, group_size: int, **opts: Any) -> tuple[torch.Tensor, Metrics]:
    """Keep all groups: (N,) scores → ((B,) all True, metrics). Accepts `min_std` and ignores it."""
    _options("none", opts, {"min_std": 0.0})
    groups = _groups(scores, group_size)
    keep = torch.ones(groups.shape[0], dtype=torch.bool)
    return keep, _metrics(groups, keep)


def dynamic(scores: torch.Tensor, group_size: int, **opts: Any) -> tuple[torch.Tensor, Metrics]:
    """DAPO dynamic sampling: (N,) scores → ((B,) True where the group's scores differ, metrics)."""
    min_std = float(_options("dynamic", opts, {"min_std": 0.0})["min_std"])
    if min_std < 0:
        raise ValueError(f"min_std must be >= 0, got {min_std}")
    groups = _groups(scores, group_size)
    if group_size < 2:
        raise ValueError("filter 'dynamic' needs group_size >= 2: a group of one always has equal scores")
    # max != min rather than std > 0: the std of equal floats such as 0.1 can round to a tiny non-zero
    keep = (groups.amax(-1) != groups.amin(-1)) & (groups.std(-1, correction=0) > min_std)
    return keep, _metrics(groups, keep)


FILTERS: dict[str, FilterFn] = {"none": none, "dynamic": dynamic}
