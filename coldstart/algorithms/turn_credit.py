"""UserRL turn-level credit assignment and trajectory scoring (docs/algorithms.md §3, arXiv 2509.19736).

A multi-turn trajectory has a reward r_k per model turn k. Two pure steps turn them into token advantages:

1. `trajectory_scores` → S (N,), the score the group baseline compares (GRPO etc. in advantages.py):
   `sum`  S = Σ_k r_k;   `r2g`  S = r_1 + γ r_2 + γ² r_3 + … (computed backwards, as UserRL's code does).
2. `turn_credits` → c_k per turn:  `equalized` c_k = 1;  `r2g` c_k = r_k + γ c_{k+1};
   `em` c_k = 0.5 + 0.5·(1 − e^{−2 r_k}) / (1 − e^{−2}) (maps r ∈ [0, 1] to [0.5, 1]).
   `spread_advantage` then gives every token of turn k the advantage c_k · A · n / Σ_tokens c (n = the
   trajectory's trained tokens), so the mean advantage per token equals the trajectory advantage A;
   `equalized` leaves A on every token.

Deviation: where a trajectory's credits sum to (almost) 0 over its tokens (r2g or em is never 0 for em; r2g
with all-zero rewards is), the rescaling is undefined; we fall back to A on every token (equalized), and count
those rows in `turns/credit_fallback`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

TRAJECTORY_SCORES = ("sum", "r2g")
TURN_CREDITS = ("equalized", "r2g", "em")
REWEIGHTING_CREDITS = ("r2g", "em")  # equalized leaves A on every token: the RL loop has nothing to spread


def _discounted_to_go(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """(N, K) → (N, K): x_k = r_k + γ·x_{k+1} over the masked turns (0 outside the mask)."""
    out = torch.zeros_like(rewards)
    running = torch.zeros(rewards.shape[0], dtype=rewards.dtype, device=rewards.device)
    for k in reversed(range(rewards.shape[1])):
        running = torch.where(mask[:, k], rewards[:, k] + gamma * running, running)
        out[:, k] = running * mask[:, k]
    return out


def trajectory_scores(turn_rewards: torch.Tensor, turn_mask: torch.Tensor, kind: str = "sum",
                      gamma: float = 0.8) -> torch.Tensor:
    """Per-turn rewards (N, K) with turn_mask (N, K) bool → trajectory scores S (N,).

    >>> trajectory_scores(torch.tensor([[0.0, 1.0]]), torch.tensor([[True, True]]), "r2g", 0.5)
    tensor([0.5000])
    """
    r = turn_rewards.float() * turn_mask
    if kind == "sum":
        return r.sum(1)
    if kind == "r2g":
        return _discounted_to_go(r, turn_mask, gamma)[:, 0]
    raise ValueError(f"trajectory_score: unknown {kind!r}; choose from {TRAJECTORY_SCORES}")


def turn_credits(turn_rewards: torch.Tensor, turn_mask: torch.Tensor, kind: str = "equalized",
                 gamma: float = 0.8) -> torch.Tensor:
    """Per-turn rewards (N, K) with turn_mask (N, K) bool → credits c (N, K), 0 outside the mask."""
    r = turn_rewards.float() * turn_mask
    if kind == "equalized":
        return turn_mask.float()
    if kind == "r2g":
        return _discounted_to_go(r, turn_mask, gamma)
    if kind == "em":
        return (0.5 + 0.5 * (1 - torch.exp(-2 * r)) / (1 - math.exp(-2))) * turn_mask
    raise ValueError(f"turn_credit: unknown {kind!r}; choose from {TURN_CREDITS}")


def spread_advantage(adv: torch.Tensor, credits: torch.Tensor, token_turn: torch.Tensor,
                     eps: float = 1e-6) -> tuple[torch.Tensor, dict[str, float]]:
    """Weight token advantages by their turn's credit.

    adv (N, T): the trajectory advantage A on each trained token (0 elsewhere), as `ADVANTAGES` returns it;
    credits (N, K); token_turn (N, T) long: the turn index of each model token, −1 on observation and padding
    tokens. Returns adv · c_{turn} · n / Σ_tokens c per row (N, T), and metrics.
    """
    on = token_turn >= 0
    c = torch.where(on, credits.gather(1, token_turn.clamp(min=0)), torch.zeros((), dtype=credits.dtype))
    n = on.sum(1, keepdim=True).float()
    total = c.sum(1, keepdim=True)
    fallback = total.abs() < eps
    weight = torch.where(fallback, on.float(), c * n / torch.where(fallback, torch.ones_like(total), total))
    return adv * weight.to(adv.dtype), {"turns/credit_fallback": float(fallback.float().mean())}


TurnCreditFn = Callable[..., torch.Tensor]
