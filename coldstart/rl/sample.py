"""The sampling phase of an RL step: B prompts × G completions from a rollout source, scored, filtered and
(with a refilling filter such as DAPO's dynamic sampling) refilled until B informative groups are kept.

A rollout source is chosen once per run (`build_source`):
- `PlainSource`: the sampler (coldstart.rollout) on the rendered prompts; rewards from `rl.rewards`;
- `PrefixSource`: Prefix-RFT hybrids, G−k on-policy rows and k continuing a demonstration prefix (prefix_rft.py);
- `EpisodeSource`: multi-turn episodes against `rl.env` (coldstart.multiturn); the environment scores them.

Every prompt's completions are seeded by its position in the run's prompt stream (`prompt_seed`), so they do
not depend on the batch, the process or the number of processes that sample it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from ..algorithms import expand_groups
from ..curriculum import record_rewards
from ..infra.distributed import current
from ..infra.runtime import Timer
from ..multiturn import Turns
from ..prompts import chat_format
from ..rewards.combine import RewardState, score_rows, stop_if_failed
from ..rollout import SamplingParams
from ..rollout_utils import cat_rollouts, select_rows
from ..types import Example, Rollouts
from .prefix_rft import sample_with_prefix
from .records import Round, StepBatch, TrainerState


def prompt_batch(pool: list[Example], cursor: int, n: int, seed: int) -> list[Example]:
    """Examples `cursor .. cursor+n` of an endless stream: a fresh seeded permutation of the pool per pass."""
    out = []
    for c in range(cursor, cursor + n):
        epoch, i = divmod(c, len(pool))
        perm = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed * 7919 + epoch))
        out.append(pool[int(perm[i])])
    return out


def prompt_seed(seed: int, position: int) -> int:
    """The sampling seed of the prompt at `position` of the run's prompt stream: a prompt's completions
    do not depend on the batch, the process or the number of processes that samples it."""
    return (seed * 1_000_003 + position) * 2_654_435_761 % (1 << 62)


def score(reward_fn, examples: list[Example], ro: Rollouts, group_size: int, state: RewardState | None = None,
          prefix: str = "") -> tuple[torch.Tensor, Any]:
    """(N,) float rewards for the rollouts of `examples` (each repeated G times), and the RewardResult.

    Rewards are called as TRL calls them (coldstart.rewards.reward_inputs). An item no reward part applies to
    (every part returned None) gets its group's mean over the scorable items, 0 when none is: advantage 0
    under the group-mean baselines, as TRL's NaN rewards give (TRL also leaves it out of the group's std,
    where it counts here as one item at the mean)."""
    rows = [ex for ex in examples for _ in range(group_size)]
    ids = [r[m].tolist() for r, m in zip(ro.completion_ids, ro.completion_mask)]
    result = score_rows(reward_fn, rows, ro.texts, completion_ids=ids, truncated=ro.truncated.tolist(),
                        trainer_state=state, prefix=prefix)
    return fill_unscorable(torch.tensor(result.total, dtype=torch.float32), group_size), result


def fill_unscorable(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """(N,) scores with each NaN replaced by its group's mean over the non-NaN ones (0 for an all-NaN group).

    >>> fill_unscorable(torch.tensor([1.0, float("nan"), 0.0, float("nan"), float("nan"), float("nan")]), 3)
    tensor([1.0000, 0.5000, 0.0000, 0.0000, 0.0000, 0.0000])
    """
    groups = scores.view(-1, group_size)
    known = ~groups.isnan()
    means = torch.where(known, groups, 0.0).sum(-1, keepdim=True) / known.sum(-1, keepdim=True).clamp(min=1)
    return torch.where(known, groups, means).view(-1)


# ---- rollout sources ----------------------------------------------------------------------------------------
@dataclass
class Drawn:
    """What a source sampled for B prompts: N = B×G rows; an environment's scores and turns when it scored them."""

    rollouts: Rollouts
    scores: torch.Tensor | None = None  # (N,) when the source scores its own rollouts (environments)
    result: Any = None
    turns: Turns | None = None


class RolloutSource(Protocol):
    """Samples G completions for each of B prompts and scores them: the first phase of an RL step."""

    def sample(self, policy, examples: list[Example], params: SamplingParams, generator: torch.Generator,
               seeds: list[int], step: int) -> Drawn: ...

    def score(self, examples: list[Example], drawn: Drawn, state: RewardState | None = None
              ) -> tuple[torch.Tensor, Any]: ...


@dataclass
class PlainSource:
    """The sampler on the rendered prompts; `rl.rewards` score the completions."""

    sampler: Any
    reward_fn: Any
    prompt_ids: Any  # examples → list of prompt token ids
    group_size: int
    completion_prefix: str = ""  # what the chat template's generation prompt writes of each completion

    def sample(self, policy, examples, params, generator, seeds, step) -> Drawn:
        """(B,) examples → Drawn with B×G rollouts."""
        return Drawn(self.sampler.sample(policy, self.prompt_ids(examples), params, generator, seeds))

    def score(self, examples, drawn, state=None) -> tuple[torch.Tensor, Any]:
        """(N,) rewards and the RewardResult."""
        return score(self.reward_fn, examples, drawn.rollouts, self.group_size, state, self.completion_prefix)


@dataclass
class PrefixSource:
    """Prefix-RFT: per prompt G−k on-policy rows and k hybrids continuing its demonstration's prefix; `rl.rewards`
    score them as PlainSource does."""

    sampler: Any
    reward_fn: Any
    prompt_ids: Any  # examples → list of prompt token ids
    group_size: int
    demo_ids: Any  # examples → demonstration token ids (the SFT target, eos appended)
    prefix: Any  # rl.prefix_rft
    steps: int  # rl.steps (the prefix schedule runs over them)
    completion_prefix: str = ""  # what the chat template's generation prompt writes of each completion

    def sample(self, policy, examples, params, generator, seeds, step) -> Drawn:
        """(B,) examples → Drawn with B×G rows, the hybrids' prefix tokens marked in `prefix_mask`."""
        return Drawn(sample_with_prefix(policy, self.sampler, self.prompt_ids(examples), self.demo_ids(examples),
                                        params, generator, step, self.steps, self.prefix, self.group_size,
                                        seeds))

    def score(self, examples, drawn, state=None) -> tuple[torch.Tensor, Any]:
        """(N,) rewards and the RewardResult."""
        return score(self.reward_fn, examples, drawn.rollouts, self.group_size, state, self.completion_prefix)


@dataclass
class EpisodeSource:
    """Multi-turn episodes (coldstart.multiturn): the environment answers every turn and scores it."""

    episodes: Any  # MultiTurnRollout

    def sample(self, policy, examples, params, generator, seeds, step) -> Drawn:
        """(B,) examples → Drawn with B×G trajectories, their scores and per-turn rewards."""
        ro, scores, result, turns = self.episodes(policy, examples, params, generator)
        return Drawn(ro, scores, result, turns)

    def score(self, examples, drawn, state=None) -> tuple[torch.Tensor, Any]:
        """The environment's scores, computed while sampling."""
        return drawn.scores, drawn.result


def build_source(recipe, sampler, tokenizer, prompt_ids, reward_fn, episodes) -> RolloutSource:
    """The run's rollout source: episodes (a MultiTurnRollout) with `rl.env`, Prefix-RFT hybrids with
    `rl.prefix_rft`, else plain sampling. `prompt_ids`: examples → rendered prompt token ids."""
    cfg, fmt = recipe.rl, chat_format(tokenizer, recipe.prompt)
    if episodes is not None:
        return EpisodeSource(episodes)
    if cfg.prefix_rft is None:
        return PlainSource(sampler, reward_fn, prompt_ids, cfg.group_size, fmt.prefix)
    demo_ids = lambda exs: [[*ids, tokenizer.eos_token_id] for ids in tokenizer(  # noqa: E731  Prefix-RFT's y*
        [fmt.target(e) for e in exs], add_special_tokens=False).input_ids]
    return PrefixSource(sampler, reward_fn, prompt_ids, cfg.group_size, demo_ids, cfg.prefix_rft, cfg.steps,
                        fmt.prefix)


# ---- one step's sampling, with refill -----------------------------------------------------------------------
@dataclass(frozen=True)
class SampleSettings:
    """What the sampling phase needs from the recipe, built once."""

    prompts_per_step: int  # global B
    group_size: int
    max_rounds: int  # 1 + rl.max_resample with a refilling filter, else 1
    seed: int
    record_curriculum: bool  # keep per-prompt rewards for rl.curriculum's retrospective sampling
    steps: int = 0  # rl.steps (trainer_state.max_steps of the reward functions)


def sample_step(policy, source: RolloutSource, group_filter, pool: list[Example], state: TrainerState,
                st: SampleSettings, params: SamplingParams, gen: torch.Generator, pad_id: int) -> StepBatch:
    """Sample B prompts × G; a refilling filter resamples new prompts until B informative groups (or the cap).
    Advances `state.cursor` by the global batch per round; records curriculum rewards in `state.curriculum`."""
    dist, G = current(), st.group_size
    part = dist.shard(st.prompts_per_step, "rl.prompts_per_step")  # this rank's prompts of the global batch
    B = part.stop - part.start
    kept_ro, kept_ex, kept_scores, kept_turns, parts, times, first = [], [], [], [], [], {}, None
    opts = {"generator": gen} if group_filter.needs_generator and group_filter.acts_on == "groups" else {}
    for rounds in range(st.max_rounds):  # noqa: B007
        start = state.cursor + part.start
        examples = prompt_batch(pool, start, B, st.seed)
        seeds = [prompt_seed(st.seed, c) for c in range(start, start + B)]
        state.cursor += st.prompts_per_step
        with Timer(times, "time/generate_s"):
            drawn = source.sample(policy, examples, params, gen, seeds, state.step)
        times["tokens"] = times.get("tokens", 0) + int(drawn.rollouts.lengths.sum())
        with Timer(times, "time/reward_s"):
            scores, result = source.score(examples, drawn, reward_state(state, st, len(pool), dist.rank))
        stop_if_failed(result, dist)  # on every rank alike (the reward was built with stop_on_failure=False)
        if st.record_curriculum:  # every rank's per-prompt rewards, for retrospective sampling (curriculum.py)
            for prompts, sc in dist.gather_objects(([e.key for e in examples], scores.cpu())):
                record_rewards(state.curriculum["rewards"], prompts, sc, G)
        keep, fmetrics = group_filter(scores, G, **opts)  # (K,) group indices; DUPO repeats some
        if first is None:  # what the policy itself produced, before any refill
            first = Round(drawn.rollouts, scores, result, fmetrics, drawn.turns)
        parts.append(result)
        rows = expand_groups(keep, G)
        kept_ro.append(select_rows(drawn.rollouts, rows))
        kept_ex += [examples[g] for g in keep.tolist()]
        kept_scores.append(scores[rows])
        if drawn.turns is not None:
            kept_turns.append(drawn.turns.select(rows))
        if dist.max(float(len(kept_ex) < B)) == 0:  # every rank's share is full
            break
    n = min(len(kept_ex), B)
    ro = select_rows(cat_rollouts(kept_ro, pad_id), torch.arange(n * G))
    turns = Turns.cat(kept_turns).select(torch.arange(n * G)) if kept_turns else None
    return StepBatch(kept_ex[:n], ro, torch.cat(kept_scores)[: n * G], turns, first,
                     rollout_metrics(first, parts, times, rounds))


def reward_state(state: TrainerState, st: SampleSettings, pool: int, rank: int) -> RewardState:
    """The `trainer_state` reward functions get: optimizer steps so far, rl.steps, passes over the pool."""
    return RewardState(global_step=state.step, max_steps=st.steps, epoch=state.cursor / max(1, pool),
                       is_world_process_zero=rank == 0, is_local_process_zero=rank == 0)


def rollout_metrics(first: Round, parts: list, times: dict, rounds: int) -> dict[str, Any]:
    """Reward, group and length statistics of the first sampling round (what the policy produced)."""
    ro, scores, result = first.rollouts, first.scores, first.result
    lengths = ro.lengths.float()
    gen_s = times.get("time/generate_s", 0.0)
    return {
        "reward/mean": float(scores.mean()), "reward/std": float(scores.std()) if len(scores) > 1 else 0.0,
        **{k: v for k, v in result.metrics().items() if k not in ("reward/mean", "reward/std")},
        "reward/errors": sum(r.errors for r in parts),
        **{k: v for k, v in first.filter_metrics.items() if k.startswith("groups/")},
        "groups/resample_rounds": rounds,
        "length/mean": float(lengths.mean()), "length/max": int(lengths.max()),
        "length/truncated_frac": float(ro.truncated.float().mean()),
        "time/generate_s": gen_s, "time/reward_s": times.get("time/reward_s", 0.0), "time/train_s": 0.0,
        "kl": None,  # stays None without a reference model (kl_coef = 0): nothing to measure against
        "tokens_per_s": times.get("tokens", 0) / max(gen_s, 1e-9),  # generated tokens, all sampling rounds
    }


def sampling_params(cfg, eos: list[int], temperature: float) -> SamplingParams:
    """The rollouts' SamplingParams from `rl.*` at `temperature` (the tuned one under rl.target_entropy)."""
    return SamplingParams(n=cfg.group_size, max_new_tokens=cfg.max_new_tokens, temperature=temperature,
                          top_p=cfg.top_p, top_k=cfg.top_k, stop=cfg.stop, eos_ids=eos)


__all__ = ["Drawn", "EpisodeSource", "PlainSource", "PrefixSource", "RolloutSource", "SampleSettings",
           "build_source", "prompt_batch", "prompt_seed", "rollout_metrics", "sample_step",
           "sampling_params", "score"]
