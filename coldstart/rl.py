"""Reinforcement fine-tuning with verifiable rewards: GRPO and its variants (ALGORITHMS.md §0, §23).

One step, top to bottom (`train` calls these in order, one line each):

    sample     B prompts × G completions from the current policy (coldstart.rollout), answer-only prompts
    reward     weighted reward parts per completion (coldstart.rewards); a raising part scores 0 and is counted
    filter     drop groups whose rewards are all equal (`rl.filter: dynamic`, DAPO), refilling the batch
    advantage  per-token advantages (grpo | dr_grpo | rloo | reinforce_pp | gae)
    update     μ = rl.epochs passes of PPO-clip over minibatches against the sampling log-probs

Deviations from the papers, on purpose:
- The old log-probs are the sampler's (the distribution actually sampled from). With top-p/top-k they differ
  from the trainer's temperature-scaled softmax; the mean gap is logged as `logprob_gap`.
- Rows whose advantage is exactly 0 on every token skip the forward/backward pass when no KL, entropy or
  value term needs them; the loss is normalised over the whole batch so the gradient is unchanged
  (`rows/skipped`).
- `gae` (PPO) puts a linear value head on the policy's last hidden state (a shared trunk, as ReFT does)
  instead of a separate critic model; it is saved as `value_head` in the trainer state.

    coldstart rl recipes/demo.yaml --out runs/demo          (starts from runs/demo/sft when it exists)
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from .algorithms import (
    ADVANTAGES,
    FILTERS,
    clip_range,
    expand_groups,
    gae,
    kl_penalty,
    outcome_token_rewards,
    pad_select,
    policy_loss,
    value_loss,
)
from .checkpoint import finalize_stage, load_trainer_state
from .config import Recipe, RLConfig
from .curriculum import curriculum_pool, record_rewards
from .distributed import current, merge_rows
from .evaluate import encode_prompts
from .logprobs import sequence_logprobs
from .models import eos_ids, is_lora, load_model
from .multiturn import Turns, build_multiturn, credit_advantages
from .pipeline import open_stage
from .prompts import render_target
from .rewards import build_reward
from .rl_prefix import prefix_advantage, sample_with_prefix
from .rl_support import evaluate_val, prefilter_pool, warn_flat
from .rollout import SamplingParams, build_sampler
from .rollout_utils import cat_rollouts, select_rows, unique_rows
from .runtime import MetricsLog, NonFinite, Timer, build_optimizer, build_scheduler, console, progress, save_on_main
from .temperature import pick_temperature
from .types import Example, Rollouts


class AdapterOff:
    """Calls a peft model with its adapters disabled: the frozen reference policy of a LoRA run."""

    def __init__(self, policy):
        self.policy = policy

    def __call__(self, **inputs):
        with self.policy.disable_adapter():
            return self.policy(**inputs)


def prompt_batch(pool: list[Example], cursor: int, n: int, seed: int) -> list[Example]:
    """Examples `cursor .. cursor+n` of an endless stream: a fresh seeded permutation of the pool per pass."""
    out = []
    for c in range(cursor, cursor + n):
        epoch, i = divmod(c, len(pool))
        perm = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed * 7919 + epoch))
        out.append(pool[int(perm[i])])
    return out


def score(reward_fn, examples: list[Example], ro: Rollouts, group_size: int) -> tuple[torch.Tensor, Any]:
    """(N,) float rewards for the rollouts of `examples` (each repeated G times), and the RewardResult."""
    rows = [ex for ex in examples for _ in range(group_size)]
    columns: dict[str, list] = {"answer": [e.answer for e in rows], "solution": [e.solution for e in rows],
                                "example": rows, "completion_length": ro.lengths.tolist(),
                                "truncated": ro.truncated.tolist()}
    for key in {k for e in rows for k in e.meta} - columns.keys():
        columns[key] = [e.meta.get(key) for e in rows]
    result = reward_fn([e.prompt for e in rows], ro.texts, **columns)
    return torch.tensor(result.total, dtype=torch.float32), result


def sample_batch(policy, sampler, reward_fn, pool, state, cfg: RLConfig, params, gen, seed, times):
    """Sample B prompts × G; with the dynamic filter, resample until B informative groups (or the cap)."""
    dist, G = current(), cfg.group_size
    part = dist.shard(cfg.prompts_per_step, "rl.prompts_per_step")  # this rank's prompts of the global batch
    B = part.stop - part.start
    kept_ro, kept_ex, kept_scores, first_metrics, parts, kept_turns = [], [], [], None, [], []
    for rounds in range(1 + (cfg.max_resample if cfg.filter == "dynamic" else 0)):  # noqa: B007
        first = state["cursor"] + part.start
        examples = prompt_batch(pool, first, B, seed)
        seeds = [prompt_seed(seed, c) for c in range(first, first + B)]
        state["cursor"] += cfg.prompts_per_step
        with Timer(times, "time/generate_s"):
            if cfg.env is not None:  # multi-turn: the environment scores every turn (coldstart.multiturn)
                ro, scores, result, turns = params["multiturn"](policy, examples, params["sampling"], gen)
            elif cfg.prefix_rft is None:
                ro = sampler.sample(policy, params["prompt_ids"](examples), params["sampling"], gen, seeds)
            else:
                ro = sample_with_prefix(policy, sampler, examples, params, gen, state, cfg, seeds)
        times["tokens"] = times.get("tokens", 0) + int(ro.lengths.sum())
        with Timer(times, "time/reward_s"):
            if cfg.env is None:
                scores, result = score(reward_fn, examples, ro, G)
        if cfg.curriculum is not None:  # every rank's per-prompt rewards, for retrospective sampling (curriculum.py)
            for prompts, sc in dist.gather_objects(([e.prompt for e in examples], scores.cpu())):
                record_rewards(state["curriculum"]["rewards"], prompts, sc, G)
        # pad selects sequences after the advantage (rl_step); at the group stage it keeps every group
        opts = {"generator": gen} if cfg.filter == "dupo" else {}
        keep, fmetrics = FILTERS["none" if cfg.filter == "pad" else cfg.filter](scores, G, **opts)
        if first_metrics is None:  # what the policy itself produced, before any refill
            first_metrics = {"result": result, "scores": scores, "ro": ro, **fmetrics}
        parts.append(result)
        rows = expand_groups(keep, G)  # keep: (K,) group indices, repeated ones duplicated (dupo)
        kept_ro.append(select_rows(ro, rows))
        kept_ex += [examples[g] for g in keep.tolist()]
        kept_scores.append(scores[rows])
        if cfg.env is not None:
            kept_turns.append(turns.select(rows))
        if dist.max(float(len(kept_ex) < B)) == 0:  # every rank's share is full
            break
    n = min(len(kept_ex), B)
    ro = select_rows(cat_rollouts(kept_ro, sampler.tokenizer.pad_token_id), torch.arange(n * G))
    if cfg.env is not None:  # the per-turn rewards of the kept rows, for the turn credits in rl_step
        params["turns"] = Turns.cat(kept_turns).select(torch.arange(n * G))
    return ro, kept_ex[:n], torch.cat(kept_scores)[: n * G], first_metrics, parts, rounds


def prompt_seed(seed: int, position: int) -> int:
    """The sampling seed of the prompt at `position` of the run's prompt stream: a prompt's completions
    do not depend on the batch, the process or the number of processes that samples it."""
    return (seed * 1_000_003 + position) * 2_654_435_761 % (1 << 62)


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
    sampled = _sampled_token_metrics(logp.detach(), sub.logprobs, m if counts is None else m * counts[:, None])
    if not finite:
        metrics = {k: 0.0 for k in metrics}
    return {**sampled, **metrics, "_finite": finite}  # an exact entropy (entropy_coef ≠ 0) wins over the estimate


def _sampled_token_metrics(logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Over masked tokens of (N, T) trainer and sampler log-probs: the entropy estimate E[−log π(sampled
    token)] = H(π) at the sampling temperature, and the mean |trainer − sampler| log-prob gap."""
    m = mask.float()
    n = m.sum().clamp(min=1)
    return {"entropy": float((-logp * m).sum() / n), "logprob_gap": float(((logp - sampler_logp).abs() * m).sum() / n)}


def rl_step(policy, ref, value_head, opt, sampler, reward_fn, pool, state, recipe: Recipe, sampling,
            trained=None) -> dict:
    """One RL step: sample → reward → filter → advantage → update. Returns the step's metrics row (this
    rank's). `trained` is the policy as the engine wrapped it for training (DDP / FSDP), if launched so."""
    cfg, G, times = recipe.rl, recipe.rl.group_size, {}
    ro, examples, scores, first, parts, rounds = sample_batch(
        policy, sampler, reward_fn, pool, state, cfg, sampling, sampling["generator"], recipe.run.seed, times)
    row = _rollout_metrics(first, parts, times, rounds)
    weight = 1.0
    if current().max(len(examples)) == 0:  # every group uninformative and no refill found one: nothing to learn
        return {**row, **_passive_metrics(policy, ref, first["ro"], cfg), "rows/trained": 0,
                "rows/skipped": first["ro"].completion_mask.shape[0], "optimizer_steps": 0,
                "optimizer_steps_skipped": 0}
    if not examples:  # other ranks train: this one joins their passes with zero weight
        ro, scores, weight = first["ro"], first["scores"], 0.0
    with Timer(times, "time/train_s"):
        mask = ro.completion_mask
        scores = scores.to(mask.device)  # rewards are computed on the CPU
        token_rewards = values = returns = None
        if cfg.kl_in_reward and ref is not None:  # ReFT / REINFORCE++: −β·KL per token in the reward
            with torch.no_grad():
                ref_logp = sequence_logprobs(ref, ro, cfg.temperature)[0]
            token_rewards = -cfg.kl_coef * kl_penalty(ro.logprobs, ref_logp, cfg.kl_type) * mask
        if value_head is not None:
            with torch.no_grad():
                values = sequence_logprobs(policy, ro, cfg.temperature, value_head)[2] * mask
            returns = gae(outcome_token_rewards(scores, mask, token_rewards), values, mask, cfg.gamma, cfg.lam)[1]
        adv, adv_metrics = ADVANTAGES[cfg.advantage](scores, mask, G, token_rewards=token_rewards, values=values,
                                                      gamma=cfg.gamma, lam=cfg.lam)
        row.update({k: v for k, v in adv_metrics.items() if k != "groups/zero_std_frac"})
        if cfg.env is not None and cfg.turn_credit != "equalized":  # UserRL: spread A over the turns by credit
            adv, credit_metrics = credit_advantages(adv, sampling["turns"], cfg.turn_credit, cfg.turn_gamma)
            row.update(credit_metrics)
        if cfg.prefix_rft is not None:  # prefix tokens: their own advantage, only the high-entropy ones
            adv = prefix_advantage(policy, ro, scores, adv, cfg, row)
        if cfg.filter == "pad":  # ReVisual-R1 PAD: a prioritised subset of the sequences goes into the loss
            ro, adv, returns, values = _pad(ro, adv, returns, values, state["step"], recipe, row,
                                            sampling["generator"])
        row.update(update(trained or policy, ref, value_head, opt, ro, adv, returns, values, cfg, cfg.max_new_tokens,
                          weight))
        idle = not row["rows/trained"]  # every advantage was 0: measure the policy without training it
        if current().max(float(idle)) if current().sharded else idle:  # FSDP: every rank runs its passes
            passive = _passive_metrics(policy, ref, ro, cfg)
            row.update(passive if idle else {})
    row["time/train_s"] = times["time/train_s"]
    return row


def _pad(ro: Rollouts, adv, returns, values, step: int, recipe: Recipe, row: dict, generator: torch.Generator):
    """PAD row selection (filters.pad_select) with τ annealed linearly over the run; slices every (N, T) input."""
    cfg, pad = recipe.rl, recipe.rl.pad
    frac = step / max(1, cfg.steps - 1)
    tau = pad.tau_start + (pad.tau_end - pad.tau_start) * min(1.0, frac)
    m = ro.completion_mask.float()
    seq_adv = (adv * m).sum(1) / m.sum(1).clamp(min=1)  # (N,): the sequence's (mean) advantage
    rows, metrics = pad_select(seq_adv.cpu(), t_low=pad.t_low, t_high=pad.t_high, rho=pad.rho, tau=tau,
                               generator=generator)
    row.update(metrics)
    sub = select_rows(ro, rows)
    T = sub.completion_ids.shape[1]
    cut = [None if x is None else x[rows][:, :T] for x in (adv, returns, values)]
    return (sub, *cut)


def _passive_metrics(policy, ref, ro: Rollouts, cfg: RLConfig) -> dict[str, float | None]:
    """Entropy, KL and sampler/trainer gap from a no-grad forward on up to one micro-batch, for steps
    that trained nothing (so every metrics row has the same keys)."""
    sub = select_rows(ro, torch.arange(min(cfg.micro_batch_size, ro.completion_mask.shape[0])))
    m = sub.completion_mask.float()
    with torch.no_grad():
        logp = sequence_logprobs(policy, sub, cfg.temperature)[0]
        kl = None
        if ref is not None:
            kl = float((kl_penalty(logp, sequence_logprobs(ref, sub, cfg.temperature)[0], cfg.kl_type) * m).sum()
                       / m.sum().clamp(min=1))
    return {**_sampled_token_metrics(logp, sub.logprobs, m), "kl": kl, "clip/low_frac": 0.0, "clip/high_frac": 0.0}


def _rollout_metrics(first: dict, parts: list, times: dict, rounds: int) -> dict:
    """Reward, group and length statistics of the first sampling round (what the policy produced)."""
    ro, scores, result = first["ro"], first["scores"], first["result"]
    lengths = ro.lengths.float()
    gen_s = times.get("time/generate_s", 0.0)
    row = {
        "reward/mean": float(scores.mean()), "reward/std": float(scores.std()) if len(scores) > 1 else 0.0,
        **{k: v for k, v in result.metrics().items() if k not in ("reward/mean", "reward/std")},
        "reward/errors": sum(r.errors for r in parts),
        **{k: v for k, v in first.items() if k.startswith("groups/")}, "groups/resample_rounds": rounds,
        "length/mean": float(lengths.mean()), "length/max": int(lengths.max()),
        "length/truncated_frac": float(ro.truncated.float().mean()),
        "time/generate_s": gen_s, "time/reward_s": times.get("time/reward_s", 0.0), "time/train_s": 0.0,
        "kl": None,  # stays None without a reference model (kl_coef = 0): nothing to measure against
        "tokens_per_s": times.get("tokens", 0) / max(gen_s, 1e-9),  # generated tokens, all sampling rounds
    }
    return row


def train(recipe: Recipe, out: Path, resume: bool = False) -> Path:
    """Run the RL stage into `out/rl`, starting from `rl.init` (default: out/sft if finished, else the base)."""
    cfg, run = recipe.rl, recipe.run
    st = open_stage(recipe, out, "rl", cfg.init, resume)
    stage, device, task, start, ckpt, tokenizer, policy = (st.dir, st.device, st.task, st.start, st.ckpt,
                                                           st.tokenizer, st.model)
    dist = current()
    if dist.world > 1 and cfg.advantage == "reinforce_pp":
        raise ValueError("rl.advantage=reinforce_pp whitens over the whole batch, which is split over the "
                         f"{dist.world} processes here; use grpo, dr_grpo, rloo or gae, or one process")
    ref = None
    if cfg.kl_coef != 0:  # with LoRA the reference is the policy with its adapter switched off: no second copy
        ref = (AdapterOff(policy) if is_lora(policy)
               else load_model(start, run.dtype, device).eval().requires_grad_(False))
    value_head = torch.nn.Linear(policy.config.hidden_size, 1).to(device) if cfg.advantage == "gae" else None
    if value_head is not None:
        torch.nn.init.zeros_(value_head.weight), torch.nn.init.zeros_(value_head.bias)
    trainable = list(policy.parameters()) + (list(value_head.parameters()) if value_head is not None else [])
    opt = build_optimizer(trainable, cfg.lr, cfg.weight_decay)
    sched = build_scheduler(opt, cfg.schedule, cfg.steps, cfg.warmup, cfg.min_lr_ratio)
    reward_fn = build_reward([s.model_dump() for s in cfg.rewards], task=task)
    sampler = build_sampler(cfg.sampler, tokenizer)
    pool = task.examples("train", recipe.task.train_size, run.seed)
    val = task.examples("val", recipe.task.val_size, run.seed)
    gen = torch.Generator().manual_seed(run.seed)
    state: dict[str, Any] = {"step": 0, "cursor": 0, "best": None, "elapsed": 0.0, "flat_steps": 0}
    extra = {"value_head": value_head} if value_head is not None else None
    if ckpt is not None:
        state = load_trainer_state(ckpt, opt, sched, {"sampler": gen}, extra)
        console.print(f"rl: resumed from {ckpt} at step {state['step']}")
    log = MetricsLog(stage / "metrics.jsonl", resume_step=state["step"] if ckpt else None) if dist.is_main else None
    nonfinite = NonFinite("rl", run.max_nonfinite_steps, state)
    # the engine's wrapper (DDP / FSDP) when launched on several ranks; FSDP loads the optimizer state here
    trained, opt = dist.prepare(policy, opt, ckpt, recipe, "rl")
    sampling = {"prompt_ids": lambda exs: encode_prompts(tokenizer, exs, recipe.prompt),
                "sampling": SamplingParams(n=cfg.group_size, max_new_tokens=cfg.max_new_tokens,
                                           temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                                           stop=cfg.stop, eos_ids=eos_ids(tokenizer, policy)),
                "demo_ids": lambda exs: [[*ids, tokenizer.eos_token_id] for ids in tokenizer(  # Prefix-RFT's y*:
                    [render_target(e, recipe.prompt.strategy) for e in exs], add_special_tokens=False).input_ids],
                "generator": gen,  # the sampling noise (DUPO's draws and PAD's too); saved with each checkpoint
                "multiturn": build_multiturn(recipe, task, sampler, tokenizer)}  # rl.env's rollouts, or None
    if cfg.prefilter is not None:
        if "pool_ids" not in state:  # measured once with the starting policy, kept in the state for resume
            state["pool_ids"] = prefilter_pool(policy, tokenizer, sampler, task, pool, recipe)
        pool = [pool[i] for i in state["pool_ids"]]
        if not pool:
            raise ValueError("rl.prefilter: no training prompt has a pass rate in [min_pass, max_pass]; "
                             "widen the window")
    full_pool = pool  # rl.curriculum trains a phase of it (plus carried hard examples) at a time
    console.print(f"rl: from {start}, {cfg.steps} steps of {cfg.prompts_per_step}×{cfg.group_size}, "
                  f"advantage={cfg.advantage}, filter={cfg.filter}, device={device}"
                  + (f", {dist.world} processes" if dist.world > 1 else ""))

    t_start = time.perf_counter() - state["elapsed"]
    save = lambda name=None: save_on_main(stage, policy, tokenizer, state, "rl", opt, sched,  # noqa: E731
                                          {"sampler": gen}, extra, name=name)

    last = ckpt
    with progress(run.quiet) as bar:
        bar_id = bar.add_task("rl", total=cfg.steps, completed=state["step"], info="")
        while state["step"] < cfg.steps:
            phase = {}
            if cfg.curriculum is not None:  # QwenLong-L1: the current phase's pool (coldstart.curriculum)
                pool, phase = curriculum_pool(full_pool, state, cfg.curriculum, cfg.steps, run.seed)
            probe = _tune_temperature(policy, sampler, pool, state, recipe, sampling)
            row = {"step": state["step"] + 1,
                   **rl_step(policy, ref, value_head, opt, sampler, reward_fn, pool, state, recipe, sampling,
                             trained),
                   "temperature": recipe.rl.temperature, **probe, **phase}
            with warnings.catch_warnings():  # a step whose batch was all flat makes no optimizer step
                warnings.simplefilter("ignore", UserWarning)
                sched.step()
            state["step"] += 1
            state["elapsed"] = time.perf_counter() - t_start
            row.update({"lr": sched.get_last_lr()[0], "time/elapsed_s": state["elapsed"]})
            if dist.world > 1:  # the step's metrics over every rank's share of the batch
                row = merge_rows(dist.gather_objects(row))
                row["dist/param_checksum"] = dist.check_in_sync(policy, state["step"])
            nonfinite.check(not row["optimizer_steps_skipped"], state["step"], last)
            row["nonfinite_steps"] = state["nonfinite_total"]
            warn_flat(row, state)
            if cfg.eval_every and val and (state["step"] % cfg.eval_every == 0 or state["step"] == cfg.steps):
                row.update(evaluate_val(policy, tokenizer, task, val, recipe))
                if state["best"] is None or row["eval/accuracy"] > state["best"]:
                    state["best"] = row["eval/accuracy"]
                    save("best")
            if log is not None:
                log.write(row)
            bar.update(bar_id, completed=state["step"],
                       info=f"reward {row['reward/mean']:.3f} zero-std {row['groups/zero_std_frac']:.2f}")
            if cfg.save_every and state["step"] % cfg.save_every == 0 and state["step"] < cfg.steps:
                last = save()
            if cfg.max_seconds is not None and state["elapsed"] >= cfg.max_seconds:
                break
    last = save()
    best = stage / "checkpoints" / "best"
    final = best if cfg.keep_best and best.is_dir() else last
    summary = {"stage": "rl", "steps": state["step"], "seconds": state["elapsed"],
               "best_val_accuracy": state["best"], "flat_steps": state["flat_steps"],
               "nonfinite_steps": state["nonfinite_total"]}
    if dist.is_main:
        finalize_stage(stage, final, summary, lora_base=start if recipe.model.lora else None)
    dist.barrier()
    if state["flat_steps"]:
        console.print(f"rl: {state['flat_steps']} of {state['step']} steps had reward std 0 in ≥90% of groups")
    console.print(f"rl: done in {state['elapsed']:.0f}s; model in {stage}")
    return stage


def _tune_temperature(policy, sampler, pool, state: dict, recipe: Recipe, sampling: dict) -> dict[str, float]:
    """With `rl.target_entropy`, set the sampling (and trainer) temperature by coldstart.temperature's rule
    at the first step and every `rl.temperature_retune_every` steps; a resumed run keeps its choice.
    Returns `temperature/entropy@T` metrics when it measured."""
    cfg = recipe.rl
    if cfg.target_entropy is None:
        return {}
    due = "temperature" not in state or (cfg.temperature_retune_every and state["step"] > 0
                                          and state["step"] % cfg.temperature_retune_every == 0)
    measured: dict[float, float] = {}
    if due:
        # Probe prompts and noise of their own, so tuning leaves the training stream (and resume) untouched.
        examples = prompt_batch(pool, 0, min(cfg.probe_prompts, len(pool)), recipe.run.seed + 1)
        prompt_ids = sampling["prompt_ids"](examples)
        gen = torch.Generator().manual_seed(recipe.run.seed * 1009 + state["step"])

        def entropy_at(t: float) -> float:
            params = dataclasses.replace(sampling["sampling"], n=1, temperature=t)
            ro = sampler.sample(policy, prompt_ids, params, gen)
            with torch.no_grad():
                ent = sequence_logprobs(policy, ro, t, need_entropy=True)[1]
            m = ro.completion_mask.float()
            return float((ent * m).sum() / m.sum().clamp(min=1))

        state["temperature"], measured = pick_temperature(entropy_at, cfg.temperature_candidates,
                                                          cfg.target_entropy)
    cfg.temperature = state["temperature"]
    sampling["sampling"] = dataclasses.replace(sampling["sampling"], temperature=state["temperature"])
    return {f"temperature/entropy@{t:g}": h for t, h in measured.items()}
