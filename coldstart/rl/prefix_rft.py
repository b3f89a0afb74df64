"""Prefix-RFT in the RL step (docs/algorithms.md §11; the pure functions are in coldstart.algorithms.prefix):
sampling groups whose hybrid rows continue a scheduled prefix of the demonstration (`sample_with_prefix`,
called by the PrefixSource of sample.py), and the prefix tokens' own advantage (`PrefixAdvantage`, a
post-advantage transform of loop.py). Used when `rl.prefix_rft` is set."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..algorithms import interleave_groups, prefix_fraction, prefix_lengths, prefix_rft_advantage, splice_prefix
from ..rollout import SamplingParams
from ..rollout.base import decode_texts, max_positions
from ..rollout_utils import select_rows
from ..types import Rollouts
from .logprobs import sequence_logprobs
from .records import Advantaged


def sample_with_prefix(policy, sampler, prompts: list[list[int]], demos: list[list[int]], sp: SamplingParams,
                       gen, step: int, steps: int, pr, group_size: int, seeds=None) -> Rollouts:
    """Prefix-RFT (§11, coldstart.algorithms.prefix): per prompt G−k on-policy rollouts and k = pr.per_group
    hybrids that continue the prefix of its demonstration scheduled for `step` of `steps`; the prefix tokens'
    old log-probs are the policy's own at `sp.temperature` (a no-grad forward pass), not the sampler's.
    `prompts`, `demos`: (B,) token-id lists; returns B×G rows. `seeds` (one per prompt) seed both calls, the
    hybrids' shifted so their draws differ from the on-policy rows'."""
    G = group_size
    if not 1 <= pr.per_group < G:
        raise ValueError(f"rl.prefix_rft.per_group={pr.per_group} must be in [1, group_size={G})")
    pad = sampler.tokenizer.pad_token_id
    frac = prefix_fraction(step, steps, pr.start, pr.end, pr.schedule)
    lens = prefix_lengths([len(d) for d in demos], frac, sp.max_new_tokens)
    on = sampler.sample(policy, prompts, dataclasses.replace(sp, n=G - pr.per_group), gen, seeds)
    starts = [p + d[:n] for p, d, n in zip(prompts, demos, lens, strict=True)]
    room = (max_positions(policy) or 1 << 30) - max(map(len, starts))  # the longest start must fit the model
    cont = sampler.sample(policy, starts, dataclasses.replace(
        sp, n=pr.per_group, max_new_tokens=max(1, min(sp.max_new_tokens - min(lens), room))), gen,
        None if seeds is None else [(s * 31 + 7) % (1 << 62) for s in seeds])
    hyb = splice_prefix(cont, torch.tensor(lens).repeat_interleave(pr.per_group), sp.max_new_tokens, pad,
                        lambda ids, n: decode_texts(sampler.tokenizer, ids, n, sp.stop))
    with torch.no_grad():
        hyb.logprobs = torch.where(hyb.prefix_mask, sequence_logprobs(policy, hyb, sp.temperature)[0], hyb.logprobs)
    return interleave_groups(on, hyb, G - pr.per_group, pr.per_group, pad)


@dataclass(frozen=True)
class PrefixAdvantage:
    """Post-advantage transform: Prefix-RFT's advantage on the prefix tokens (prefix_rft_advantage), with the
    policy's entropy at sampling time (it has not been updated since) from a no-grad pass over the hybrids."""

    group_size: int
    entropy_top: float
    std_normalise: bool  # as the run's estimator does (Estimator.std_normalised)

    def __call__(self, policy, batch: Advantaged, step: int, temperature: float) -> tuple[Advantaged, dict]:
        """batch.adv (N, T) → the same with the prefix tokens' advantage replaced; and the prefix/ metrics."""
        ro, adv = batch.rollouts, batch.adv
        if ro.prefix_mask is None:
            raise ValueError("rl.prefix_rft applies to single-turn rollouts; unset it or rl.env")
        hybrid = ro.prefix_mask.any(1)
        entropy = torch.zeros_like(adv)
        if hybrid.any():
            with torch.no_grad():
                ent = sequence_logprobs(policy, select_rows(ro, hybrid), temperature, need_entropy=True)[1]
            entropy[hybrid, : ent.shape[1]] = ent
        adv, metrics = prefix_rft_advantage(adv, batch.scores, ro.prefix_mask, entropy, self.group_size,
                                            entropy_top=self.entropy_top, std_normalize=self.std_normalise)
        return dataclasses.replace(batch, adv=adv), metrics
