"""Helpers shared by the built-in tasks: stable split assignment and option parsing.

Splits. Every item is assigned to "train", "val" or "test" by a stable hash of its canonical text
(blake2b, never Python's salted `hash()`), so the three splits are disjoint for any seed, on any
machine, and an item keeps its split when the task's other options change (the arithmetic problem
"12+34" is in the same split for digits=2 and digits=3). The hash maps the text to u in [0, 1):
test if u < test_frac, val if u < test_frac + val_frac, else train.

Options. A task's options are a typed dataclass; `parse_options` turns the recipe's dict into it and
rejects unknown keys and wrong types with a ValueError that names the option and lists the valid ones.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from typing import Any, TypeVar

SPLITS = ("train", "val", "test")

T = TypeVar("T")


def hash01(text: str) -> float:
    """A stable pseudo-uniform number in [0, 1) for `text` (first 8 bytes of blake2b).

    >>> hash01("12+34") == hash01("12+34"), 0.0 <= hash01("x") < 1.0
    (True, True)
    """
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def split_of(text: str, val_frac: float, test_frac: float) -> str:
    """The split ("train" | "val" | "test") that the item with canonical text `text` belongs to."""
    u = hash01(text)
    if u < test_frac:
        return "test"
    if u < test_frac + val_frac:
        return "val"
    return "train"


def split_frac(split: str, val_frac: float, test_frac: float) -> float:
    """The expected fraction of all items that fall in `split`."""
    check_split(split)
    return {"train": 1.0 - val_frac - test_frac, "val": val_frac, "test": test_frac}[split]


def check_split(split: str) -> None:
    """Raise ValueError unless `split` is one of train / val / test."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")


def check_fracs(task: str, val_frac: float, test_frac: float) -> None:
    """Raise ValueError unless both fractions are in [0, 1) and leave a non-empty train split."""
    for name, value in (("val_frac", val_frac), ("test_frac", test_frac)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value < 1.0:
            raise ValueError(f"{task}: option {name} must be a number in [0, 1), got {value!r}")
    if val_frac + test_frac >= 1.0:
        raise ValueError(f"{task}: val_frac + test_frac must be < 1, got {val_frac} + {test_frac}")


def rng_for(task_seed: int, seed: int, split: str) -> random.Random:
    """A Random seeded from (task seed, examples seed, split): str seeds are hashed with sha512,
    so the stream is the same on every run and machine."""
    return random.Random(f"{task_seed}:{seed}:{split}")


def parse_options(cls: type[T], options: dict[str, Any] | None, task: str) -> T:
    """Build the options dataclass `cls` from `options`; ValueError on an unknown key or a wrong type.

    Ints are accepted where floats are expected; bools are never accepted as numbers.
    """
    options = dict(options or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise ValueError(f"{task}: unknown option(s) {', '.join(map(repr, unknown))}; "
                         f"valid options: {', '.join(fields)}")
    for name, value in options.items():
        expected = fields[name].type
        if not _type_ok(value, expected):
            raise ValueError(f"{task}: option {name} must be {expected}, got {value!r}")
    return cls(**options)


def _type_ok(value: Any, expected: Any) -> bool:
    """Check the simple annotations used by the option dataclasses (written as strings)."""
    kinds = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "dict": (dict,)}
    allowed: tuple[type, ...] = ()
    for part in str(expected).replace(" ", "").split("|"):
        if part == "None":
            if value is None:
                return True
            continue
        allowed += kinds.get(part.split("[")[0], (object,))
    if isinstance(value, bool) and bool not in allowed:
        return False
    return isinstance(value, allowed)
