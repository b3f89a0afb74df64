"""Rollout samplers: `SAMPLERS` maps a name to a factory `f(tokenizer) -> Sampler`.

torch (default): `TorchSampler`, the fast KV-cache loop; hf: `HFSampler`, through `model.generate`.
"""

from __future__ import annotations

from collections.abc import Callable

from .base import Sampler, SamplingParams
from .hf_sampler import HFSampler
from .torch_sampler import TorchSampler

SAMPLERS: dict[str, Callable[[object], Sampler]] = {"torch": TorchSampler, "hf": HFSampler}


def build_sampler(name: str, tokenizer) -> Sampler:
    """The sampler registered under `name` ("torch" or "hf"), built for `tokenizer`."""
    if name not in SAMPLERS:
        raise ValueError(f"sampler: unknown {name!r}; choose from {sorted(SAMPLERS)}")
    return SAMPLERS[name](tokenizer)


__all__ = ["SAMPLERS", "HFSampler", "Sampler", "SamplingParams", "TorchSampler", "build_sampler"]
