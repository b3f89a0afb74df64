"""Prefix-RFT's glue in the RL step (ALGORITHMS.md §11; the pure functions are in coldstart.algorithms.prefix):
sampling groups whose hybrid rows continue a scheduled prefix of the demonstration, and the prefix tokens'
advantage. Used by coldstart.rl when `rl.prefix_rft` is set."""

from __future__ import annotations

import dataclasses

import torch

from .algorithms import interleave_groups, prefix_fraction, prefix_lengths, prefix_rft_advantage, splice_prefix
from .config import RLConfig
from .logprobs import sequence_logprobs
from .rollout.base import decode_texts, max_positions
from .rollout_utils import select_rows
from .types import Rollouts


def sample_with_prefix(policy, sampler, examples, params, gen, state, cfg: RLConfig, seeds=None) -> Rollouts:
    """Prefix-RFT (§11, coldstart.algorithms.prefix): per prompt G−k on-policy rollouts and k hybrids that
    continue the scheduled prefix of its demonstration; the prefix tokens' old log-probs are the policy's own
    (a no-grad forward pass), not the sampler's. `seeds` (one per prompt) seed both calls, the hybrids'
    shifted so their draws differ from the on-policy rows'."""
    pr, G, sp = cfg.prefix_rft, cfg.group_size, params["sampling"]
    if not 1 <= pr.per_group < G:
        raise ValueError(f"rl.prefix_rft.per_group={pr.per_group} must be in [1, group_size={G})")
    prompts, demos, pad = params["prompt_ids"](examples), params["demo_ids"](examples), sampler.tokenizer.pad_token_id
    frac = prefix_fraction(state["step"], cfg.steps, pr.start, pr.end, pr.schedule)
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
        hyb.logprobs = torch.where(hyb.prefix_mask, sequence_logprobs(policy, hyb, cfg.temperature)[0], hyb.logprobs)
    return interleave_groups(on, hyb, G - pr.per_group, pr.per_group, pad)


def prefix_advantage(policy, ro: Rollouts, scores, adv, cfg: RLConfig, row: dict) -> torch.Tensor:
    """Prefix-RFT's advantage on the prefix tokens (algorithms.prefix.prefix_rft_advantage), with the
    policy's entropy at sampling time (it has not been updated since) from a no-grad pass over the hybrids.
    adv (N, T) and scores (N,) in, the new (N, T) advantages out; the metrics go into `row`."""
    if ro.prefix_mask is None:
        raise ValueError("rl.prefix_rft applies to single-turn rollouts; unset it or rl.env")
    hybrid = ro.prefix_mask.any(1)
    entropy = torch.zeros_like(adv)
    if hybrid.any():
        with torch.no_grad():
            ent = sequence_logprobs(policy, select_rows(ro, hybrid), cfg.temperature, need_entropy=True)[1]
        entropy[hybrid, : ent.shape[1]] = ent
    adv, metrics = prefix_rft_advantage(adv, scores, ro.prefix_mask, entropy, cfg.group_size,
                                        entropy_top=cfg.prefix_rft.entropy_top, std_normalize=cfg.advantage == "grpo")
    row.update(metrics)
    return adv
