"""Group filters: which of the B prompt groups of a batch of N = B×G rollouts go into the loss.

Every filter in `FILTERS` has one signature:

    fn(scores (N,), group_size, **opts) -> (groups (K,) long, metrics)

`groups` are the indices of the groups that go into the loss, in order; an index may repeat (DUPO
duplicates groups). Rows are grouped prompt-major (row i belongs to group i // group_size);
`expand_groups(groups, G)` turns them into row indices (K×G,). Unknown options raise ValueError naming them.

- `none`: keep every group.
- `dynamic` (DAPO dynamic sampling, docs/algorithms.md §0.3): keep the groups whose scores are not all equal
  (for 0/1 rewards: 0 < accuracy < 1), since their group-relative advantage is 0 and they only dilute the
  loss. Option `min_std` (default 0.0) drops also groups whose population std is ≤ min_std. DAPO then
  *resamples* new prompts until the batch is full; that refill belongs to the loop, not to this function.
  Deviation from verl's recipe: verl keeps groups of size 1; we raise, since every group of one is "all
  equal" and the filter would be meaningless.

- `dupo` (WebSailor's DUPO, docs/algorithms.md §1): drop the all-equal groups like `dynamic`, then fill the
  batch back to B groups by duplicating informative groups of the same batch, drawn uniformly with
  replacement (option `generator`, a torch.Generator, for reproducibility) instead of sampling new
  prompts. All groups flat: nothing to duplicate, K = 0.

`pad` (ReVisual-R1's PAD, §20) works on sequences after the advantage, not on groups: its entry keeps every
group (`none`) and selects rows with `pad_select` (`FILTERS["pad"].select`).

Metrics: `groups/zero_std_frac` (share of groups with all-equal scores), `groups/kept` (count),
`groups/kept_frac`, `groups/std_mean`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from coldstart.algorithms.registry import Filter

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


def expand_groups(groups: torch.Tensor, group_size: int) -> torch.Tensor:
    """(K,) group indices → (K×G,) row indices, each group's G rows in order."""
    return (groups.long()[:, None] * group_size + torch.arange(group_size)).flatten()


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
    """Keep all groups: (N,) scores → ((B,) indices 0..B-1, metrics). Accepts `min_std` and ignores it."""
    _options("none", opts, {"min_std": 0.0})
    groups = _groups(scores, group_size)
    keep = torch.ones(groups.shape[0], dtype=torch.bool)
    return keep.nonzero().flatten(), _metrics(groups, keep)


def dynamic(scores: torch.Tensor, group_size: int, **opts: Any) -> tuple[torch.Tensor, Metrics]:
    """DAPO dynamic sampling: (N,) scores → ((K,) indices of the groups whose scores differ, metrics)."""
    min_std = float(_options("dynamic", opts, {"min_std": 0.0})["min_std"])
    if min_std < 0:
        raise ValueError(f"min_std must be >= 0, got {min_std}")
    groups = _groups(scores, group_size)
    if group_size < 2:
        raise ValueError("filter 'dynamic' needs group_size >= 2: a group of one always has equal scores")
    keep = _informative(groups, min_std)
    return keep.nonzero().flatten(), _metrics(groups, keep)


def _informative(groups: torch.Tensor, min_std: float) -> torch.Tensor:
    # max != min rather than std > 0: the std of equal floats such as 0.1 can round to a tiny non-zero
    return (groups.amax(-1) != groups.amin(-1)) & (groups.std(-1, correction=0) > min_std)


def dupo(scores: torch.Tensor, group_size: int, **opts: Any) -> tuple[torch.Tensor, Metrics]:
    """DUPO: (N,) scores → ((B,) indices: the informative groups, then duplicates of them drawn uniformly)."""
    o = _options("dupo", opts, {"min_std": 0.0, "generator": None})
    groups = _groups(scores, group_size)
    if group_size < 2:
        raise ValueError("filter 'dupo' needs group_size >= 2: a group of one always has equal scores")
    keep = _informative(groups, float(o["min_std"]))
    kept = keep.nonzero().flatten()
    if len(kept) == 0:
        return kept, {**_metrics(groups, keep), "groups/duplicated": 0.0}
    extra = kept[torch.randint(len(kept), (groups.shape[0] - len(kept),), generator=o["generator"])]
    return torch.cat([kept, extra]), {**_metrics(groups, keep), "groups/duplicated": float(len(extra))}


def pad_select(adv: torch.Tensor, *, t_low: float = 1e-6, t_high: float = float("inf"), rho: float = 0.5,
               tau: float = 1.0, generator: torch.Generator | None = None) -> tuple[torch.Tensor, Metrics]:
    """PAD (§20): (N,) per-sequence advantages → ((K,) row indices, metrics).

    Keeps the effective set E = {i : t_low ≤ |Â_i| ≤ t_high}, then draws k' = min(round(ρ·N), |E|) rows of E
    without replacement with P(i) ∝ exp(|Â_i| / τ). The paper writes exp(Â_i / τ); whether it means |Â| is
    unconfirmed: we use |Â|, so that strongly negative examples are prioritised as much as strongly positive
    ones (with Â they would almost never be drawn). The loop anneals τ linearly from 1.0 to 0.3.
    """
    if adv.dim() != 1 or not 0 < rho <= 1 or tau <= 0 or t_low < 0 or t_high < t_low:
        raise ValueError(f"pad_select: need (N,) adv, 0 < rho <= 1, tau > 0, 0 <= t_low <= t_high; got "
                         f"shape {tuple(adv.shape)}, rho={rho}, tau={tau}, t_low={t_low}, t_high={t_high}")
    a = adv.detach().float().abs()
    effective = ((a >= t_low) & (a <= t_high)).nonzero().flatten()
    k = min(round(rho * adv.shape[0]), len(effective))
    metrics = {"pad/effective_frac": len(effective) / max(1, adv.shape[0]), "pad/kept": float(k), "pad/tau": tau}
    if k == 0:
        return effective[:0], metrics
    weights = torch.softmax(a[effective] / tau, 0)
    picked = torch.multinomial(weights, k, replacement=False, generator=generator)
    return effective[picked.sort().values], metrics


def pass_rate_window(rates: list[float], min_pass: float = 0.0, max_pass: float = 1.0) -> list[int]:
    """Indices of the prompts whose pass rate lies in [min_pass, max_pass] (a prompt filter before RL).

    >>> pass_rate_window([0.0, 0.25, 1.0, 0.5], min_pass=0.1, max_pass=0.99)
    [1, 3]
    """
    if not 0.0 <= min_pass <= max_pass <= 1.0:
        raise ValueError(f"rl.prefilter: need 0 <= min_pass <= max_pass <= 1, got {min_pass}, {max_pass}")
    return [i for i, r in enumerate(rates) if min_pass <= r <= max_pass]


# Where each filter acts and what it needs (registry.Filter); the loop asks these, never the name.
FILTERS: dict[str, Filter] = {
    "none": Filter(none),
    "dynamic": Filter(dynamic, refills=True),
    "dupo": Filter(dupo, needs_generator=True),
    "pad": Filter(none, acts_on="sequences", needs_generator=True, select=pad_select),
}
