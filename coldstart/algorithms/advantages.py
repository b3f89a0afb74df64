"""Advantage estimators: scores of N = B×G rollouts → a per-token advantage (N, T).

Every estimator in `ADVANTAGES` has one signature, so the RL loop never special-cases a name:

    fn(scores (N,), mask (N, T), group_size, *, token_rewards=None, values=None,
       gamma=1.0, lam=0.95, eps=1e-6) -> (advantages (N, T), metrics)

Rows are grouped prompt-major: row i belongs to group i // group_size. The advantage is 0 outside `mask`.

- `grpo` (docs/algorithms.md §0.1, DeepSeekMath): `(r_i − mean(r)) / (std(r) + eps)` within each group, the
  same value on every token. `std` is the *unbiased* sample std (Bessel's correction, `torch.std`), as in
  DeepSeek's and TRL's implementations; verl uses the same. A group whose scores are all equal gets 0.
- `dr_grpo` (§0.2, Dr. GRPO): `r_i − mean(r)`, no std division. Pair it with the `constant` loss
  aggregation of losses.py to also drop the 1/|o_i| length normaliser.
- `rloo` (Ahmadian et al. 2024): leave-one-out baseline `r_i − mean_{j≠i} r_j = G/(G−1)·(r_i − mean(r))`.
- `reinforce_pp` (REINFORCE++, Hu 2025; verl's `reinforce_plus_plus`): token rewards = the score on the
  last valid token + `token_rewards` (e.g. −β·KL per token), discounted return-to-go with `gamma`, then
  whitened over all masked tokens of the batch (no group baseline).
- `reinforce_pp_baseline` (verl's `reinforce_plus_plus_baseline`, REINFORCE++ with a group baseline): the
  score minus its group's mean, on every token, then whitened over all masked tokens of the batch, as verl's
  `compute_rf_baseline_outcome_advantage` does (verl's eps is 1e-8; we reuse `eps`).
- `gae` (§23 ReFT, PPO): the same token rewards, then GAE(γ, λ) against `values`, then global whitening,
  as ReFT does. The PPO loop also needs the returns for the value loss: it calls the public `gae()` helper.

Whitening is `(x − mean) / sqrt(var + eps)` with the unbiased variance over masked tokens (verl's
`masked_whiten`; verl fixes its eps at 1e-8, we reuse `eps`). The group estimators take no per-token
inputs and raise if given some, so a KL-in-reward setting is never dropped silently (put KL in the loss).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from coldstart.algorithms.registry import Estimator

Metrics = dict[str, float]
AdvantageFn = Callable[..., tuple[torch.Tensor, Metrics]]


def _check(scores: torch.Tensor, mask: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate shapes; return (scores (N,) float32, mask (N, T) float32)."""
    if scores.dim() != 1:
        raise ValueError(f"scores must be 1-D (N,), got shape {tuple(scores.shape)}")
    if mask.dim() != 2 or mask.shape[0] != scores.shape[0]:
        raise ValueError(f"mask must be (N, T) with N={scores.shape[0]}, got shape {tuple(mask.shape)}")
    if group_size < 1 or scores.shape[0] % group_size != 0:
        raise ValueError(f"group_size={group_size} must be >= 1 and divide N={scores.shape[0]}")
    if not torch.isfinite(scores).all():
        raise ValueError("scores contain NaN or inf")
    return scores.float(), mask.float()


def _no_token_inputs(name: str, token_rewards: torch.Tensor | None, values: torch.Tensor | None) -> None:
    if token_rewards is not None or values is not None:
        raise ValueError(
            f"advantage {name!r} uses one score per sequence; token_rewards/values must be None "
            "(put the KL penalty in the loss, or use reinforce_pp / gae)"
        )


def zero_std_groups(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """(N,) scores → (B,) bool: True where every score of the group is equal (no learning signal)."""
    groups = scores.view(-1, group_size)
    return groups.amax(-1) == groups.amin(-1)


def _metrics(adv: torch.Tensor, mask: torch.Tensor, scores: torch.Tensor, group_size: int) -> Metrics:
    """Masked-token statistics of the advantage, plus the share of groups without signal."""
    m = mask.bool()
    vals = adv[m] if m.any() else adv.new_zeros(1)
    return {
        "adv/mean": vals.mean().item(),
        "adv/abs_mean": vals.abs().mean().item(),
        "adv/max": vals.max().item(),
        "adv/min": vals.min().item(),
        "groups/zero_std_frac": zero_std_groups(scores, group_size).float().mean().item(),
        "rows/empty": float((mask.sum(-1) == 0).sum().item()),
    }


def _broadcast(seq_adv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N,) per-sequence advantage → (N, T), zero outside mask."""
    return seq_adv[:, None] * mask


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(N, T) → (N, T): `(x − mean) / sqrt(var + eps)` over masked tokens (unbiased var), 0 outside mask."""
    n = mask.sum()
    if n < 2:
        raise ValueError(f"whitening needs at least 2 masked tokens, got {int(n.item())}")
    mean = (x * mask).sum() / n
    var = (((x - mean) ** 2) * mask).sum() / (n - 1)
    return (x - mean) * torch.rsqrt(var + eps) * mask


def grpo(
    scores: torch.Tensor,
    mask: torch.Tensor,
    group_size: int,
    *,
    token_rewards: torch.Tensor | None = None,
    values: torch.Tensor | None = None,
    gamma: float = 1.0,
    lam: float = 0.95,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, Metrics]:
    """GRPO (§0.1): (N,) scores → (N, T) `(r − mean_group) / (std_group + eps)`, unbiased std.

    A group whose rewards are all equal gets exactly 0: its float32 mean can be one ulp off a value such as
    0.9, and that error divided by std + eps (~1e-6) gave every row an advantage of about ±0.06.
    """
    _no_token_inputs("grpo", token_rewards, values)
    scores, mask = _check(scores, mask, group_size)
    if group_size < 2:
        raise ValueError("grpo needs group_size >= 2 (the std of one sample is undefined)")
    groups = scores.view(-1, group_size)
    seq = _centred(groups) / (groups.std(-1, keepdim=True) + eps)
    adv = _broadcast(seq.view(-1), mask)
    return adv, _metrics(adv, mask, scores, group_size)


def dr_grpo(
    scores: torch.Tensor,
    mask: torch.Tensor,
    group_size: int,
    *,
    token_rewards: torch.Tensor | None = None,
    values: torch.Tensor | None = None,
    gamma: float = 1.0,
    lam: float = 0.95,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, Metrics]:
    """Dr. GRPO (§0.2): (N,) scores → (N, T) `r − mean_group`."""
    _no_token_inputs("dr_grpo", token_rewards, values)
    scores, mask = _check(scores, mask, group_size)
    groups = scores.view(-1, group_size)
    adv = _broadcast(_centred(groups).view(-1), mask)
    return adv, _metrics(adv, mask, scores, group_size)


def _centred(groups: torch.Tensor) -> torch.Tensor:
    """(B, G) → (B, G) `r − mean_group`, exactly 0 in a group whose rewards are all equal (no rounding)."""
    flat = (groups == groups[:, :1]).all(-1, keepdim=True)
    return torch.where(flat, torch.zeros_like(groups), groups - groups.mean(-1, keepdim=True))


def rloo(
    scores: torch.Tensor,
    mask: torch.Tensor,
    group_size: int,
    *,
    token_rewards: torch.Tensor | None = None,
    values: torch.Tensor | None = None,
    gamma: float = 1.0,
    lam: float = 0.95,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, Metrics]:
    """RLOO: (N,) scores → (N, T) `r_i − mean_{j≠i} r_j` within each group."""
    _no_token_inputs("rloo", token_rewards, values)
    scores, mask = _check(scores, mask, group_size)
    if group_size < 2:
        raise ValueError("rloo needs group_size >= 2 (a leave-one-out baseline needs another sample)")
    groups = scores.view(-1, group_size)
    baseline = (groups.sum(-1, keepdim=True) - groups) / (group_size - 1)
    adv = _broadcast((groups - baseline).view(-1), mask)
    return adv, _metrics(adv, mask, scores, group_size)


def outcome_token_rewards(
    scores: torch.Tensor, mask: torch.Tensor, token_rewards: torch.Tensor | None = None
) -> torch.Tensor:
    """(N,) scores, (N, T) mask → (N, T) rewards: the score on each row's last masked token, plus
    `token_rewards` (e.g. −β·(logπ − logπ_ref), ReFT §23) on masked tokens. Rows with no masked token
    get no reward (counted as `rows/empty` by the estimators)."""
    mask = mask.float()
    if mask.dim() != 2 or scores.shape != mask.shape[:1]:
        raise ValueError(
            f"scores (N,) and mask (N, T) disagree: {tuple(scores.shape)} vs {tuple(mask.shape)}"
        )
    T = mask.shape[1]
    # index of the last True per row; the mask may have holes (e.g. masked tool output), so not sum-1
    last = T - 1 - mask.flip(-1).argmax(-1)
    rewards = torch.zeros_like(mask)
    rows = torch.arange(mask.shape[0])
    rewards[rows, last] = scores.float() * (mask.sum(-1) > 0).float()
    if token_rewards is not None:
        if token_rewards.shape != mask.shape:
            raise ValueError(
                f"token_rewards must be (N, T)={tuple(mask.shape)}, got {tuple(token_rewards.shape)}"
            )
        rewards = rewards + token_rewards.float() * mask
    return rewards


def returns_to_go(rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """(N, T) rewards → (N, T) discounted return `G_t = r_t + γ·G_{t+1}`, 0 outside mask.

    Unmasked positions carry the running return through unchanged (verl's reinforce_plus_plus resets it
    at unmasked tokens; with right padding and zero rewards there the two agree)."""
    mask = mask.float()
    out = torch.zeros_like(rewards, dtype=torch.float32)
    running = torch.zeros(rewards.shape[0])
    for t in reversed(range(rewards.shape[1])):
        m = mask[:, t]
        running = m * (rewards[:, t].float() + gamma * running) + (1 - m) * running
        out[:, t] = running * m
    return out


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016; ReFT §23 uses γ=1, λ=0.95).

    rewards, values, mask: (N, T) → (advantages (N, T), returns (N, T)), both raw (not whitened), 0 outside
    mask. `δ_t = r_t + γ·V_{t'} − V_t` and `A_t = δ_t + γλ·A_{t'}` where t' is the next masked token
    (V = 0 after the last one); masked-out tokens are skipped, as in verl's `compute_gae_advantage_return`.
    returns = advantages + values: the value-loss target."""
    if not (rewards.shape == values.shape == mask.shape) or mask.dim() != 2:
        raise ValueError(
            f"rewards, values, mask must share one (N, T) shape, got {tuple(rewards.shape)}, "
            f"{tuple(values.shape)}, {tuple(mask.shape)}"
        )
    mask = mask.float()
    values = values.detach().float()
    rewards = rewards.float()
    next_value = torch.zeros(mask.shape[0])
    last_gae = torch.zeros(mask.shape[0])
    adv = torch.zeros_like(values)
    for t in reversed(range(mask.shape[1])):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last_gae = m * (delta + gamma * lam * last_gae) + (1 - m) * last_gae
        next_value = m * values[:, t] + (1 - m) * next_value
        adv[:, t] = last_gae * m
    return adv, (adv + values) * mask


def reinforce_pp(
    scores: torch.Tensor,
    mask: torch.Tensor,
    group_size: int,
    *,
    token_rewards: torch.Tensor | None = None,
    values: torch.Tensor | None = None,
    gamma: float = 1.0,
    lam: float = 0.95,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, Metrics]:
    """REINFORCE++: (N,) scores (+ (N, T) token_rewards) → (N, T) globally whitened return-to-go."""
    if values is not None:
        raise ValueError("reinforce_pp uses no value function; values must be None (use 'gae')")
    scores, mask = _check(scores, mask, group_size)
    rtg = returns_to_go(outcome_token_rewards(scores, mask, token_rewards), mask, gamma)
    adv = masked_whiten(rtg, mask, eps)
    return adv, _metrics(adv, mask, scores, group_size)


def reinforce_pp_baseline(
    scores: torch.Tensor,
    mask: torch.Tensor,
    group_size: int,
    *,
    token_rewards: torch.Tensor | None = None,
    values: torch.Tensor | None = None,
    gamma: float = 1.0,
    lam: float = 0.95,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, Metrics]:
    """REINFORCE++-baseline: (N,) scores → (N, T) group-centred scores, whitened over the batch's masked tokens."""
    _no_token_inputs("reinforce_pp_baseline", token_rewards, values)
    scores, mask = _check(scores, mask, group_size)
    groups = scores.view(-1, group_size)
    centred = (groups - groups.mean(-1, keepdim=True)).flatten()
    adv = masked_whiten(_broadcast(centred, mask), mask, eps)
    return adv, _metrics(adv, mask, scores, group_size)


def gae_advantage(
    scores: torch.Tensor,
    mask: torch.Tensor,
    group_size: int,
    *,
    token_rewards: torch.Tensor | None = None,
    values: torch.Tensor | None = None,
    gamma: float = 1.0,
    lam: float = 0.95,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, Metrics]:
    """PPO/ReFT (§23): (N,) scores, (N, T) values (+ token_rewards) → (N, T) globally whitened GAE.
    The loop gets the returns for the value loss from `gae(outcome_token_rewards(...), values, ...)`."""
    if values is None:
        raise ValueError("advantage 'gae' needs values (N, T) from a value head")
    scores, mask = _check(scores, mask, group_size)
    raw, _ = gae(outcome_token_rewards(scores, mask, token_rewards), values, mask, gamma, lam)
    adv = masked_whiten(raw, mask, eps)
    return adv, _metrics(adv, mask, scores, group_size)


# What each estimator needs and where it normalises (registry.Estimator); the loop asks these, never the name.
ADVANTAGES: dict[str, Estimator] = {
    "grpo": Estimator(grpo, std_normalised=True),
    "dr_grpo": Estimator(dr_grpo),
    "rloo": Estimator(rloo),
    "reinforce_pp": Estimator(reinforce_pp, batch_normalised=True, takes_token_rewards=True),
    "reinforce_pp_baseline": Estimator(reinforce_pp_baseline, batch_normalised=True),
    "gae": Estimator(gae_advantage, needs_values=True, batch_normalised=True, takes_token_rewards=True),
}
