"""The RL algorithms as pure functions on tensors, each family a name → function dict with one signature.

- `ADVANTAGES` (advantages.py): scores (N,) → per-token advantages (N, T).
- `FILTERS` (filters.py): scores (N,) → which of the B groups to keep (or, after the advantage, which rows).
- registry.py: the entries of these registries own their capabilities (`Estimator`, `Filter`, `Aggregation`);
  `resolve` turns a recipe name (a key or `package.module:name`) into one.
- `policy_loss`, `value_loss`, `AGGREGATIONS` (losses.py): per-token tensors (N, T) → scalar loss.
- Prefix-RFT (prefix.py): demonstration-prefix hybrid rollouts, their advantage and clip range.
- `PREFERENCE_LOSSES` (preference.py): per-pair sequence log-probs (B,) → DPO / SimPO loss.
- UserRL turn credits (turn_credit.py): per-turn rewards (N, K) → trajectory scores and token weights.
"""

from coldstart.algorithms.advantages import ADVANTAGES, gae, outcome_token_rewards
from coldstart.algorithms.filters import (
    FILTERS,
    expand_group_mask,
    expand_groups,
    group_std,
    pad_select,
    pass_rate_window,
)
from coldstart.algorithms.losses import (
    AGGREGATIONS,
    kl_penalty,
    policy_loss,
    token_entropy,
    token_logprobs,
    value_loss,
)
from coldstart.algorithms.preference import PREFERENCE_LOSSES, dpo_loss, simpo_loss
from coldstart.algorithms.prefix import (
    clip_range,
    entropy_top_mask,
    interleave_groups,
    prefix_advantage,
    prefix_fraction,
    prefix_lengths,
    prefix_rft_advantage,
    splice_prefix,
)
from coldstart.algorithms.registry import Aggregation, Estimator, Filter, check_name, resolve
from coldstart.algorithms.turn_credit import spread_advantage, trajectory_scores, turn_credits

__all__ = [
    "ADVANTAGES",
    "AGGREGATIONS",
    "FILTERS",
    "PREFERENCE_LOSSES",
    "Aggregation",
    "Estimator",
    "Filter",
    "check_name",
    "clip_range",
    "dpo_loss",
    "entropy_top_mask",
    "expand_group_mask",
    "expand_groups",
    "gae",
    "group_std",
    "interleave_groups",
    "kl_penalty",
    "outcome_token_rewards",
    "pad_select",
    "pass_rate_window",
    "policy_loss",
    "prefix_advantage",
    "prefix_fraction",
    "prefix_lengths",
    "prefix_rft_advantage",
    "resolve",
    "simpo_loss",
    "splice_prefix",
    "spread_advantage",
    "token_entropy",
    "token_logprobs",
    "trajectory_scores",
    "turn_credits",
    "value_loss",
]
