"""The RL algorithms as pure functions on tensors, each family a name → function dict with one signature.

- `ADVANTAGES` (advantages.py): scores (N,) → per-token advantages (N, T).
- `FILTERS` (filters.py): scores (N,) → which of the B groups to keep.
- `policy_loss`, `value_loss`, `AGGREGATIONS` (losses.py): per-token tensors (N, T) → scalar loss.
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

__all__ = [
    "ADVANTAGES",
    "AGGREGATIONS",
    "FILTERS",
    "expand_group_mask",
    "expand_groups",
    "gae",
    "group_std",
    "kl_penalty",
    "outcome_token_rewards",
    "pad_select",
    "pass_rate_window",
    "policy_loss",
    "token_entropy",
    "token_logprobs",
    "value_loss",
]
