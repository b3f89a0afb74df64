"""The environment protocol of multi-turn RL: text in, text out.

    obs = env.reset(example)                  the first observation (the user's opening message)
    obs, reward, done = env.step(model_text)  after each model turn: the next observation, that turn's reward,
                                              and whether the episode is over

`stop` lists extra stop strings that end a model turn (e.g. "</tool>"), on top of eos and `rl.stop`.
An environment is built fresh for every trajectory by a factory: `build_env(name, options, task)` returns a
zero-argument callable. The built-ins run on the CPU with no model behind them:

    guess   number guessing against a rule-based user who answers higher / lower (coldstart.envs.guess)
    tool    a calculator called inside <tool>...</tool>, then an <answer> checked by the task (coldstart.envs.tool)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from ..types import Example, Task


@runtime_checkable
class Env(Protocol):
    """One episode of a text environment (see the module docstring)."""

    stop: list[str]

    def reset(self, example: Example) -> str: ...

    def step(self, text: str) -> tuple[str, float, bool]: ...


EnvFactory = Callable[[], Env]


def build_env(name: str, options: dict | None, task: Task) -> EnvFactory:
    """A factory of fresh `name` environments ("guess" or "tool") configured by `options`."""
    from . import guess, tool

    builders = {"guess": guess.build, "tool": tool.build}
    if name not in builders:
        raise ValueError(f"rl.env: unknown environment {name!r}; choose from {sorted(builders)}")
    return builders[name](dict(options or {}), task)
