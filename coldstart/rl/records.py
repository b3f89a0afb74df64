"""The records the RL step passes between its phases, and the settings built once from `RLConfig`.

Shapes: B = prompts this rank keeps, G = rl.group_size, N = B×G rows, T = completion length.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from ..algorithms import ADVANTAGES, AGGREGATIONS, FILTERS, Aggregation, Estimator, Filter, resolve
from ..config import RLConfig
from ..multiturn import Turns
from ..types import Example, Rollouts


# ---- what sampling hands to the update ---------------------------------------------------------------------
@dataclass
class Round:
    """The first sampling round of a step: what the policy itself produced, before any filter or refill."""

    rollouts: Rollouts  # N0 = B×G rows
    scores: torch.Tensor  # (N0,) float rewards
    result: Any  # the RewardResult (per-part scores, errors) or the environment's EnvResult
    filter_metrics: dict[str, float]  # groups/zero_std_frac, groups/kept, ...
    turns: Turns | None = None  # multi-turn episodes' per-turn rewards


@dataclass
class StepBatch:
    """The kept groups of one step, ready for the advantage.

    examples: (B,) the kept prompts (a DUPO duplicate appears twice)
    rollouts: (N = B×G rows) their completions, trimmed to the widest row
    scores:   (N,) float rewards
    turns:    the per-turn rewards of multi-turn episodes (rl.env), or None
    weight:   1.0; 0.0 on a rank that kept nothing and joins the others' passes with zero weight
    first:    the first sampling round (for metrics and the passes of a step that trains nothing)
    metrics:  reward, group, length and timing metrics of the round(s)
    """

    examples: list[Example]
    rollouts: Rollouts
    scores: torch.Tensor
    turns: Turns | None
    first: Round
    metrics: dict[str, Any]
    weight: float = 1.0


@dataclass
class Advantaged:
    """A StepBatch after the advantage: what the post-advantage transforms reshape and the update trains on.

    adv (N, T) per-token advantages; returns and values (N, T) with a value head (else None)."""

    rollouts: Rollouts
    scores: torch.Tensor
    adv: torch.Tensor
    returns: torch.Tensor | None
    values: torch.Tensor | None
    turns: Turns | None


# ---- what persists between steps ----------------------------------------------------------------------------
@dataclass
class TrainerState:
    """The RL stage's counters, saved as state.json in every checkpoint (same keys as before: old runs resume).

    cursor: position in the endless prompt stream; temperature: the tuned sampling temperature (None until
    rl.target_entropy tunes it); pool_ids: the prefiltered pool (None without rl.prefilter); curriculum: the
    phase, carried examples and per-prompt rewards (None without rl.curriculum); nonfinite: runtime.NonFinite's
    counters."""

    step: int = 0
    cursor: int = 0
    best: float | None = None
    elapsed: float = 0.0
    flat_steps: int = 0
    temperature: float | None = None
    pool_ids: list[int] | None = None
    curriculum: dict[str, Any] | None = None
    nonfinite: dict[str, int] = field(default_factory=dict)

    _OPTIONAL = ("temperature", "pool_ids", "curriculum")

    def temperature_or(self, default: float) -> float:
        """The tuned sampling temperature, or `default` (rl.temperature) until rl.target_entropy tunes one."""
        return default if self.temperature is None else self.temperature

    def to_dict(self) -> dict[str, Any]:
        """The state.json object: the counters, the NonFinite counters flat, optional keys only when set."""
        out = {k: getattr(self, k) for k in ("step", "cursor", "best", "elapsed", "flat_steps")}
        out.update(self.nonfinite)
        out.update({k: getattr(self, k) for k in self._OPTIONAL if getattr(self, k) is not None})
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainerState:
        """Read a state.json object written by `to_dict` (or by coldstart before this record existed)."""
        names = {f.name for f in dataclasses.fields(cls)} - {"nonfinite"}
        return cls(**{k: v for k, v in d.items() if k in names},
                   nonfinite={k: v for k, v in d.items() if k.startswith("nonfinite_")})


# ---- settings built once from the recipe --------------------------------------------------------------------
@dataclass(frozen=True)
class Algorithms:
    """The registry entries the recipe names, resolved once (`rl.advantage`, `rl.filter`, `rl.loss_agg`)."""

    estimator: Estimator
    filter: Filter
    aggregation: Aggregation

    @classmethod
    def from_config(cls, cfg: RLConfig) -> Algorithms:
        """Resolve the recipe's names (registry keys or `package.module:name`)."""
        return cls(resolve(ADVANTAGES, cfg.advantage, Estimator, "rl.advantage"),
                   resolve(FILTERS, cfg.filter, Filter, "rl.filter"),
                   resolve(AGGREGATIONS, cfg.loss_agg, Aggregation, "rl.loss_agg"))


@dataclass(frozen=True)
class UpdateSettings:
    """What `update` needs: μ epochs over minibatches of micro-batches, the PPO-clip loss and its extras."""

    epochs: int
    minibatch_size: int | None  # global rows per optimizer step; None: the whole batch
    micro_batch_size: int
    grad_clip: float
    overlong_filter: bool  # truncated completions out of the loss (DAPO)
    temperature: float  # the trainer's logits are scaled by the sampling temperature
    eps_low: float
    eps_high: float
    prefix_eps: tuple[float, float] | None  # Prefix-RFT's own clip range on prefix tokens, or None
    dual_clip: float | None
    loss_agg: str
    aggregation: Aggregation
    max_tokens: int  # the generation budget (Dr. GRPO's constant normaliser)
    kl_coef: float
    kl_type: str
    kl_in_reward: bool
    entropy_coef: float
    vf_coef: float

    @classmethod
    def from_config(cls, cfg: RLConfig, aggregation: Aggregation | None = None) -> UpdateSettings:
        """The update settings of `rl.*` (the temperature is replaced per step when rl.target_entropy tunes it);
        `aggregation`: rl.loss_agg's entry when the caller has resolved it already."""
        pr = cfg.prefix_rft
        aggregation = aggregation or resolve(AGGREGATIONS, cfg.loss_agg, Aggregation, "rl.loss_agg")
        return cls(epochs=cfg.epochs, minibatch_size=cfg.minibatch_size, micro_batch_size=cfg.micro_batch_size,
                   grad_clip=cfg.grad_clip, overlong_filter=cfg.overlong_filter, temperature=cfg.temperature,
                   eps_low=cfg.eps_low, eps_high=cfg.eps_high,
                   prefix_eps=None if pr is None else (pr.eps_low, pr.eps_high), dual_clip=cfg.dual_clip,
                   loss_agg=cfg.loss_agg, aggregation=aggregation,
                   max_tokens=cfg.max_new_tokens, kl_coef=cfg.kl_coef, kl_type=cfg.kl_type,
                   kl_in_reward=cfg.kl_in_reward, entropy_coef=cfg.entropy_coef, vf_coef=cfg.vf_coef)
