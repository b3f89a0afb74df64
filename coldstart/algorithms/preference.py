"""Preference-optimisation losses on per-sequence log-probs: `PREFERENCE_LOSSES` maps a name to one signature.

    fn(chosen_logp (B,), rejected_logp (B,), chosen_len (B,), rejected_len (B,), *,
       ref_chosen_logp (B,) | None, ref_rejected_logp (B,) | None, beta, gamma) -> (loss, metrics)

`*_logp` are log π(y|x) summed over the completion tokens, `*_len` the number of those tokens.

- `dpo` (Rafailov et al. 2023, sigmoid form): `−log σ(β·[(log π(y_w) − log π_ref(y_w)) − (log π(y_l) −
  log π_ref(y_l))])`, averaged over pairs. Needs the reference log-probs; γ is unused.
- `simpo` (Meng et al. 2024): no reference; the implicit reward is the length-normalised log-prob,
  `−log σ(β/|y_w|·log π(y_w) − β/|y_l|·log π(y_l) − γ)`, γ the target reward margin (an absolute margin,
  as in the paper's equation; its code's `gamma_beta_ratio` is γ/β).

Metrics: `pref/accuracy` (share of pairs whose implicit reward ranks chosen above rejected),
`pref/margin` (mean reward difference), `pref/chosen_reward`, `pref/rejected_reward`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Metrics = dict[str, float]
PreferenceFn = Callable[..., tuple[torch.Tensor, Metrics]]


def _metrics(chosen_reward: torch.Tensor, rejected_reward: torch.Tensor) -> Metrics:
    margin = chosen_reward - rejected_reward
    return {"pref/accuracy": float((margin > 0).float().mean()), "pref/margin": float(margin.mean()),
            "pref/chosen_reward": float(chosen_reward.mean()), "pref/rejected_reward": float(rejected_reward.mean())}


def dpo_loss(chosen_logp: torch.Tensor, rejected_logp: torch.Tensor, chosen_len: torch.Tensor,
             rejected_len: torch.Tensor, *, ref_chosen_logp: torch.Tensor | None = None,
             ref_rejected_logp: torch.Tensor | None = None, beta: float = 0.1,
             gamma: float = 0.0) -> tuple[torch.Tensor, Metrics]:
    """DPO, sigmoid loss: all inputs (B,); returns the mean loss (scalar) and metrics. Implicit rewards
    are β·(log π − log π_ref) per sequence.

    >>> loss, m = dpo_loss(torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([1]), torch.tensor([1]),
    ...                    ref_chosen_logp=torch.tensor([-1.0]), ref_rejected_logp=torch.tensor([-1.0]), beta=1.0)
    >>> round(float(loss), 4)  # −log σ(1)
    0.3133
    """
    if ref_chosen_logp is None or ref_rejected_logp is None:
        raise ValueError("dpo loss needs the reference model's log-probs (ref_chosen_logp, ref_rejected_logp)")
    chosen_reward = beta * (chosen_logp - ref_chosen_logp)
    rejected_reward = beta * (rejected_logp - ref_rejected_logp)
    loss = -F.logsigmoid(chosen_reward - rejected_reward).mean()
    return loss, _metrics(chosen_reward.detach(), rejected_reward.detach())


def simpo_loss(chosen_logp: torch.Tensor, rejected_logp: torch.Tensor, chosen_len: torch.Tensor,
               rejected_len: torch.Tensor, *, ref_chosen_logp: torch.Tensor | None = None,
               ref_rejected_logp: torch.Tensor | None = None, beta: float = 2.0,
               gamma: float = 0.5) -> tuple[torch.Tensor, Metrics]:
    """SimPO: all inputs (B,), reference log-probs ignored; implicit rewards β·log π / |y|; margin γ.

    >>> loss, m = simpo_loss(torch.tensor([-2.0]), torch.tensor([-6.0]), torch.tensor([2]), torch.tensor([3]),
    ...                      beta=1.0, gamma=1.0)
    >>> round(float(loss), 4)  # −log σ(−1 − (−2) − 1) = log 2
    0.6931
    """
    chosen_reward = beta * chosen_logp / chosen_len.clamp(min=1).to(chosen_logp.dtype)
    rejected_reward = beta * rejected_logp / rejected_len.clamp(min=1).to(rejected_logp.dtype)
    loss = -F.logsigmoid(chosen_reward - rejected_reward - gamma).mean()
    return loss, _metrics(chosen_reward.detach(), rejected_reward.detach())


PREFERENCE_LOSSES: dict[str, PreferenceFn] = {"dpo": dpo_loss, "simpo": simpo_loss}
NEEDS_REFERENCE = {"dpo": True, "simpo": False}
