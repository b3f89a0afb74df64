"""The built-in tasks and the registry that builds them by name.

    build_task("arithmetic", {"digits": 3, "ops": "+-"})   procedural, with column traces (arithmetic.py)
    build_task("countdown", {"numbers": 3, "backtracks": 1}) procedural, with DFS traces (countdown.py)
    build_task("file", {"path": "data.jsonl"})             JSONL / JSON / Parquet / CSV / `datasets` (files.py)
    build_task("gym:chain_sum", {"min_terms": 2})          any reasoning-gym dataset (gym.py)
    build_task("guess", {"low": 1, "high": 32})            number-guessing states for the guess env (guess.py)

Every builder has one signature, `build(options: dict | None, seed: int) -> Task`; `gym:<name>` is the
`gym` builder with option dataset=<name>. An unknown task name or option raises ValueError naming it
and listing the valid ones. Splits are disjoint by a stable hash of each item's canonical text
(split.py).
"""

from __future__ import annotations

from collections.abc import Callable

from coldstart.tasks import arithmetic, countdown, files, guess, gym
from coldstart.types import Example, Task

TASKS: dict[str, Callable[..., Task]] = {
    "arithmetic": arithmetic.build,
    "countdown": countdown.build,
    "file": files.build,
    "gym": gym.build,
    "guess": guess.build,
}

__all__ = ["TASKS", "Example", "Task", "build_task"]


def build_task(name: str, options: dict | None = None, seed: int = 0) -> Task:
    """The task called `name` (`arithmetic`, `countdown`, `file`, `gym:<dataset>`) built from `options`."""
    options = dict(options or {})
    if name.startswith("gym:"):
        if "dataset" in options:
            raise ValueError(f"{name}: option 'dataset' conflicts with the name; use 'gym' with a dataset "
                             f"option or '{name}' without one")
        name, options["dataset"] = "gym", name[len("gym:"):]
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: arithmetic, countdown, file, guess, gym:<name> "
                         f"(reasoning-gym datasets: {', '.join(gym.dataset_names())})")
    return TASKS[name](options, seed)
