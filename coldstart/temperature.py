"""Entropy-targeted sampling temperature (AceReason-Nemotron 1.1, docs/algorithms.md §4).

The paper's rule: pick the RL training temperature so that the token entropy of the distribution actually
sampled starts and stays around 0.3 (0.85 did best for them: entropy 0.26 rising to 0.38). It gives curves,
not a formula; we use its working definition, H_T = −Σ_v p_T(v) log p_T(v) with p_T = softmax(z / T),
averaged over the tokens of rollouts sampled at T, measured on a probe batch at each candidate temperature.
The closest to the target wins (ties: the lower temperature). `rl.target_entropy` switches it on;
`rl.temperature_retune_every` re-tunes between phases. Deviation: the paper ran short RL probes at each
temperature; we measure the current policy's entropy without training, which is what "starts around 0.3"
asks and costs one sampling pass per candidate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


def pick_temperature(entropy_at: Callable[[float], float], candidates: Sequence[float],
                     target: float) -> tuple[float, dict[float, float]]:
    """The candidate temperature whose measured entropy is closest to `target`, and every measurement.

    >>> pick_temperature(lambda t: 0.5 * t, [1.0, 0.6, 0.4], target=0.3)
    (0.6, {1.0: 0.5, 0.6: 0.3, 0.4: 0.2})
    """
    if not candidates:
        raise ValueError("rl.temperature_candidates: give at least one temperature")
    if any(t <= 0 for t in candidates):
        raise ValueError(f"rl.temperature_candidates: temperatures must be > 0, got {list(candidates)}")
    measured = {float(t): float(entropy_at(float(t))) for t in candidates}
    best = min(measured, key=lambda t: (abs(measured[t] - target), t))
    return best, measured
