"""What changes over an RL run besides the weights: the prompt pool and the sampling temperature.

- `prefilter_pool`: the pass-rate prompt prefilter before training (DUPO §1, RIF-RFT §7, Fleming-R1 §13 of
  docs/algorithms.md): keep the prompts whose pass rate over k samples lies in a window; measured once with the
  starting policy and kept in the trainer state, so a resumed run keeps its pool.
- `phase_pool`: `rl.curriculum`'s phase pool at the current step (coldstart.curriculum, QwenLong-L1).
- `tune_temperature`: `rl.target_entropy`'s temperature (coldstart.temperature, AceReason), kept in the
  trainer state; the recipe is never changed.
"""

from __future__ import annotations

import dataclasses

import torch

from ..algorithms import pass_rate_window
from ..config import Recipe
from ..curriculum import curriculum_pool
from ..evaluate import encode_prompts, sample_texts
from ..infra.distributed import current
from ..infra.runtime import console, progress
from ..models import eos_ids
from ..rollout import SamplingParams
from ..temperature import pick_temperature
from ..types import Example
from .logprobs import sequence_logprobs
from .records import TrainerState
from .sample import prompt_batch


def prefilter_pool(policy, tokenizer, task, pool: list[Example], recipe: Recipe) -> list[int]:
    """Pool indices whose pass rate over k samples lies in the `rl.prefilter` window."""
    pf = recipe.rl.prefilter
    probe = pool[: pf.max_prompts] if pf.max_prompts else pool
    params = SamplingParams(n=pf.k, max_new_tokens=recipe.rl.max_new_tokens, temperature=pf.temperature,
                            eos_ids=eos_ids(tokenizer, policy))
    with progress(recipe.run.quiet or not current().is_main) as bar:
        bar_id = bar.add_task("rl prefilter", total=len(probe), info=f"{pf.k} samples per prompt")
        texts, _ = sample_texts(policy, tokenizer, encode_prompts(tokenizer, probe, recipe.prompt), params,
                                recipe.eval.batch_size, generator=torch.Generator().manual_seed(recipe.run.seed + 7),
                                on_chunk=lambda n: bar.advance(bar_id, n))
    rates = [sum(task.verify(ex, t) >= 1.0 for t in texts[i * pf.k : (i + 1) * pf.k]) / pf.k
             for i, ex in enumerate(probe)]
    kept = pass_rate_window(rates, pf.min_pass, pf.max_pass)
    console.print(f"rl: prefilter kept {len(kept)} of {len(probe)} prompts with pass rate in "
                  f"[{pf.min_pass}, {pf.max_pass}] over {pf.k} samples (mean pass rate "
                  f"{sum(rates) / max(1, len(rates)):.2f})")
    return kept


def training_pool(policy, tokenizer, task, pool: list[Example], state: TrainerState, recipe: Recipe
                  ) -> list[Example]:
    """The RL pool after `rl.prefilter` (measured at the first step, then read from the state)."""
    if recipe.rl.prefilter is None:
        return pool
    if state.pool_ids is None:
        state.pool_ids = prefilter_pool(policy, tokenizer, task, pool, recipe)
    pool = [pool[i] for i in state.pool_ids]
    if not pool:
        raise ValueError("rl.prefilter: no training prompt has a pass rate in [min_pass, max_pass]; widen the window")
    return pool


def phase_pool(full_pool: list[Example], state: TrainerState, cfg, steps: int, seed: int
               ) -> tuple[list[Example], dict[str, float]]:
    """The current curriculum phase's pool (plus carried hard examples) and its `curriculum/` metrics; the
    whole pool and no metrics without `rl.curriculum`."""
    if cfg is None:
        return full_pool, {}
    view = {"step": state.step} if state.curriculum is None else {"step": state.step, "curriculum": state.curriculum}
    pool, metrics = curriculum_pool(full_pool, view, cfg, steps, seed)
    state.curriculum = view["curriculum"]
    return pool, metrics


def tune_temperature(policy, sampler, pool, state: TrainerState, recipe: Recipe, prompt_ids,
                     params: SamplingParams) -> dict[str, float]:
    """With `rl.target_entropy`, set `state.temperature` by coldstart.temperature's rule at the first step and
    every `rl.temperature_retune_every` steps; a resumed run keeps its choice. Returns `temperature/entropy@T`
    metrics when it measured."""
    cfg = recipe.rl
    if cfg.target_entropy is None:
        return {}
    due = state.temperature is None or (cfg.temperature_retune_every and state.step > 0
                                        and state.step % cfg.temperature_retune_every == 0)
    if not due:
        return {}
    # Probe prompts and noise of their own, so tuning leaves the training stream (and resume) untouched.
    ids = prompt_ids(prompt_batch(pool, 0, min(cfg.probe_prompts, len(pool)), recipe.run.seed + 1))
    gen = torch.Generator().manual_seed(recipe.run.seed * 1009 + state.step)

    def entropy_at(t: float) -> float:
        ro = sampler.sample(policy, ids, dataclasses.replace(params, n=1, temperature=t), gen)
        with torch.no_grad():
            ent = sequence_logprobs(policy, ro, t, need_entropy=True)[1]
        m = ro.completion_mask.float()
        return float((ent * m).sum() / m.sum().clamp(min=1))

    state.temperature, measured = pick_temperature(entropy_at, cfg.temperature_candidates, cfg.target_entropy)
    return {f"temperature/entropy@{t:g}": h for t, h in measured.items()}
