"""Prefix-RFT (Huang et al., arXiv 2507.01679; docs/algorithms.md §11): demonstration prefixes inside RL groups.

Per prompt, `k = rl.prefix_rft.per_group` of the G rollouts are *hybrids*: the first `L = ⌊l·|y*|⌋` tokens
of the demonstration y* (the example's SFT target `coldstart.prompts.render_target` + eos) followed by the
policy's own continuation; the other G − k rollouts are ordinary on-policy samples. The rollout budget
is unchanged. The pieces, as pure functions:

- `prefix_fraction`: l is scheduled from `start` (~0.95) to `end` (~0.05) over the run, cosine by default,
  an SFT → RFT curriculum inside one stage. Deviation: the paper's code draws l from U(low, high) (or a Beta)
  between scheduled bounds, and which bound decays is unconfirmed; we use the scheduled value itself.
- `prefix_lengths`: L per demonstration, capped so the policy writes at least y*'s last token (eos) and one
  token of the budget.
- `splice_prefix` / `interleave_groups`: the sampler continues from prompt + prefix; the prefix tokens are
  then moved from the prompt into the completion (`completion_mask` covers prefix + continuation,
  `Rollouts.prefix_mask` marks the prefix) and the hybrids take the last k rows of each group.
- `prefix_advantage` / `entropy_top_mask` / `prefix_rft_advantage`: the advantage. Continuation tokens keep
  the run's estimator computed over the whole group, so the hybrid's reward joins its group's statistics
  (our reading of "grouped by (prompt, prefix-id)" for one prefix per group). Prefix tokens get
  `(r_hybrid − mean of the on-policy rows' rewards) / k` [code]; with `grpo` we also divide by the group's
  std + eps so prefix and continuation tokens share a scale (our choice; the paper's main runs are Dr. GRPO,
  where nothing is divided). Only the top `entropy_top` share (~20%) of the batch's prefix tokens by the
  policy's entropy keep that advantage, the rest get 0 (`off_adv_reshaper=entropy`); ranking over all
  prefix tokens of the batch rather than per sequence is our reading (unconfirmed).
- `clip_range`: prefix tokens are off-policy, so their "old" log-prob is the policy's own at sampling time
  (a no-grad forward pass, as verl recomputes old log-probs) and they get their own clip range
  (`cliprange_low_off/high_off`; the paper's values are unconfirmed, we default to 0.2/0.2).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from coldstart.rollout_utils import cat_rollouts, select_rows
from coldstart.types import Rollouts

Metrics = dict[str, float]
SCHEDULES = ("cosine", "linear", "constant")


def prefix_fraction(step: int, steps: int, start: float = 0.95, end: float = 0.05, schedule: str = "cosine") -> float:
    """Share l of the demonstration used as prefix at `step` (0-based) of a `steps`-step run.

    cosine: end + (start − end)·(1 + cos(π·step/(steps−1)))/2; linear: straight from start to end; constant: start.

    >>> [round(prefix_fraction(s, 5), 6) for s in (0, 2, 4)]
    [0.95, 0.5, 0.05]
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown prefix schedule {schedule!r}; choose one of {SCHEDULES}")
    if not (0.0 <= end <= 1.0 and 0.0 <= start <= 1.0):
        raise ValueError(f"prefix start={start} and end={end} must lie in [0, 1]")
    progress = min(1.0, max(0.0, step / max(1, steps - 1)))
    if schedule == "constant":
        return start
    if schedule == "linear":
        return start + (end - start) * progress
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def prefix_lengths(demo_lengths: list[int], fraction: float, budget: int) -> list[int]:
    """L_i = ⌊fraction·|y*_i|⌋ prefix tokens per demonstration, at most |y*_i| − 1 and budget − 1: the policy
    writes at least the last token (y* ends with eos, as the SFT target does) within `budget` = max_new_tokens.

    >>> prefix_lengths([10, 7, 100, 10], 0.5, 40), prefix_lengths([10], 1.0, 40)
    ([5, 3, 39, 5], [9])
    """
    if budget < 2:
        raise ValueError(f"Prefix-RFT needs max_new_tokens >= 2 (a prefix and a continuation), got {budget}")
    return [max(0, min(math.floor(fraction * n + 1e-9), n - 1, budget - 1)) for n in demo_lengths]


def splice_prefix(cont: Rollouts, prefix_lens: torch.Tensor, budget: int, pad_id: int,
                  decode: Callable[[torch.Tensor, torch.Tensor], list[str]]) -> Rollouts:
    """Turn continuations sampled from prompt + prefix into hybrid rollouts.

    cont: K rows whose prompts end with `prefix_lens` (K,) prefix tokens each. Returns K rows whose prompt is
    the prompt without the prefix and whose completion is prefix + continuation, cut at `budget` tokens
    (a cut row is `truncated`); `prefix_mask` (K, T) marks the prefix; the prefix's `logprobs` are 0 (the
    caller fills them in: they are not the sampler's). `decode(ids (K, T), lengths (K,))` gives the texts.
    """
    prompts, comps, logps, trunc = [], [], [], []
    for i in range(cont.prompt_ids.shape[0]):
        p = cont.prompt_ids[i][cont.prompt_mask[i]]
        L, n = int(prefix_lens[i]), int(cont.completion_mask[i].sum())
        if not 0 <= L <= len(p):
            raise ValueError(f"row {i}: prefix length {L} outside its prompt of {len(p)} tokens")
        prompts.append(p[: len(p) - L])
        comps.append(torch.cat([p[len(p) - L :], cont.completion_ids[i, :n]])[:budget])
        logps.append(torch.cat([cont.logprobs.new_zeros(L), cont.logprobs[i, :n]])[:budget])
        trunc.append(bool(cont.truncated[i]) or L + n > budget)
    K, P, T = len(comps), max(len(p) for p in prompts), max(len(c) for c in comps)
    dev = cont.prompt_ids.device
    prompt_ids = torch.full((K, P), pad_id, dtype=torch.long, device=dev)
    completion_ids = torch.full((K, T), pad_id, dtype=torch.long, device=dev)
    logprobs = torch.zeros((K, T), dtype=cont.logprobs.dtype, device=dev)
    for i, (p, c, lp) in enumerate(zip(prompts, comps, logps, strict=True)):
        prompt_ids[i, P - len(p) :], completion_ids[i, : len(c)], logprobs[i, : len(lp)] = p, c, lp
    plen = torch.tensor([len(p) for p in prompts], device=dev)
    clen = torch.tensor([len(c) for c in comps], device=dev)
    cols_p, cols_t = torch.arange(P, device=dev), torch.arange(T, device=dev)
    prefix = torch.minimum(prefix_lens.to(dev), torch.tensor(budget, device=dev))
    return Rollouts(
        prompt_ids=prompt_ids, prompt_mask=cols_p[None] >= (P - plen)[:, None],
        completion_ids=completion_ids, completion_mask=cols_t[None] < clen[:, None], logprobs=logprobs,
        truncated=torch.tensor(trunc, device=dev), texts=decode(completion_ids, clen),
        prefix_mask=cols_t[None] < prefix[:, None],
    )


def interleave_groups(on: Rollouts, hybrid: Rollouts, n_on: int, n_hybrid: int, pad_id: int) -> Rollouts:
    """B groups of n_on on-policy rows (B·n_on rows) and n_hybrid hybrid rows (B·n_hybrid rows) → B·G rows,
    prompt-major, each group's hybrids last; the on-policy rows get an all-False `prefix_mask`."""
    B = on.prompt_ids.shape[0] // n_on
    if hybrid.prompt_ids.shape[0] != B * n_hybrid:
        raise ValueError(f"{hybrid.prompt_ids.shape[0]} hybrid rows for {B} groups of {n_hybrid}")
    both = cat_rollouts([on, hybrid], pad_id)
    order = [r for b in range(B) for r in [*range(b * n_on, (b + 1) * n_on),
                                           *range(B * n_on + b * n_hybrid, B * n_on + (b + 1) * n_hybrid)]]
    return select_rows(both, torch.tensor(order, dtype=torch.long))


def prefix_advantage(scores: torch.Tensor, is_hybrid: torch.Tensor, group_size: int, *, std_normalize: bool = False,
                     eps: float = 1e-6) -> torch.Tensor:
    """Advantage of the prefix tokens, one value per row: scores (N,), is_hybrid (N,) bool → (N,), 0 on
    on-policy rows. Hybrid row: (r − mean of its group's on-policy rewards) / (hybrids in the group), divided
    by (unbiased std of the whole group + eps) when `std_normalize` (grpo). A group without on-policy rows
    uses the mean of the whole group."""
    s, h = scores.float().view(-1, group_size), is_hybrid.view(-1, group_size)
    on = (~h).float()
    on_mean = torch.where(on.sum(1) > 0, (s * on).sum(1) / on.sum(1).clamp(min=1), s.mean(1))
    adv = (s - on_mean[:, None]) / h.sum(1, keepdim=True).clamp(min=1)
    if std_normalize:
        std = s.std(1, keepdim=True) if group_size > 1 else torch.zeros_like(s[:, :1])
        adv = adv / (std + eps)
    return (adv * h).flatten()


def entropy_top_mask(entropy: torch.Tensor, prefix_mask: torch.Tensor, top: float) -> torch.Tensor:
    """(N, T) entropy and prefix mask → (N, T) bool: the ⌈top·n⌉ prefix tokens of highest entropy among the
    n prefix tokens of the batch (ties broken by position)."""
    if not 0.0 <= top <= 1.0:
        raise ValueError(f"entropy_top must lie in [0, 1], got {top}")
    vals = entropy[prefix_mask]
    k = math.ceil(top * vals.numel() - 1e-9)
    keep = torch.zeros(vals.numel(), dtype=torch.bool, device=entropy.device)
    if k > 0:
        keep[torch.sort(vals, descending=True, stable=True).indices[:k]] = True
    out = torch.zeros_like(prefix_mask, dtype=torch.bool)
    out[prefix_mask] = keep
    return out


def prefix_rft_advantage(adv: torch.Tensor, scores: torch.Tensor, prefix_mask: torch.Tensor, entropy: torch.Tensor,
                         group_size: int, *, entropy_top: float = 0.2, std_normalize: bool = False,
                         eps: float = 1e-6) -> tuple[torch.Tensor, Metrics]:
    """The run's advantage adv (N, T) with its prefix tokens replaced: `prefix_advantage` on the
    `entropy_top_mask` tokens, 0 on the other prefix tokens. scores (N,), prefix_mask (N, T) bool,
    entropy (N, T) (the policy's, at sampling time). Returns ((N, T), metrics)."""
    is_hybrid = prefix_mask.any(1)
    pa = prefix_advantage(scores, is_hybrid, group_size, std_normalize=std_normalize, eps=eps)
    keep = entropy_top_mask(entropy, prefix_mask, entropy_top)
    out = torch.where(prefix_mask, pa[:, None].to(adv.dtype) * keep, adv)
    n_prefix = int(prefix_mask.sum())
    metrics = {
        "prefix/hybrid_reward": float(scores[is_hybrid].float().mean()) if is_hybrid.any() else 0.0,
        "prefix/onpolicy_reward": float(scores[~is_hybrid].float().mean()) if (~is_hybrid).any() else 0.0,
        "prefix/tokens_mean": n_prefix / max(1, int(is_hybrid.sum())),
        "prefix/kept_frac": int(keep.sum()) / max(1, n_prefix),
        "prefix/adv_mean": float(pa[is_hybrid].mean()) if is_hybrid.any() else 0.0,
    }
    return out, metrics


def clip_range(prefix_mask: torch.Tensor | None, eps_low: float, eps_high: float, off_low: float,
               off_high: float) -> tuple[float | torch.Tensor, float | torch.Tensor]:
    """Per-token PPO clip range: (eps_low, eps_high) as floats when there are no prefix tokens, else two (N, T)
    tensors holding (off_low, off_high) on prefix tokens and (eps_low, eps_high) elsewhere."""
    if prefix_mask is None or not bool(prefix_mask.any()):
        return eps_low, eps_high
    def fill(value: float) -> torch.Tensor:  # on the mask's device: torch.where refuses a CPU tensor beside CUDA
        return torch.full(prefix_mask.shape, value, device=prefix_mask.device)

    return (torch.where(prefix_mask, fill(off_low), fill(eps_low)),
            torch.where(prefix_mask, fill(off_high), fill(eps_high)))
