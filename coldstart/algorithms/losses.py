"""Policy and value losses on per-token tensors (N, T), and the log-prob / entropy helpers they need.

`policy_loss` is the PPO clipped surrogate with the knobs of docs/algorithms.md:

    ρ = exp(logπ − logπ_old)                      (log-ratio clamped to ±20 before exp, as verl does)
    ℓ = max(−A·ρ, −A·clip(ρ, 1−ε_low, 1+ε_high))  (PPO; ε_high > ε_low is DAPO's clip-higher, §0.3)
    ℓ = min(ℓ, −c·A) where A < 0                  (dual-clip, Ye et al. 2020, c > 1; verl's form)
    ℓ += β·KL(π‖π_ref)  −  α·H(π)                 (KL in the loss, §0.1; optional entropy bonus)

then aggregated over tokens by one of `AGGREGATIONS` (all are linear, so aggregating the sum equals
summing the aggregated parts):
- `token_mean`: Σ_{i,t} ℓ / Σ_i |o_i| (DAPO §0.3).
- `seq_mean_token_mean`: mean over sequences of each sequence's token mean (GRPO §0.1). Rows with no
  masked token are left out of the sequence mean instead of producing NaN.
- `constant`: Σ_{i,t} ℓ / (max_tokens · N) (Dr. GRPO §0.2; N counts every row, empty or not).

KL estimators (`kl_penalty`, with δ = logπ_ref − logπ): `k1` = −δ = logπ − logπ_ref; `k2` = δ²/2;
`k3` = exp(δ) − δ − 1 (DeepSeekMath's unbiased, non-negative estimator; clamped to [−10, 10] as verl's
`low_var_kl` does, so one runaway token cannot dominate the loss).

Metrics are masked-token means whatever the aggregation: `clip/low_frac` (A<0 and ρ<1−ε_low),
`clip/high_frac` (A>0 and ρ>1+ε_high), `clip/dual_frac` (A<0 and ρ>c), `ratio/mean`, `ratio/max`, `kl`
(whenever ref_logp is given), `entropy` (when given), `loss/policy` (the aggregated surrogate alone).
"""

from __future__ import annotations

import torch

from coldstart.algorithms.registry import Aggregation

Metrics = dict[str, float]


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N, T), (N, T) → scalar mean over masked entries (0 when nothing is masked in)."""
    return (x * mask).sum() / mask.sum().clamp_min(1)


def _row_weighted(mask: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """(N, T) mask times (N,) row weights (each row counted `weights[i]` times); the mask when None."""
    return mask if weights is None else mask * weights[:, None].to(mask.dtype)


def token_mean(loss: torch.Tensor, mask: torch.Tensor, *, max_tokens: int | None = None,
               weights: torch.Tensor | None = None) -> torch.Tensor:
    """(N, T) per-token loss → scalar: sum over masked tokens / number of masked tokens (DAPO). `weights`
    (N,) counts row i weights[i] times, as if it were repeated (duplicate rows computed once)."""
    return _masked_mean(loss, _row_weighted(mask, weights))


def seq_mean_token_mean(
    loss: torch.Tensor, mask: torch.Tensor, *, max_tokens: int | None = None, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """(N, T) per-token loss → scalar: mean over non-empty rows of each row's masked token mean (GRPO);
    row i counted weights[i] times."""
    lengths = mask.sum(-1)
    per_seq = (loss * mask).sum(-1) / lengths.clamp_min(1)
    nonempty = _row_weighted((lengths > 0).float()[:, None], weights)[:, 0]
    return (per_seq * nonempty).sum() / nonempty.sum().clamp_min(1)


def constant(loss: torch.Tensor, mask: torch.Tensor, *, max_tokens: int | None = None,
             weights: torch.Tensor | None = None) -> torch.Tensor:
    """(N, T) per-token loss → scalar: masked token sum / (max_tokens × N) (Dr. GRPO); row i counted
    weights[i] times (N = the weights' sum)."""
    if max_tokens is None or max_tokens < 1:
        raise ValueError(
            f"aggregation 'constant' needs max_tokens >= 1 (the generation budget), got {max_tokens}"
        )
    rows = loss.shape[0] if weights is None else weights.sum()
    return (loss * _row_weighted(mask, weights)).sum() / (max_tokens * rows)


# Each normalises by the minibatch's masked tokens or by its sequences (registry.Aggregation.normaliser).
AGGREGATIONS: dict[str, Aggregation] = {
    "token_mean": Aggregation(token_mean, "tokens"),
    "seq_mean_token_mean": Aggregation(seq_mean_token_mean, "nonempty_sequences"),  # as policy_loss, verl
    "constant": Aggregation(constant, "sequences"),
}


def _aggregate(loss: torch.Tensor, mask: torch.Tensor, agg: str, max_tokens: int | None,
               weights: torch.Tensor | None = None) -> torch.Tensor:
    if agg not in AGGREGATIONS:
        raise ValueError(f"unknown agg {agg!r}; choose one of {sorted(AGGREGATIONS)}")
    return AGGREGATIONS[agg](loss, mask, max_tokens=max_tokens, weights=weights)


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    """Per-token KL(π‖π_ref) estimate: logp, ref_logp (N, T) → (N, T), not masked. kind: k1 | k2 | k3."""
    if logp.shape != ref_logp.shape:
        raise ValueError(f"logp {tuple(logp.shape)} and ref_logp {tuple(ref_logp.shape)} differ in shape")
    delta = ref_logp - logp
    if kind == "k1":
        return -delta
    if kind == "k2":
        return 0.5 * delta.square()
    if kind == "k3":
        delta = delta.clamp(-20.0, 20.0)  # keeps exp finite; k3 is clamped to 10 below anyway
        return (torch.exp(delta) - delta - 1.0).clamp(-10.0, 10.0)
    raise ValueError(f"unknown kl kind {kind!r}; choose k1, k2 or k3")


def _check_same_shape(**tensors: torch.Tensor | None) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items() if t is not None}
    if len(set(shapes.values())) > 1 or any(len(s) != 2 for s in shapes.values()):
        raise ValueError(f"per-token inputs must all be (N, T), got {shapes}")


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    adv: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps_low: float | torch.Tensor = 0.2,
    eps_high: float | torch.Tensor = 0.2,
    dual_clip: float | None = None,
    agg: str = "token_mean",
    max_tokens: int | None = None,
    ref_logp: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    kl_type: str = "k3",
    entropy: torch.Tensor | None = None,
    entropy_coef: float = 0.0,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """PPO-clip surrogate (+ KL, − entropy) on (N, T) logp, old_logp, adv, mask (and ref_logp, entropy)
    → (scalar loss to minimise, metrics). Gradients flow through logp and entropy only. `weights` (N,)
    counts row i weights[i] times in the loss and the metrics, exactly as if it were repeated.

    eps_low / eps_high may be (N, T) tensors: a clip range per token (Prefix-RFT's separate off-policy
    range on demonstration-prefix tokens, coldstart.algorithms.prefix.clip_range)."""
    eps_tensors = {k: v for k, v in (("eps_low", eps_low), ("eps_high", eps_high)) if isinstance(v, torch.Tensor)}
    _check_same_shape(logp=logp, old_logp=old_logp, adv=adv, mask=mask, ref_logp=ref_logp, entropy=entropy,
                      **eps_tensors)
    if any(float(torch.as_tensor(e).min()) < 0 for e in (eps_low, eps_high)):
        raise ValueError(f"eps_low={eps_low} and eps_high={eps_high} must be >= 0")
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1 (verl's clip_ratio_c, usually 3), got {dual_clip}")
    if kl_coef != 0.0 and ref_logp is None:
        raise ValueError(f"kl_coef={kl_coef} needs ref_logp")
    if entropy_coef != 0.0 and entropy is None:
        raise ValueError(f"entropy_coef={entropy_coef} needs entropy (N, T)")
    mask = mask.float()
    adv = adv.detach()
    ratio = torch.exp((logp - old_logp.detach()).clamp(-20.0, 20.0))
    pg = torch.maximum(-adv * ratio, -adv * ratio.clamp(1.0 - eps_low, 1.0 + eps_high))
    if dual_clip is not None:
        pg = torch.where(adv < 0, torch.minimum(pg, -adv * dual_clip), pg)
    total = pg
    kl = None if ref_logp is None else kl_penalty(logp, ref_logp.detach(), kl_type)
    if kl is not None and kl_coef != 0.0:
        total = total + kl_coef * kl
    if entropy is not None and entropy_coef != 0.0:
        total = total - entropy_coef * entropy
    loss = _aggregate(total, mask, agg, max_tokens, weights)

    with torch.no_grad():
        r = ratio.detach()
        wm = _row_weighted(mask, weights)  # token means over repeated rows
        metrics = {
            "loss/policy": _aggregate(pg.detach(), mask, agg, max_tokens, weights).item(),
            "clip/low_frac": _masked_mean(((adv < 0) & (r < 1.0 - eps_low)).float(), wm).item(),
            "clip/high_frac": _masked_mean(((adv > 0) & (r > 1.0 + eps_high)).float(), wm).item(),
            "ratio/mean": _masked_mean(r, wm).item(),
            "ratio/max": (r * mask).max().item() if mask.any() else 0.0,
        }
        if dual_clip is not None:
            metrics["clip/dual_frac"] = _masked_mean(((adv < 0) & (r > dual_clip)).float(), wm).item()
        if kl is not None:
            metrics["kl"] = _masked_mean(kl.detach(), wm).item()
        if entropy is not None:
            metrics["entropy"] = _masked_mean(entropy.detach(), wm).item()
    return loss, metrics


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip: float | None = 0.2,
    agg: str = "token_mean",
    max_tokens: int | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """Clipped value loss (PPO / verl `compute_value_loss`): values, old_values, returns, mask (N, T) →
    (scalar ½·agg(max((V−R)², (clip(V, V_old±clip)−R)²)), metrics). `clip=None` disables clipping."""
    _check_same_shape(values=values, old_values=old_values, returns=returns, mask=mask)
    mask = mask.float()
    returns = returns.detach()
    err = (values - returns).square()
    if clip is not None:
        old = old_values.detach()
        clipped = old + (values - old).clamp(-clip, clip)
        err_clipped = (clipped - returns).square()
        per_token = torch.maximum(err, err_clipped)
        clip_frac = _masked_mean((err_clipped > err).float(), mask).item()
    else:
        per_token, clip_frac = err, 0.0
    loss = 0.5 * _aggregate(per_token, mask, agg, max_tokens)
    metrics = {
        "loss/value": loss.item(),
        "value/clip_frac": clip_frac,
        "value/mean": _masked_mean(values.detach(), mask).item(),
        "value/returns_mean": _masked_mean(returns, mask).item(),
    }
    return loss, metrics


def token_logprobs(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log π(ids | ·): logits (N, T, V) aligned with ids (N, T) long → (N, T) float32.

    Computed one row at a time in float32 (bf16 log-softmax loses ~2 digits), so the extra memory is one
    (T, V) float32 block instead of a full (N, T, V) log-softmax. Divide logits by the sampling
    temperature first when comparing with the sampler's logprobs."""
    if logits.dim() != 3 or ids.shape != logits.shape[:2]:
        raise ValueError(
            f"logits must be (N, T, V) and ids (N, T); got {tuple(logits.shape)}, {tuple(ids.shape)}"
        )
    rows = [
        torch.log_softmax(row.float(), dim=-1).gather(-1, row_ids[:, None]).squeeze(-1)
        for row, row_ids in zip(logits, ids, strict=True)
    ]
    return torch.stack(rows) if rows else logits.new_zeros(ids.shape, dtype=torch.float32)


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the next-token distribution: logits (N, T, V) → (N, T) float32 nats, row by row in
    float32 (`logsumexp(z) − Σ softmax(z)·z`, as verl's `entropy_from_logits`)."""
    if logits.dim() != 3:
        raise ValueError(f"logits must be (N, T, V), got {tuple(logits.shape)}")
    rows = []
    for row in logits:
        z = row.float()
        p = torch.softmax(z, -1)
        # where(): a -inf logit (masked vocabulary) has p = 0 and must add 0, not 0·(−inf) = NaN
        rows.append(torch.logsumexp(z, -1) - (p * torch.where(p > 0, z, 0.0)).sum(-1))
    return torch.stack(rows) if rows else logits.new_zeros(logits.shape[:2], dtype=torch.float32)
