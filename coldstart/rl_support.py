"""What the RL loop (coldstart.rl.train) calls around its steps, kept out of rl.py so that file reads as the
step itself: the pass-rate prompt prefilter before training (DUPO §1, RIF-RFT §7, Fleming-R1 §13), the
evaluation suite on the val split, and the warning for flat (zero-std) batches."""

from __future__ import annotations

import torch

from .algorithms import pass_rate_window
from .config import Recipe
from .evaluate import encode_prompts, evaluate, sample_texts
from .models import eos_ids
from .multiturn import build_multiturn, evaluate_env
from .rollout import SamplingParams, build_sampler
from .runtime import console
from .types import Example


def prefilter_pool(policy, tokenizer, sampler, task, pool: list[Example], recipe: Recipe) -> list[int]:
    """Pool indices whose pass rate over k samples lies in the `rl.prefilter` window."""
    pf = recipe.rl.prefilter
    probe = pool[: pf.max_prompts] if pf.max_prompts else pool
    params = SamplingParams(n=pf.k, max_new_tokens=recipe.rl.max_new_tokens, temperature=pf.temperature,
                            eos_ids=eos_ids(tokenizer, policy))
    texts, _ = sample_texts(policy, tokenizer, encode_prompts(tokenizer, probe, recipe.prompt), params,
                            recipe.eval.batch_size, generator=torch.Generator().manual_seed(recipe.run.seed + 7))
    rates = [sum(task.verify(ex, t) >= 1.0 for t in texts[i * pf.k : (i + 1) * pf.k]) / pf.k
             for i, ex in enumerate(probe)]
    kept = pass_rate_window(rates, pf.min_pass, pf.max_pass)
    console.print(f"rl: prefilter kept {len(kept)} of {len(probe)} prompts with pass rate in "
                  f"[{pf.min_pass}, {pf.max_pass}] over {pf.k} samples (mean pass rate "
                  f"{sum(rates) / max(1, len(rates)):.2f})")
    return kept


def evaluate_val(policy, tokenizer, task, val, recipe: Recipe) -> dict[str, float]:
    """The evaluation suite on the val split, as `eval/...` metrics: greedy accuracy, length, reflections,
    and with `rl.eval_samples` = k > 0 also pass@k, maj@k and mean@k from k samples per prompt."""
    cfg = recipe.eval.model_copy(update={"samples": recipe.rl.eval_samples,
                                         "max_new_tokens": recipe.rl.max_new_tokens})
    result = evaluate(policy, tokenizer, task, val, recipe.prompt, cfg, recipe.run.seed)
    if recipe.rl.env is not None:  # whole greedy games: turns/mean, turns/solved
        games = build_multiturn(recipe, task, build_sampler(recipe.rl.sampler, tokenizer), tokenizer)
        result.update(evaluate_env(games, policy, val, recipe.rl.max_new_tokens, eos_ids(tokenizer, policy)))
    return {f"eval/{k}": v for k, v in result.items() if isinstance(v, float)}


def warn_flat(row: dict, state: dict) -> None:
    """Say plainly when (almost) every group has identical rewards: the policy gradient is zero there."""
    if row["groups/zero_std_frac"] >= 0.9:
        state["flat_steps"] += 1
        if state["flat_steps"] == 1:
            why = ("the policy almost never succeeds: start RL from an SFT cold start (or an easier task)"
                   if row["reward/mean"] < 0.5 else "the prompts are too easy for this policy: use harder ones")
            console.print(f"[yellow]rl: step {row['step']}: {row['groups/zero_std_frac']:.0%} of groups have "
                          f"reward std 0 (every sample scored the same), so they carry no learning signal; "
                          f"{why}. (`rl.filter: dynamic` resamples such groups.)")
