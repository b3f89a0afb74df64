"""The update of an RL step (coldstart.rl's last stage): μ = rl.epochs passes of PPO-clip over minibatches of
the rollouts against their sampling log-probs, each minibatch one optimizer step accumulated over micro-batches.

Rows whose advantage is exactly 0 on every token skip the forward/backward pass when no KL, entropy or value
term needs them, and copies of a row (`rollout_utils.unique_rows`) go through it once, counted as often as
they occur; the loss keeps its whole-minibatch normalisers, so the gradient is the one of every row.
"""

from __future__ import annotations

import math

import torch

from .algorithms import clip_range, policy_loss, value_loss
from .config import RLConfig
from .distributed import current
from .logprobs import sequence_logprobs
from .rollout_utils import select_rows, unique_rows
from .types import Rollouts


def update(policy, ref, value_head, opt, ro: Rollouts, adv, returns, old_values, cfg: RLConfig,
           max_tokens: int, weight: float = 1.0) -> dict[str, float]:
    """μ = cfg.epochs passes of PPO-clip; one optimizer step per minibatch of `cfg.minibatch_size` rows,
    each accumulated over micro-batches of `cfg.micro_batch_size` rows. Returns metrics averaged by weight.

    ro holds this rank's N rows; adv, returns, old_values are (N, T). Under several processes the
    minibatch size and the loss normalisers are global (summed over ranks) and every rank makes the same
    number of passes; `weight` 0 makes this rank's passes count for nothing (it had no rows to train on).
    An optimizer step whose loss or gradient is NaN / inf on any rank is skipped (`optimizer_steps_skipped`).
    """
    dist = current()
    N = ro.completion_mask.shape[0]
    mask = ro.completion_mask & ~ro.truncated[:, None] if cfg.overlong_filter else ro.completion_mask
    needs_all = cfg.kl_coef != 0 or cfg.entropy_coef != 0 or value_head is not None
    active = mask.any(1) & (needs_all | ((adv * mask).abs().sum(1) > 0))
    if cfg.minibatch_size:
        mb_size = cfg.minibatch_size // dist.world
        dist.shard(cfg.minibatch_size, "rl.minibatch_size")  # checks that it divides over the processes
    else:
        mb_size = N
    micro = cfg.micro_batch_size
    n_minibatches = int(dist.max(-(-N // max(mb_size, 1))))
    params = [p for g in opt.param_groups for p in g["params"]]
    sums: dict[str, float] = {"_w": 0.0}
    skipped = 0
    gen = torch.Generator().manual_seed(int(ro.completion_ids.sum()) % (1 << 31))
    for _ in range(cfg.epochs):
        order = torch.randperm(N, generator=gen) if mb_size < N else torch.arange(N)
        for j in range(n_minibatches):
            mb = order[j * mb_size : (j + 1) * mb_size]
            # Normalisers of the whole (global) minibatch, so skipped rows leave the gradient unchanged.
            total_tok = dist.sum(float(mask[mb].sum()) * weight)
            total_seq = dist.sum(len(mb) * weight)
            mb = mb[active[mb]]
            counts = torch.ones(len(mb), dtype=torch.long)
            if value_head is None and len(mb):  # copies of a row train once, counted as often as they occur
                mb, counts = unique_rows(ro, mb, mask, adv)
            sums["_unique"] = sums.get("_unique", 0) + len(mb)
            n_micro = int(dist.max(-(-len(mb) // micro) if weight else 0))
            if n_micro == 0 or total_tok == 0:
                continue
            finite = True
            for i in range(n_micro):
                rows, c, w = mb[i * micro : (i + 1) * micro], counts[i * micro : (i + 1) * micro], weight
                if len(rows) == 0:  # this rank ran out of rows: a zero-weight pass keeps the ranks in step
                    rows, c, w = torch.arange(1), torch.ones(1, dtype=torch.long), 0.0
                tokens = float((mask[rows].sum(1) * c.to(mask.device)).sum())
                share = (tokens / total_tok if cfg.loss_agg == "token_mean" else float(c.sum()) / total_seq) * w
                sub = select_rows(ro, rows)  # trimmed to its widest row: slice the (N, T) tensors alike
                T = sub.completion_ids.shape[1]
                cut = [None if x is None else x[rows][:, :T] for x in (mask, adv, returns, old_values)]
                # the engine averages gradients over ranks: scale by the process count to sum them
                with dist.no_sync(policy, sync=i == n_micro - 1):
                    metrics = _micro_step(policy, ref, value_head, sub, *cut, cfg, max_tokens, share * dist.world,
                                          None if value_head is not None else c.to(sub.logprobs.device))
                finite &= metrics.pop("_finite")
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + v * share
                sums["_w"] += share
            if value_head is not None:
                dist.all_reduce_grads(value_head.parameters())
            norm = float(dist.clip_grad_norm_(params, cfg.grad_clip))
            if dist.max(0.0 if finite and math.isfinite(norm) else 1.0) == 0:
                sums["grad_norm"] = sums.get("grad_norm", 0.0) + norm
                sums["_steps"] = sums.get("_steps", 0) + 1
                opt.step()
            else:
                skipped += 1
            opt.zero_grad(set_to_none=True)
    w, steps, unique = sums.pop("_w"), sums.pop("_steps", 0), sums.pop("_unique", 0)
    out = {k: v / w for k, v in sums.items() if k != "grad_norm"} if w else {}
    if steps:
        out["grad_norm"] = sums["grad_norm"] / steps
    trained = int(active.sum()) if weight else 0
    out.update({"rows/skipped": N - trained, "rows/trained": trained, "rows/unique": unique / max(cfg.epochs, 1),
                "optimizer_steps": steps,
                "optimizer_steps_skipped": skipped})
    return out


def _micro_step(policy, ref, value_head, sub: Rollouts, m, adv, returns, old_values, cfg: RLConfig,
                max_tokens: int, share: float, counts: torch.Tensor | None = None) -> dict[str, float]:
    """Forward + backward of one micro-batch, its loss scaled by its share of the minibatch; row i counts
    counts[i] times (it stands for that many identical rows: `unique_rows`)."""
    logp, ent, values = sequence_logprobs(policy, sub, cfg.temperature, value_head, cfg.entropy_coef != 0)
    ref_logp = None
    if ref is not None and not cfg.kl_in_reward:
        with torch.no_grad():
            ref_logp = sequence_logprobs(ref, sub, cfg.temperature)[0]
    eps = ((cfg.eps_low, cfg.eps_high) if cfg.prefix_rft is None else  # Prefix-RFT: own range on prefix tokens
           clip_range(sub.prefix_mask, cfg.eps_low, cfg.eps_high, cfg.prefix_rft.eps_low, cfg.prefix_rft.eps_high))
    loss, metrics = policy_loss(
        logp, sub.logprobs, adv, m, eps_low=eps[0], eps_high=eps[1], dual_clip=cfg.dual_clip,
        agg=cfg.loss_agg, max_tokens=max_tokens, ref_logp=ref_logp, kl_coef=cfg.kl_coef if ref_logp is not None
        else 0.0, kl_type=cfg.kl_type, entropy=ent, entropy_coef=cfg.entropy_coef, weights=counts)
    if value_head is not None:
        vloss, vmetrics = value_loss(values, old_values, returns, m)
        loss = loss + cfg.vf_coef * vloss
        metrics.update(vmetrics)
    finite = bool(torch.isfinite(loss))  # a NaN / inf loss still goes backward (the ranks must stay in step);
    (loss * share).backward()            # update() then skips the optimizer step
    sampled = sampled_token_metrics(logp.detach(), sub.logprobs, m if counts is None else m * counts[:, None])
    if not finite:
        metrics = {k: 0.0 for k in metrics}
    return {**sampled, **metrics, "_finite": finite}  # an exact entropy (entropy_coef ≠ 0) wins over the estimate


def sampled_token_metrics(logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Over masked tokens of (N, T) trainer and sampler log-probs: the entropy estimate E[−log π(sampled
    token)] = H(π) at the sampling temperature, and the mean |trainer − sampler| log-prob gap."""
    m = mask.float()
    n = m.sum().clamp(min=1)
    return {"entropy": float((-logp * m).sum() / n), "logprob_gap": float(((logp - sampler_logp).abs() * m).sum() / n)}
