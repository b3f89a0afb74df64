"""`gym:<name>`: any reasoning-gym procedural dataset as a Task.

Entries come from `reasoning_gym.create_dataset(name, size=..., seed=..., **config)`; each is a dict with
`question`, `answer` and `metadata`. An Example has prompt = question, answer = str(answer) ("" where the
dataset gives None), solution = None (reasoning-gym has no traces), and meta = {"entry": entry,
"dataset": name}: the whole entry, because the dataset's scorer reads it.

Verifier: the dataset's own `score_answer(answer=extract_answer(completion), entry=entry)`, clipped to
[0, 1]; a completion without an extractable answer scores 0, and a scorer that raises on a malformed
answer scores 0 (logged).

Splits: an entry belongs to the split that the hash of its question picks (coldstart/tasks/split.py),
so splits are disjoint for any seed; within a call, repeated questions are dropped. The price is that
drawing n examples of a split generates about n / fraction entries (10 n for the test split by default).
The reasoning-gym seed is derived from (task seed, examples seed, split).

Options: `dataset` (set by the `gym:<name>` form), `val_frac`, `test_frac`; every other option is passed
to the dataset's config class (e.g. `min_terms` for chain_sum). `seed` and `size` are set by coldstart
and are rejected as options.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Any

from coldstart.rewards.extract import extract_answer
from coldstart.tasks.split import check_fracs, check_split, hash01, split_frac, split_of
from coldstart.types import Example

log = logging.getLogger("coldstart.tasks")
MAX_DRAWS_FACTOR = 20  # give up after 20x the expected number of draws


def dataset_names() -> list[str]:
    """Names of the registered reasoning-gym datasets."""
    from reasoning_gym.factory import DATASETS

    return sorted(DATASETS)


def _create(name: str, config: dict[str, Any], seed: int, size: int):
    import reasoning_gym

    return reasoning_gym.create_dataset(name, seed=seed, size=size, **config)


@dataclass
class GymTask:
    """A reasoning-gym dataset as a Task (see the module docstring)."""

    dataset: str
    config: dict[str, Any]
    val_frac: float = 0.05
    test_frac: float = 0.1
    seed: int = 0
    name: str = ""
    scorer: Any = field(default=None, repr=False)  # a dataset instance whose score_answer we call

    def examples(self, split: str, n: int | None, seed: int) -> list[Example]:
        """n examples of `split` with distinct questions, deterministic in (task seed, seed, split)."""
        check_split(split)
        if n is None or n < 0:
            raise ValueError(f"{self.name}: n must be a count >= 0 (the task is procedural), got {n!r}")
        frac = split_frac(split, self.val_frac, self.test_frac)
        if n == 0:
            return []
        if frac == 0:
            raise ValueError(f"{self.name}: split {split!r} is empty (its fraction is 0)")
        rg_seed = int(hash01(f"{self.seed}:{seed}:{split}") * 2**31)
        size = max(64, math.ceil(2 * n / frac))
        cap = MAX_DRAWS_FACTOR * size
        ds = _create(self.dataset, self.config, rg_seed, size)
        out: list[Example] = []
        seen: set[str] = set()
        idx = 0
        while len(out) < n:
            if idx >= size:
                if size >= cap:
                    raise ValueError(f"{self.name}: found only {len(out)} of n={n} distinct {split} questions "
                                     f"in {idx} draws; the dataset has too few distinct questions")
                size *= 2  # datasets draw item i from Random(seed + i): a larger size keeps the first items
                ds = _create(self.dataset, self.config, rg_seed, size)
            entry = ds[idx]
            idx += 1
            q = entry["question"]
            if q in seen or split_of(q, self.val_frac, self.test_frac) != split:
                continue
            seen.add(q)
            answer = entry.get("answer")
            out.append(Example(prompt=q, answer="" if answer is None else str(answer),
                               meta={"entry": entry, "dataset": self.dataset}))
        return out

    def verify(self, example: Example, completion: str) -> float:
        """The dataset's score_answer on the extracted answer, clipped to [0, 1]; 0 without an answer."""
        answer = extract_answer(completion)
        if answer is None:
            return 0.0
        try:
            score = float(self.scorer.score_answer(answer=answer, entry=example.meta["entry"]))
        except Exception as e:  # a scorer that chokes on a malformed answer: that answer is wrong
            log.warning("%s: score_answer raised %s: %s; scored 0", self.name, type(e).__name__, e)
            return 0.0
        return min(1.0, max(0.0, score)) if math.isfinite(score) else 0.0


def build(options: dict | None = None, seed: int = 0) -> GymTask:
    """Build `gym:<dataset>` from options {dataset, val_frac?, test_frac?, **dataset config}."""
    from reasoning_gym.factory import DATASETS

    config = dict(options or {})
    name = config.pop("dataset", None)
    if name not in DATASETS:
        raise ValueError(f"gym: unknown reasoning-gym dataset {name!r}; valid names: {', '.join(sorted(DATASETS))}")
    task = f"gym:{name}"
    val_frac, test_frac = config.pop("val_frac", 0.05), config.pop("test_frac", 0.1)
    check_fracs(task, val_frac, test_frac)
    valid = [f.name for f in dataclasses.fields(DATASETS[name][1]) if f.name not in ("seed", "size")]
    unknown = sorted(set(config) - set(valid))
    if unknown:
        raise ValueError(f"{task}: unknown option(s) {', '.join(map(repr, unknown))}; valid options: "
                         f"{', '.join(['val_frac', 'test_frac', *valid])} (seed and size are set by coldstart)")
    try:
        scorer = _create(name, config, seed=0, size=1)
    except (AssertionError, ValueError, TypeError) as e:
        raise ValueError(f"{task}: invalid options {config}: {e or type(e).__name__}") from e
    return GymTask(dataset=name, config=config, val_frac=val_frac, test_frac=test_frac, seed=seed,
                   name=task, scorer=scorer)
