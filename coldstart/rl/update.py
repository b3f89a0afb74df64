"""The update phase of an RL step: μ = rl.epochs passes of PPO-clip over minibatches, each optimizer step
accumulated over micro-batches (coldstart.algorithms.losses.policy_loss; the value loss with a value head).

- The old log-probs are the sampler's (the distribution actually sampled from); the mean |trainer − sampler|
  gap is logged as `logprob_gap`.
- Rows whose advantage is exactly 0 on every token skip the forward/backward pass when no KL, entropy or
  value term needs them; copies of a row (same prompt, completion, mask, advantages) train once, counted as
  often as they occur (`rollout_utils.unique_rows`). The loss normalisers are those of the whole (global)
  minibatch, so neither changes the gradient (`rows/skipped`, `rows/unique`).
- An optimizer step whose loss or gradient is NaN / inf on any rank is skipped (`optimizer_steps_skipped`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..algorithms import clip_range, kl_penalty, policy_loss, value_loss
from ..infra.distributed import current
from ..rollout_utils import select_rows, unique_rows
from ..types import Rollouts
from .logprobs import sequence_logprobs
from .records import UpdateSettings


@dataclass
class _Sums:
    """Share-weighted metric sums of one update, and its counters."""

    metrics: dict[str, float] = field(default_factory=dict)
    weight: float = 0.0  # Σ shares
    grad_norm: float = 0.0
    steps: int = 0  # optimizer steps taken
    skipped: int = 0  # optimizer steps skipped (non-finite)
    unique: int = 0  # rows that went through forward/backward, over all epochs

    def add(self, metrics: dict[str, float], share: float) -> None:
        for k, v in metrics.items():
            self.metrics[k] = self.metrics.get(k, 0.0) + v * share
        self.weight += share


def update(policy, ref, value_head, opt, ro: Rollouts, adv, returns, old_values, s: UpdateSettings,
           weight: float = 1.0) -> dict[str, float]:
    """μ = s.epochs passes of PPO-clip; one optimizer step per minibatch of `s.minibatch_size` rows,
    each accumulated over micro-batches of `s.micro_batch_size` rows. Returns metrics averaged by weight.

    ro holds this rank's N rows; adv, returns, old_values are (N, T). Under several processes the
    minibatch size and the loss normalisers are global (summed over ranks) and every rank makes the same
    number of passes; `weight` 0 makes this rank's passes count for nothing (it had no rows to train on).
    """
    dist = current()
    N = ro.completion_mask.shape[0]
    mask = ro.completion_mask & ~ro.truncated[:, None] if s.overlong_filter else ro.completion_mask
    needs_all = s.kl_coef != 0 or s.entropy_coef != 0 or value_head is not None
    active = mask.any(1) & (needs_all | ((adv * mask).abs().sum(1) > 0))
    if s.minibatch_size:
        mb_size = s.minibatch_size // dist.world
        dist.shard(s.minibatch_size, "rl.minibatch_size")  # checks that it divides over the processes
    else:
        mb_size = N
    n_minibatches = int(dist.max(-(-N // max(mb_size, 1))))
    params = [p for g in opt.param_groups for p in g["params"]]
    sums = _Sums()
    gen = torch.Generator().manual_seed(int(ro.completion_ids.sum()) % (1 << 31))
    for _ in range(s.epochs):
        order = torch.randperm(N, generator=gen) if mb_size < N else torch.arange(N)
        for j in range(n_minibatches):
            mb = order[j * mb_size : (j + 1) * mb_size]
            finite = _minibatch(policy, ref, value_head, ro, mb, active, mask, adv, returns, old_values, s, weight,
                                sums)
            if finite is not None:
                _optimizer_step(opt, params, value_head, s.grad_clip, sums, finite)
    out = {k: v / sums.weight for k, v in sums.metrics.items()} if sums.weight else {}
    if sums.steps:
        out["grad_norm"] = sums.grad_norm / sums.steps
    trained = int(active.sum()) if weight else 0
    out.update({"rows/skipped": N - trained, "rows/trained": trained,
                "rows/unique": sums.unique / max(s.epochs, 1), "optimizer_steps": sums.steps,
                "optimizer_steps_skipped": sums.skipped})
    return out


def _minibatch(policy, ref, value_head, ro, mb, active, mask, adv, returns, old_values, s: UpdateSettings,
               weight: float, sums: _Sums) -> bool | None:
    """Forward + backward of minibatch `mb` ((M,) row indices) in micro-batches, gradients accumulated.
    Returns whether its loss was finite everywhere, or None when no rank had anything to train."""
    dist = current()
    # Normalisers of the whole (global) minibatch, so skipped rows leave the gradient unchanged.
    total_tok = dist.sum(float(mask[mb].sum()) * weight)
    nonempty = s.aggregation.normaliser == "nonempty_sequences"  # rows overlong_filter emptied do not count
    total_seq = dist.sum((float(mask[mb].any(-1).sum()) if nonempty else len(mb)) * weight)
    mb = mb[active[mb]]
    counts = torch.ones(len(mb), dtype=torch.long)
    if value_head is None and len(mb):  # copies of a row train once, counted as often as they occur
        mb, counts = unique_rows(ro, mb, mask, adv)
    sums.unique += len(mb)
    micro = s.micro_batch_size
    n_micro = int(dist.max(-(-len(mb) // micro) if weight else 0))
    if n_micro == 0 or total_tok == 0:
        return None
    finite = True
    for i in range(n_micro):
        rows, c, w = mb[i * micro : (i + 1) * micro], counts[i * micro : (i + 1) * micro], weight
        if len(rows) == 0:  # this rank ran out of rows: a zero-weight pass keeps the ranks in step
            rows, c, w = torch.arange(1), torch.ones(1, dtype=torch.long), 0.0
        tokens = float((mask[rows].sum(1) * c.to(mask.device)).sum())
        seqs = float((c.to(mask.device) * mask[rows].any(-1)).sum()) if nonempty else float(c.sum())
        unit = tokens / total_tok if s.aggregation.normaliser == "tokens" else seqs / max(total_seq, 1.0)
        share = unit * w
        sub = select_rows(ro, rows)  # trimmed to its widest row: slice the (N, T) tensors alike
        T = sub.completion_ids.shape[1]
        cut = [None if x is None else x[rows][:, :T] for x in (mask, adv, returns, old_values)]
        # the engine averages gradients over ranks: scale by the process count to sum them
        with dist.no_sync(policy, sync=i == n_micro - 1):
            metrics, ok = micro_step(policy, ref, value_head, sub, *cut, s, share * dist.world,
                                     None if value_head is not None else c.to(sub.logprobs.device))
        finite &= ok
        sums.add(metrics, share)
    return finite


def _optimizer_step(opt, params, value_head, grad_clip: float, sums: _Sums, finite: bool) -> None:
    """Clip and step (skipped on every rank when any rank's loss or gradient was not finite), then zero."""
    dist = current()
    if value_head is not None:
        dist.all_reduce_grads(value_head.parameters())
    norm = float(dist.clip_grad_norm_(params, grad_clip))
    if dist.max(0.0 if finite and math.isfinite(norm) else 1.0) == 0:
        sums.grad_norm += norm
        sums.steps += 1
        opt.step()
    else:
        sums.skipped += 1
    opt.zero_grad(set_to_none=True)


def micro_step(policy, ref, value_head, sub: Rollouts, m, adv, returns, old_values, s: UpdateSettings,
               share: float, counts: torch.Tensor | None = None) -> tuple[dict[str, float], bool]:
    """Forward + backward of one micro-batch (n rows; m, adv, returns, old_values (n, T)), its loss scaled by
    its share of the minibatch; row i counts counts[i] times (it stands for that many identical rows).
    Returns its metrics and whether its loss was finite (a NaN / inf loss still goes backward, so the ranks
    stay in step; the caller skips the optimizer step)."""
    logp, ent, values = sequence_logprobs(policy, sub, s.temperature, value_head, s.entropy_coef != 0)
    ref_logp = None
    if ref is not None and not s.kl_in_reward:
        with torch.no_grad():
            ref_logp = sequence_logprobs(ref, sub, s.temperature)[0]
    eps = ((s.eps_low, s.eps_high) if s.prefix_eps is None else  # Prefix-RFT: own range on prefix tokens
           clip_range(sub.prefix_mask, s.eps_low, s.eps_high, *s.prefix_eps))
    loss, metrics = policy_loss(
        logp, sub.logprobs, adv, m, eps_low=eps[0], eps_high=eps[1], dual_clip=s.dual_clip,
        agg=s.loss_agg, max_tokens=s.max_tokens, ref_logp=ref_logp,
        kl_coef=s.kl_coef if ref_logp is not None else 0.0, kl_type=s.kl_type, entropy=ent,
        entropy_coef=s.entropy_coef, weights=counts)
    if value_head is not None:
        vloss, vmetrics = value_loss(values, old_values, returns, m)
        loss = loss + s.vf_coef * vloss
        metrics.update(vmetrics)
    finite = bool(torch.isfinite(loss))
    (loss * share).backward()
    sampled = sampled_token_metrics(logp.detach(), sub.logprobs, m if counts is None else m * counts[:, None])
    if not finite:
        metrics = {k: 0.0 for k in metrics}
    return {**sampled, **metrics}, finite  # an exact entropy (entropy_coef ≠ 0) wins over the estimate


def sampled_token_metrics(logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Over masked tokens of (N, T) trainer and sampler log-probs: the entropy estimate E[−log π(sampled
    token)] = H(π) at the sampling temperature, and the mean |trainer − sampler| log-prob gap."""
    m = mask.float()
    n = m.sum().clamp(min=1)
    return {"entropy": float((-logp * m).sum() / n), "logprob_gap": float(((logp - sampler_logp).abs() * m).sum() / n)}


def passive_metrics(policy, ref, ro: Rollouts, s: UpdateSettings) -> dict[str, float | None]:
    """Entropy, KL and sampler/trainer gap from a no-grad forward on up to one micro-batch, for steps
    that trained nothing (so every metrics row has the same keys)."""
    sub = select_rows(ro, torch.arange(min(s.micro_batch_size, ro.completion_mask.shape[0])))
    m = sub.completion_mask.float()
    with torch.no_grad():
        logp = sequence_logprobs(policy, sub, s.temperature)[0]
        kl = None
        if ref is not None:
            kl = float((kl_penalty(logp, sequence_logprobs(ref, sub, s.temperature)[0], s.kl_type) * m).sum()
                       / m.sum().clamp(min=1))
    return {**sampled_token_metrics(logp, sub.logprobs, m), "kl": kl, "clip/low_frac": 0.0, "clip/high_frac": 0.0}
