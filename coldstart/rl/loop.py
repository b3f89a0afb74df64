"""The RL loop: `train` builds the run once from the recipe (`build_run`), then calls `rl_step` per step and
keeps the stage's books through infra.books.StageRun (metrics, NaN policy, best and periodic checkpoints,
resume), as sft, rsft and dpo do.

One step, in data-flow order (`rl_step`):

    sample      B prompts × G completions from the run's rollout source, scored; groups filtered, refilled (sample.py)
    advantage   per-token advantages from the run's estimator (token rewards and values when it needs them)
    transforms  post-advantage reshaping built once: turn credits, Prefix-RFT's prefix advantage, PAD selection
    update      μ epochs of PPO-clip over minibatches of micro-batches (update.py)
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..algorithms import gae, kl_penalty, outcome_token_rewards
from ..algorithms.turn_credit import REWEIGHTING_CREDITS
from ..config import Recipe
from ..evaluate import encode_prompts, evaluate
from ..infra.books import VAL_ACCURACY, StageRun
from ..infra.distributed import current, merge_rows
from ..infra.runtime import Timer, build_optimizer, build_scheduler, console, progress
from ..infra.stage import open_stage
from ..models import eos_ids, is_lora, load_model
from ..multiturn import build_multiturn, credit_advantages, evaluate_env
from ..rewards import build_reward
from ..rollout import SamplingParams, build_sampler
from ..rollout_utils import select_rows
from ..types import Example
from .logprobs import sequence_logprobs
from .prefix_rft import PrefixAdvantage
from .records import Advantaged, Algorithms, StepBatch, TrainerState, UpdateSettings
from .sample import RolloutSource, SampleSettings, build_source, sample_step, sampling_params
from .schedule import phase_pool, training_pool, tune_temperature
from .update import passive_metrics, update


class AdapterOff:
    """Calls a peft model with its adapters disabled: the frozen reference policy of a LoRA run."""

    def __init__(self, policy):
        self.policy = policy

    def __call__(self, **inputs):
        with self.policy.disable_adapter():
            return self.policy(**inputs)


# ---- post-advantage transforms: (policy, Advantaged, step, temperature) -> (Advantaged, metrics) -----------
@dataclass(frozen=True)
class TurnCredit:
    """UserRL: spread each trajectory's advantage over its turns by their credits (multiturn.credit_advantages)."""

    kind: str
    gamma: float

    def __call__(self, policy, batch: Advantaged, step: int, temperature: float) -> tuple[Advantaged, dict]:
        """batch.adv (N, T) reweighted per turn; the turns/ metrics."""
        adv, metrics = credit_advantages(batch.adv, batch.turns, self.kind, self.gamma)
        return dataclasses.replace(batch, adv=adv), metrics


@dataclass(frozen=True)
class SequenceSelection:
    """A sequence-level filter (Filter.acts_on == "sequences", e.g. ReVisual-R1's PAD): the rows whose mean
    advantage it selects go into the loss, τ annealed linearly from tau_start to tau_end over the run."""

    select: Any  # FILTERS[name].select
    options: dict  # t_low, t_high, rho (rl.pad)
    tau_start: float
    tau_end: float
    steps: int
    generator: torch.Generator  # the run's sampling generator, saved with every checkpoint

    def __call__(self, policy, batch: Advantaged, step: int, temperature: float) -> tuple[Advantaged, dict]:
        """Every (N, ...) field of batch sliced to the selected rows; the filter's metrics."""
        frac = step / max(1, self.steps - 1)
        tau = self.tau_start + (self.tau_end - self.tau_start) * min(1.0, frac)
        m = batch.rollouts.completion_mask.float()
        seq_adv = (batch.adv * m).sum(1) / m.sum(1).clamp(min=1)  # (N,): the sequence's (mean) advantage
        rows, metrics = self.select(seq_adv.cpu(), **self.options, tau=tau, generator=self.generator)
        sub = select_rows(batch.rollouts, rows)
        T = sub.completion_ids.shape[1]
        adv, returns, values = (None if x is None else x[rows][:, :T] for x in (batch.adv, batch.returns, batch.values))
        return Advantaged(sub, batch.scores[rows], adv, returns, values,
                          None if batch.turns is None else batch.turns.select(rows)), metrics


# ---- the run, built once ------------------------------------------------------------------------------------
@dataclass
class RLRun:
    """Everything a step uses, built once from the recipe; the recipe itself is not read by the step."""

    policy: Any
    ref: Any  # the frozen reference policy (rl.kl_coef ≠ 0) or None
    value_head: torch.nn.Module | None  # with an estimator that needs values (gae)
    opt: torch.optim.Optimizer
    source: RolloutSource
    sampler: Any  # the rollout.Sampler the source samples with (also the temperature probe's)
    prompt_ids: Any  # examples → rendered prompt token ids
    algorithms: Algorithms
    update: UpdateSettings
    sample: SampleSettings
    params: SamplingParams  # the rollouts' sampling (its temperature replaced by a tuned one per step)
    transforms: list = field(default_factory=list)
    generator: torch.Generator | None = None  # the sampling noise (DUPO's and PAD's draws too)
    pad_id: int = 0
    trained: Any = None  # the policy as DDP / FSDP wrapped it for training, when launched on several ranks
    gamma: float = 1.0
    lam: float = 0.95


def build_run(recipe: Recipe, policy, tokenizer, task, opt, ref=None, value_head=None, reward_fn=None,
              sampler=None, generator=None, trained=None, algos: Algorithms | None = None) -> RLRun:
    """The RLRun of `recipe` around a policy and its optimizer: rollout source, resolved algorithms (`algos`,
    or resolved and checked here), settings and post-advantage transforms. Refuses what cannot run, at once
    (not at the first step)."""
    cfg = recipe.rl
    algos = algos or checked_algorithms(cfg)
    sampler = sampler or build_sampler(cfg.sampler, tokenizer)
    reward_fn = reward_fn or build_reward([s.model_dump() for s in cfg.rewards], task=task, search=recipe.folders,
                             stop_on_failure=False)
    prompt_ids = lambda exs: encode_prompts(tokenizer, exs, recipe.prompt)  # noqa: E731
    source = build_source(recipe, sampler, tokenizer, prompt_ids, reward_fn, build_multiturn(recipe, task, sampler,
                                                                                            tokenizer))
    generator = generator or torch.Generator().manual_seed(recipe.run.seed)
    transforms: list = []
    if cfg.env is not None and cfg.turn_credit in REWEIGHTING_CREDITS:
        transforms.append(TurnCredit(cfg.turn_credit, cfg.turn_gamma))
    if cfg.prefix_rft is not None:
        transforms.append(PrefixAdvantage(cfg.group_size, cfg.prefix_rft.entropy_top, algos.estimator.std_normalised))
    if algos.filter.acts_on == "sequences":
        pad = cfg.pad
        transforms.append(SequenceSelection(algos.filter.select,
                                            {"t_low": pad.t_low, "t_high": pad.t_high, "rho": pad.rho},
                                            pad.tau_start, pad.tau_end, cfg.steps, generator))
    sample = SampleSettings(cfg.prompts_per_step, cfg.group_size,
                            1 + (cfg.max_resample if algos.filter.refills else 0), recipe.run.seed,
                            cfg.curriculum is not None, cfg.steps)
    return RLRun(policy, ref, value_head, opt, source, sampler, prompt_ids, algos,
                 UpdateSettings.from_config(cfg, algos.aggregation),
                 sample, sampling_params(cfg, eos_ids(tokenizer, policy), cfg.temperature), transforms, generator,
                 tokenizer.pad_token_id, trained, cfg.gamma, cfg.lam)


def checked_algorithms(cfg) -> Algorithms:
    """The recipe's algorithms, resolved; refuses, before anything is built, what they cannot do here."""
    algos = Algorithms.from_config(cfg)
    if current().world > 1 and algos.estimator.batch_normalised:
        raise ValueError(f"rl.advantage={cfg.advantage} normalises over the whole batch, which is split over the "
                         f"{current().world} processes here; use grpo, dr_grpo or rloo, or one process")
    if cfg.kl_in_reward and cfg.kl_coef != 0 and not algos.estimator.takes_token_rewards:
        raise ValueError(f"rl.kl_in_reward: rl.advantage={cfg.advantage} takes no per-token rewards; put the KL "
                         f"in the loss (rl.kl_in_reward=false) or use reinforce_pp or gae")
    return algos


# ---- one step -----------------------------------------------------------------------------------------------
def rl_step(run: RLRun, pool: list[Example], state: TrainerState) -> dict:
    """One RL step: sample → reward → filter → advantage → transforms → update. Returns the step's metrics
    row (this rank's)."""
    temperature = state.temperature_or(run.update.temperature)
    settings = dataclasses.replace(run.update, temperature=temperature)
    batch = sample_step(run.policy, run.source, run.algorithms.filter, pool, state, run.sample,
                        dataclasses.replace(run.params, temperature=temperature), run.generator, run.pad_id)
    row = dict(batch.metrics)
    first = batch.first
    if current().max(len(batch.examples)) == 0:  # every group uninformative and no refill found one
        return {**row, **passive_metrics(run.policy, run.ref, first.rollouts, settings), "rows/trained": 0,
                "rows/skipped": first.rollouts.completion_mask.shape[0], "optimizer_steps": 0,
                "optimizer_steps_skipped": 0}
    if not batch.examples:  # other ranks train: this one joins their passes with zero weight
        batch = StepBatch([], first.rollouts, first.scores, first.turns, first, batch.metrics, weight=0.0)
    times: dict[str, float] = {}
    with Timer(times, "time/train_s"):
        adv, metrics = advantage(run, batch, settings)
        row.update(metrics)
        for transform in run.transforms:
            adv, metrics = transform(run.policy, adv, state.step, temperature)
            row.update(metrics)
        row.update(update(run.trained or run.policy, run.ref, run.value_head, run.opt, adv.rollouts, adv.adv,
                          adv.returns, adv.values, settings, batch.weight))
        idle = not row["rows/trained"]  # every advantage was 0: measure the policy without training it
        if current().max(float(idle)) if current().sharded else idle:  # FSDP: every rank runs its passes
            passive = passive_metrics(run.policy, run.ref, adv.rollouts, settings)
            row.update(passive if idle else {})
    row["time/train_s"] = times["time/train_s"]
    return row


def advantage(run: RLRun, batch: StepBatch, s: UpdateSettings) -> tuple[Advantaged, dict]:
    """The estimator's per-token advantages (N, T) of the batch, with −β·KL token rewards (rl.kl_in_reward)
    and the value head's values and GAE returns when the estimator needs them; its metrics (the zero-std
    share is the filter's, measured before any refill)."""
    ro, mask = batch.rollouts, batch.rollouts.completion_mask
    scores = batch.scores.to(mask.device)  # rewards are computed on the CPU
    token_rewards = values = returns = None
    if s.kl_in_reward and run.ref is not None:  # ReFT / REINFORCE++: −β·KL per token in the reward
        with torch.no_grad():
            ref_logp = sequence_logprobs(run.ref, ro, s.temperature)[0]
        token_rewards = -s.kl_coef * kl_penalty(ro.logprobs, ref_logp, s.kl_type) * mask
    if run.value_head is not None:
        with torch.no_grad():
            values = sequence_logprobs(run.policy, ro, s.temperature, run.value_head)[2] * mask
        returns = gae(outcome_token_rewards(scores, mask, token_rewards), values, mask, run.gamma, run.lam)[1]
    adv, metrics = run.algorithms.estimator(scores, mask, run.sample.group_size, token_rewards=token_rewards,
                                            values=values, gamma=run.gamma, lam=run.lam)
    return (Advantaged(ro, scores, adv, returns, values, batch.turns),
            {k: v for k, v in metrics.items() if k != "groups/zero_std_frac"})


# ---- the stage ----------------------------------------------------------------------------------------------
def evaluate_val(policy, tokenizer, task, val, recipe: Recipe) -> dict[str, float]:
    """The evaluation suite on the val split, as `val/...` metrics: greedy accuracy, length, reflections,
    and with `rl.eval_samples` = k > 0 also pass@k, maj@k and mean@k from k samples per prompt."""
    cfg = recipe.eval.model_copy(update={"samples": recipe.rl.eval_samples,
                                         "max_new_tokens": recipe.rl.max_new_tokens})
    result = evaluate(policy, tokenizer, task, val, recipe.prompt, cfg, recipe.run.seed)
    if recipe.rl.env is not None:  # whole greedy games: turns/mean, turns/solved
        games = build_multiturn(recipe, task, build_sampler(recipe.rl.sampler, tokenizer), tokenizer)
        result.update(evaluate_env(games, policy, val, recipe.rl.max_new_tokens, eos_ids(tokenizer, policy)))
    return {f"val/{k}": v for k, v in result.items() if isinstance(v, float)}


def warn_flat(row: dict, state: TrainerState) -> None:
    """Say plainly when (almost) every group has identical rewards: the policy gradient is zero there."""
    if row["groups/zero_std_frac"] >= 0.9:
        state.flat_steps += 1
        if state.flat_steps == 1:
            failing = {k[len("reward/failed/"):]: v for k, v in row.items() if k.startswith("reward/failed/") and v}
            why = ("reward " + ", ".join(f"{k!r} failed on {v:.0%}" for k, v in failing.items()) + " of the samples "
                   "(scored 0): fix it first (see the warnings above, or coldstart inspect)" if failing
                   else "the policy almost never succeeds: start RL from an SFT cold start (or an easier task)"
                   if row["reward/mean"] < 0.5 else "the prompts are too easy for this policy: use harder ones")
            console.print(f"rl: step {row['step']}: {row['groups/zero_std_frac']:.0%} of groups have "
                          f"reward std 0 (every sample scored the same), so they carry no learning signal; "
                          f"{why}. (`rl.filter: dynamic` resamples such groups.)", style="yellow")


def _models(recipe: Recipe, policy, start, device, estimator):
    """The reference policy (rl.kl_coef ≠ 0; with LoRA the policy with its adapter off, no second copy) and
    the value head (an estimator that needs values), zero-initialised."""
    cfg, ref = recipe.rl, None
    if cfg.kl_coef != 0:
        ref = (AdapterOff(policy) if is_lora(policy)
               else load_model(start, recipe.run.dtype, device).eval().requires_grad_(False))
    value_head = None
    if estimator.needs_values:
        value_head = torch.nn.Linear(policy.config.hidden_size, 1).to(device)
        torch.nn.init.zeros_(value_head.weight), torch.nn.init.zeros_(value_head.bias)
    return ref, value_head


def train(recipe: Recipe, out: Path, resume: bool = False) -> Path:
    """Run the RL stage into `out/rl`, starting from `rl.init` (default: out/sft if finished, else the base)."""
    cfg, run_cfg, dist = recipe.rl, recipe.run, current()
    algos = checked_algorithms(cfg)  # an unknown, unimportable or unsupported choice fails before anything is built
    st = open_stage(recipe, out, "rl", cfg.init, resume)
    ref, value_head = _models(recipe, st.model, st.start, st.device, algos.estimator)
    trainable = list(st.model.parameters()) + (list(value_head.parameters()) if value_head is not None else [])
    opt = build_optimizer(trainable, cfg.lr, cfg.weight_decay)
    sched = build_scheduler(opt, cfg.schedule, cfg.steps, cfg.warmup, cfg.min_lr_ratio)
    reward_fn = build_reward([s.model_dump() for s in cfg.rewards], task=st.task, search=recipe.folders,
                             stop_on_failure=False)
    sampler = build_sampler(cfg.sampler, st.tokenizer)
    pool = st.task.examples("train", recipe.task.train_size, run_cfg.seed)
    val = st.task.examples("val", recipe.task.val_size, run_cfg.seed)
    gen = torch.Generator().manual_seed(run_cfg.seed)
    books = StageRun("rl", st, TrainerState(), optimizer=opt, scheduler=sched, generators={"sampler": gen},
                     modules={"value_head": value_head} if value_head is not None else None,
                     keep_best=cfg.keep_best, save_every=cfg.save_every, max_nonfinite=run_cfg.max_nonfinite_steps,
                     lora=recipe.model.lora is not None, read_state=TrainerState.from_dict)
    trained, books.optimizer = dist.prepare(st.model, opt, st.ckpt, recipe, "rl")  # FSDP loads the optimizer state
    run = build_run(recipe, st.model, st.tokenizer, st.task, books.optimizer, ref, value_head, reward_fn, sampler,
                    gen, trained, algos)
    full_pool = training_pool(st.model, st.tokenizer, st.task, pool, books.state, recipe)
    console.print(f"rl: from {st.start}, {cfg.steps} steps of {cfg.prompts_per_step}×{cfg.group_size}, "
                  f"advantage={cfg.advantage}, filter={cfg.filter}, device={st.device}"
                  + (f", {dist.world} processes" if dist.world > 1 else ""))
    _loop(run, recipe, full_pool, val, books, sched)
    state = books.state
    if state.flat_steps:
        console.print(f"rl: {state.flat_steps} of {state.step} steps had reward std 0 in ≥90% of groups")
    return books.finish({"flat_steps": state.flat_steps})


def _loop(run: RLRun, recipe: Recipe, full_pool, val, books: StageRun, sched) -> None:
    """The steps from `state.step` to rl.steps (or rl.max_seconds): each step's row logged, the val suite run
    every rl.eval_every steps (the best kept as checkpoints/best), a checkpoint every rl.save_every."""
    cfg, dist, state, st = recipe.rl, current(), books.state, books.st
    books.start_clock()
    with progress(recipe.run.quiet) as bar:
        bar_id = bar.add_task("rl", total=cfg.steps, completed=state.step, info="")
        while state.step < cfg.steps:
            pool, phase = phase_pool(full_pool, state, cfg.curriculum, cfg.steps, recipe.run.seed)
            probe = tune_temperature(run.policy, run.sampler, pool, state, recipe, run.prompt_ids, run.params)
            row = {"step": state.step + 1, **rl_step(run, pool, state),
                   "temperature": state.temperature_or(cfg.temperature), **probe, **phase}
            # update already skipped the non-finite optimizer steps (on every rank alike): the books count them
            books.skip_step(not row["optimizer_steps_skipped"])
            with warnings.catch_warnings():  # a step whose batch was all flat makes no optimizer step
                warnings.simplefilter("ignore", UserWarning)
                sched.step()
            books.advance()
            row.update({"lr": sched.get_last_lr()[0], "time/elapsed_s": state.elapsed})
            if dist.world > 1:  # the step's metrics over every rank's share of the batch
                row = merge_rows(dist.gather_objects(row))
                row["dist/param_checksum"] = dist.check_in_sync(run.policy, state.step)
            row["nonfinite_steps"] = books.nonfinite_total
            warn_flat(row, state)
            if cfg.eval_every and val and (state.step % cfg.eval_every == 0 or state.step == cfg.steps):
                row.update(evaluate_val(run.policy, st.tokenizer, st.task, val, recipe))
                books.track_best(row[VAL_ACCURACY])
            books.write(row)
            bar.update(bar_id, completed=state.step,
                       info=f"reward {row['reward/mean']:.3f} zero-std {row['groups/zero_std_frac']:.2f}")
            books.save_if_due(cfg.steps)
            if cfg.max_seconds is not None and state.elapsed >= cfg.max_seconds:
                break
