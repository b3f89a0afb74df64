"""Registry entries that own their capabilities: what the RL loop must know about an algorithm, beside its function.

The loop never compares an algorithm's name: it looks the name up once (`resolve`) and asks the entry.

- `Estimator` (advantages.py's `ADVANTAGES`): needs a value head? normalises over the whole batch (so a batch
  split over several processes would be normalised per share)? divides by the group std? takes per-token
  rewards (`rl.kl_in_reward`)?
- `Filter` (filters.py's `FILTERS`): acts on groups (before the advantage) or on sequences (after it)?
  refills the batch with new prompts (DAPO dynamic sampling)? draws from the run's generator (DUPO)?
- `Aggregation` (losses.py's `AGGREGATIONS`): is the loss normalised by tokens or by sequences? (a
  micro-batch's share of its minibatch is counted in the same unit).

Each entry is callable with its function's signature, so `ADVANTAGES["grpo"](scores, mask, G)` still works.
Users register their own from a module: a recipe value `package.module:name` names either an entry of the
family's type or a plain function, which gets the default capabilities (a group-relative estimator, a group
filter that neither refills nor draws).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import torch


@dataclass(frozen=True)
class Estimator:
    """An advantage estimator: `fn(scores (N,), mask (N, T), group_size, *, token_rewards, values, gamma, lam)
    -> (advantages (N, T), metrics)`, and what the loop must provide or refuse for it."""

    fn: Callable[..., tuple[torch.Tensor, dict[str, float]]]
    needs_values: bool = False  # a value head (PPO/GAE): the loop builds one, trains it and computes returns
    batch_normalised: bool = False  # whitens over the whole batch: refused when the batch is split over processes
    std_normalised: bool = False  # divides by the group's std (Prefix-RFT then normalises its prefix advantage alike)
    takes_token_rewards: bool = False  # accepts per-token rewards (rl.kl_in_reward puts −β·KL there)

    def __call__(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, dict[str, float]]:
        return self.fn(*args, **kwargs)


@dataclass(frozen=True)
class Filter:
    """A batch filter. Group filters: `fn(scores (N,), group_size, **opts) -> (groups (K,), metrics)`.
    Sequence filters keep every group there (`fn` is `none`) and choose rows after the advantage with
    `select(sequence advantages (N,), **options, generator) -> (rows (K,), metrics)`."""

    fn: Callable[..., tuple[torch.Tensor, dict[str, float]]]
    acts_on: Literal["groups", "sequences"] = "groups"
    refills: bool = False  # resample new prompts until the batch is full again (rl.max_resample rounds at most)
    needs_generator: bool = False  # draws from the run's sampling generator (saved with every checkpoint)
    select: Callable[..., tuple[torch.Tensor, dict[str, float]]] | None = None

    def __post_init__(self) -> None:
        if self.acts_on == "sequences" and self.select is None:
            raise ValueError("a Filter that acts on sequences needs `select` (it chooses the rows)")

    def __call__(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, dict[str, float]]:
        return self.fn(*args, **kwargs)


@dataclass(frozen=True)
class Aggregation:
    """A loss aggregation: `fn(loss (N, T), mask (N, T), *, max_tokens, weights) -> scalar`, normalised by the
    minibatch's masked tokens, by all its sequences, or by its non-empty sequences (rows with a masked token):
    the unit a micro-batch's share is counted in."""

    fn: Callable[..., torch.Tensor]
    normaliser: Literal["tokens", "sequences", "nonempty_sequences"]

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.fn(*args, **kwargs)


E = TypeVar("E", Estimator, Filter, Aggregation)


def is_user_name(name: str) -> bool:
    """True for a `package.module:name` reference to user code (as opposed to a registry key).

    >>> is_user_name("grpo"), is_user_name("my_algos:centered")
    (False, True)
    """
    module, sep, attr = name.partition(":")
    return bool(sep and module and attr)


def check_name(registry: dict[str, Any], name: str, key: str) -> str:
    """`name` if it is a key of `registry` or a `module:name` reference; else ValueError naming `key` (when
    given) and the choices.

    >>> check_name({"grpo": None}, "grpo", "rl.advantage")
    'grpo'
    >>> check_name({"grpo": None}, "gpro", "rl.advantage")
    Traceback (most recent call last):
    ValueError: rl.advantage: unknown 'gpro'; choose one of grpo, or name your own as 'package.module:function'
    """
    if name in registry or is_user_name(name):
        return name
    where = f"{key}: " if key else ""
    raise ValueError(f"{where}unknown {name!r}; choose one of {', '.join(registry)}, or name your own as "
                     f"'package.module:function'")


def resolve(registry: dict[str, E], name: str, kind: type[E], key: str) -> E:
    """The entry that `name` (a registry key or `package.module:name`) stands for; a user's plain function is
    wrapped in `kind` with its default capabilities. Errors name `key` (the recipe field)."""
    check_name(registry, name, key)
    if name in registry:
        return registry[name]
    module_name, _, attr = name.partition(":")
    if os.getcwd() not in sys.path and "" not in sys.path:  # the `coldstart` script runs without the cwd on it
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"{key}: cannot import module {module_name!r} of {name!r}: {e}") from e
    obj = getattr(module, attr, None)
    if isinstance(obj, kind):
        return obj
    if not callable(obj):
        raise ValueError(f"{key}: {name!r} is not a {kind.__name__} or a function")
    if kind is Aggregation:
        raise ValueError(f"{key}: {name!r} must be an Aggregation (it says whether it normalises by tokens "
                         f"or by sequences)")
    return kind(obj)
