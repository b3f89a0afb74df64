"""The reward registry and the weighted sum of reward functions that the RL loop calls.

A recipe lists rewards as specs `{"name": str, "weight": float = 1.0, "options": dict = {}}`;
`build_reward(specs, task)` turns them into a `CombinedReward`. A name is a key of `REWARDS` (a factory
`factory(**options, task=task) -> reward function`) or "module:function" for a user function, imported from
the recipe's folder, the working directory or the installed packages (coldstart.rewards.basic.import_reward).

Every part is called as TRL's GRPOTrainer calls a reward function (TRL 1.16, `_calculate_rewards`), by keyword:
`fn(prompts=..., completions=..., completion_ids=..., trainer_state=..., log_extra=..., log_metric=...,
**columns)`, where columns are every column of the examples under its own name plus coldstart's (`answer`,
`example`, `completion_length`, `truncated`, `completion_prefix`); see `reward_inputs`. A function may be
`async` (awaited after the sync ones, all async parts of a batch together, as TRL does).

A returned `None` means "not applicable to this item" (TRL): that part is left out of the item's weighted sum,
and an item that no part applies to has total NaN (the RL loop gives it advantage 0, rl/sample.py). A reward
function that misbehaves never leaks garbage into the advantages (DESIGN.md "Contracts"):
- a part that raises on the batch is retried item by item;
- an item that raises, or whose score is not a number or None (NaN, inf, a string), or that comes from a part
  returning the wrong number of scores, scores 0 for that part, is logged to `logging.getLogger(
  "coldstart.rewards")` and counted in `RewardResult.errors` and `RewardResult.failed`;
- a part failing on more than half of a batch is logged as an error (and in the metrics, `reward/failed/NAME`);
  a part failing on every item of a batch raises `RewardFailure` naming it (unless `stop_on_failure=False`,
  as `coldstart inspect` does): training on zeros teaches nothing. Failures that are the data's fault (a gold
  answer that does not parse: `GoldAnswerError`) are counted but never stop a run.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coldstart.rewards.accuracy import make_accuracy
from coldstart.rewards.basic import RewardFn, builtin, import_reward, make_exact, make_format, make_overlong, make_task
from coldstart.rewards.code import make_code
from coldstart.rewards.kat import make_kat
from coldstart.rewards.mt import make_mt
from coldstart.rewards.reft import make_reft
from coldstart.rewards.rlt import make_rlt

log = logging.getLogger("coldstart.rewards")

REWARDS: dict[str, Callable[..., RewardFn]] = {
    "accuracy": make_accuracy,
    "exact": make_exact,
    "format": make_format,
    "task": make_task,
    "overlong": make_overlong,
    "code": make_code,
    "reft": make_reft,  # accuracy with partial=0.1 (ReFT §23)
    "mt": make_mt,  # MT-R1-Zero format gate + BLEU/chrF (§19)
    "kat": make_kat,  # KAT think-mode choice (§8, simplified)
    "rlt": make_rlt,  # RLT student log-likelihood (§12)
}
WHOLE = ("trainer_state", "log_extra", "log_metric")  # keyword arguments passed whole, never per item


class RewardFailure(RuntimeError):
    """A reward part failed on every item of a batch: the run stops instead of training on zeros."""


@dataclass
class RewardResult:
    """Scores of N completions.

    total:          (N,) weighted sum of the parts that apply to each item; NaN where none applies (all None)
    parts:          name -> (N,) unweighted score of each part (0 where it failed, NaN where it returned None)
    errors:         number of (part, item) scores that failed and were set to 0
    error_messages: the first few failures, "name[i]: message"
    failed:         name -> number of items that part failed on
    extra_metrics:  name -> mean of the values a reward function gave `log_metric(name, value)`
    extra_columns:  column -> values a reward function gave `log_extra(column, values)` (one per item)
    all_failed:     name -> why, for parts that failed on every item (not counting the data's errors)
    """

    total: list[float]
    parts: dict[str, list[float]]
    errors: int = 0
    error_messages: list[str] = field(default_factory=list)
    failed: dict[str, int] = field(default_factory=dict)
    extra_metrics: dict[str, float] = field(default_factory=dict)
    extra_columns: dict[str, list] = field(default_factory=dict)
    all_failed: dict[str, str] = field(default_factory=dict)

    @property
    def unscorable(self) -> int:
        """Items that no part applies to (every part returned None)."""
        return sum(math.isnan(x) for x in self.total)

    def metrics(self, prefix: str = "reward/") -> dict[str, float]:
        """Batch means of the total and of each part (over the items it applies to), the error count, and
        `failed/NAME` (fraction of items) for parts that failed, for metrics.jsonl."""
        out = {f"{prefix}total": _nanmean(self.total)}
        out.update({f"{prefix}{name}": _nanmean(scores) for name, scores in self.parts.items()})
        out[f"{prefix}errors"] = float(self.errors)
        out.update({f"{prefix}failed/{name}": k / max(1, len(self.total)) for name, k in self.failed.items() if k})
        if self.unscorable:
            out[f"{prefix}unscorable"] = float(self.unscorable)
        return {**{k: v for k, v in out.items() if v is not None}, **self.extra_metrics}


def is_async(fn: Any) -> bool:
    """True if `fn` (a function, a callable object or a functools.partial of one) is a coroutine function."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)


@dataclass
class RewardPart:
    """One weighted reward function of a CombinedReward."""

    name: str
    weight: float
    fn: RewardFn

    @property
    def is_async(self) -> bool:
        return is_async(self.fn)


@dataclass
class _Batch:
    """What one call of a CombinedReward collects: failures by part, and the reward functions' logs."""

    n: int
    failures: list[str] = field(default_factory=list)
    failed: dict[str, int] = field(default_factory=dict)
    fatal: dict[str, int] = field(default_factory=dict)  # failures that are not the data's fault
    metrics: dict[str, list[float]] = field(default_factory=dict)
    columns: dict[str, list] = field(default_factory=dict)

    def fail(self, part: RewardPart, i: int, message: str, data_error: bool = False) -> float:
        self.failures.append(f"{part.name}[{i}]: {message}")
        self.failed[part.name] = self.failed.get(part.name, 0) + 1
        if not data_error:
            self.fatal[part.name] = self.fatal.get(part.name, 0) + 1
        return 0.0

    def log_metric(self, name: str, value: float) -> None:
        """TRL's `log_metric`: a scalar, averaged over the batch and logged under `name`."""
        self.metrics.setdefault(name, []).append(float(value))

    def log_extra(self, column: str, values: list) -> None:
        """TRL's `log_extra`: one value per item, an extra column of the logged samples."""
        self.columns.setdefault(column, []).extend(values)


@dataclass
class CombinedReward:
    """The weighted sum of reward parts; see the module docstring for the call and how failures are handled.

    >>> reward = build_reward([{"name": "accuracy"}, {"name": "format", "weight": 0.5}])
    >>> result = reward(["1+1?"] * 2, ["<think>1+1</think><answer>2</answer>", "3"], answer=["2", "2"])
    >>> result.total, result.parts, result.errors
    ([1.5, 0.0], {'accuracy': [1.0, 0.0], 'format': [1.0, 0.0]}, 0)
    """

    parts: list[RewardPart]
    max_messages: int = 5
    stop_on_failure: bool = True

    def __call__(self, prompts: list, completions: list, **columns: Any) -> RewardResult:
        """Score N completions; `columns` are lists of N items, except `trainer_state` (passed whole)."""
        n = len(completions)
        for key, column in {"prompts": prompts, **columns}.items():
            if key in WHOLE:
                continue
            if not isinstance(column, Sequence) or isinstance(column, str) or len(column) != n:
                size = len(column) if isinstance(column, Sequence) else type(column).__name__
                raise ValueError(f"reward column {key!r} must be a list of {n} items (one per completion); "
                                 f"got {size}")
        batch = _Batch(n)
        kwargs = {"prompts": prompts, "completions": completions, **columns, "log_extra": batch.log_extra,
                  "log_metric": batch.log_metric}
        outputs: dict[str, Any] = {p.name: _call(p, kwargs) for p in self.parts if not p.is_async}
        waiting = [p for p in self.parts if p.is_async]
        if waiting:  # all async parts of the batch together, after the sync ones (TRL)
            outputs.update(zip([p.name for p in waiting], _await_all([_start(p, kwargs) for p in waiting])))
        parts = {p.name: _check(p, outputs[p.name], kwargs, batch) for p in self.parts}
        total = [_weighted(self.parts, parts, i) for i in range(n)]
        result = RewardResult(total, parts, len(batch.failures), batch.failures[: self.max_messages], batch.failed,
                              {k: sum(v) / len(v) for k, v in batch.metrics.items()}, batch.columns,
                              self._report(batch))
        if self.stop_on_failure:
            stop_if_failed(result, None)
        return result

    def _report(self, batch: _Batch) -> dict[str, str]:
        """Log the failures (a part failing on more than half the batch is an error); returns the parts that
        failed on every item, each with its first failure."""
        all_failed = {}
        for message in batch.failures[: self.max_messages]:
            log.warning("reward failed, scored 0: %s", message)
        if len(batch.failures) > self.max_messages:
            log.warning("... and %d more reward failures in this batch", len(batch.failures) - self.max_messages)
        for name, k in batch.failed.items():
            first = next(m for m in batch.failures if m.startswith(f"{name}["))
            if batch.fatal.get(name, 0) == batch.n:
                all_failed[name] = f"failed on every one of the {batch.n} completions of this batch, e.g. {first}"
            if k > batch.n / 2:
                log.error("reward %r failed on %d of %d completions (scored 0 there), e.g. %s", name, k, batch.n,
                          first)
        return all_failed


def stop_if_failed(result: Any, dist: Any = None) -> None:
    """Raise RewardFailure when a reward part failed on every item of the batch, on this process or (with
    `dist`, a collective every rank must call) on any other: training on zeros teaches nothing."""
    failed = getattr(result, "all_failed", None) or {}
    if dist is not None and dist.max(float(bool(failed))) == 0:
        return
    if failed:
        name, why = next(iter(failed.items()))
        raise RewardFailure(
            f"reward {name!r} {why}. It is called as TRL's GRPOTrainer calls it: fn(prompts=..., completions=..., "
            "completion_ids=..., trainer_state=..., **columns) with every data column under its own name; check "
            "its signature and the columns it reads (coldstart inspect shows them)")
    if dist is not None:
        raise RewardFailure("a reward failed on every completion of its batch on another process: see that "
                            "process's log")


def _nanmean(xs: list[float]) -> float | None:
    """Mean of the non-NaN values; None when there are none."""
    vals = [x for x in xs if not math.isnan(x)]
    return sum(vals) / len(vals) if vals else None


def _weighted(parts: list[RewardPart], scores: dict[str, list[float]], i: int) -> float:
    """Item i's weighted sum over the parts that apply to it (not NaN); NaN if none does."""
    vals = [p.weight * scores[p.name][i] for p in parts if not math.isnan(scores[p.name][i])]
    return sum(vals) if vals else math.nan


def _score(value: Any) -> float | None:
    """`value` as a finite float, or None if it is not one (NaN, inf, None, a string, a list)."""
    if isinstance(value, (str, bytes)):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


# ---- calling reward functions (sync, async, item by item) ---------------------------------------------------
_LOOP: asyncio.AbstractEventLoop | None = None


def _loop() -> asyncio.AbstractEventLoop:
    """An event loop in a daemon thread for async reward functions (works inside a running loop, e.g. Jupyter)."""
    global _LOOP
    if _LOOP is None:
        _LOOP = asyncio.new_event_loop()
        threading.Thread(target=_LOOP.run_forever, name="coldstart-rewards", daemon=True).start()
    return _LOOP


async def _capture(coro) -> Any:
    try:
        return await coro
    except (Exception, SystemExit) as e:  # noqa: BLE001 - handled by _check like a sync failure
        return _as_error(e)


def _await_all(coros: list) -> list:
    """Results of the coroutines run together (an exception in place of a result that raised)."""

    async def gather():
        return await asyncio.gather(*(_capture(c) for c in coros))

    return asyncio.run_coroutine_threadsafe(gather(), _loop()).result()


def _start(part: RewardPart, kwargs: dict) -> Any:
    """The coroutine of an async part's call (or its exception, if making it raised)."""
    try:
        return part.fn(**kwargs)
    except (Exception, SystemExit) as e:  # noqa: BLE001
        return _raise(_as_error(e))


async def _raise(e: Exception):
    raise e


def _call(part: RewardPart, kwargs: dict) -> Any:
    """The part's output on `kwargs` (awaited if async), or the exception it raised."""
    try:
        out = part.fn(**kwargs)
        return _await_all([out])[0] if inspect.isawaitable(out) else out
    except (Exception, SystemExit) as e:  # noqa: BLE001 - any failure of user code is retried item by item
        return _as_error(e)


def _as_error(e: BaseException) -> Exception:
    """A reward's exception as an Exception: a SystemExit (sys.exit() in reward code) is a failure, not an exit."""
    return e if isinstance(e, Exception) else RuntimeError(f"SystemExit({e.code!r}) raised in the reward function")


def _check(part: RewardPart, out: Any, kwargs: dict, batch: _Batch) -> list[float]:
    """(N,) scores of one part from its batch output; a batch that raised or has the wrong length is retried
    item by item. None is NaN (not applicable); a failed item scores 0 and is recorded in `batch`."""
    n = batch.n
    if not isinstance(out, Exception):
        try:
            out = list(out)
            if len(out) != n:
                out = ValueError(f"returned {len(out)} scores for {n} completions")
        except TypeError as e:
            out = e
    if isinstance(out, Exception):
        log.debug("reward %s failed on the batch (%s: %s); retrying item by item", part.name,
                  type(out).__name__, out)
        return [_item(part, i, kwargs, batch) for i in range(n)]
    return [_value(part, i, v, batch) for i, v in enumerate(out)]


def _value(part: RewardPart, i: int, value: Any, batch: _Batch) -> float:
    """One returned score: a finite number, None (NaN: not applicable), else a failure scoring 0."""
    if value is None:
        return math.nan
    x = _score(value)
    return x if x is not None else batch.fail(part, i, f"returned {value!r}, not a finite number or None")


def _item(part: RewardPart, i: int, kwargs: dict, batch: _Batch) -> float:
    """Score of item i alone; 0 (and a failure) if the part raises or returns garbage."""
    one = {k: (v if k in WHOLE else [v[i]]) for k, v in kwargs.items()}
    out = _call(part, one)
    if isinstance(out, Exception):
        return batch.fail(part, i, f"{type(out).__name__}: {out}", getattr(out, "data_error", False))
    try:
        out = list(out)
    except TypeError:
        return batch.fail(part, i, f"returned {out!r}, not a list of scores")
    if len(out) != 1:
        return batch.fail(part, i, f"returned {out!r} for one completion, not one score")
    return _value(part, i, out[0], batch)


def _build_part(spec: Any, task: Any, search: Sequence[str | Path]) -> tuple[str, float, RewardFn]:
    """(name, weight, reward function) of one spec; ValueError naming the field on bad input."""
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise ValueError(f"reward spec must be a dict with a string 'name'; got {spec!r}")  # noqa: TRY004 - config error
    name = spec["name"]
    unknown = sorted(set(spec) - {"name", "weight", "options"})
    if unknown:
        raise ValueError(f"reward {name!r}: unknown spec keys {unknown} (allowed: name, weight, options)")
    weight, options = spec.get("weight", 1.0), spec.get("options") or {}
    if isinstance(weight, bool) or _score(weight) is None:
        raise ValueError(f"reward {name!r}: weight must be a finite number; got {weight!r}")
    if not isinstance(options, dict) or "task" in options:
        raise ValueError(f"reward {name!r}: options must be a dict without 'task'; got {options!r}")
    if ":" in name:
        return name, float(weight), import_reward(name, search=search, **options)
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}; valid: {', '.join(sorted(REWARDS))} "
                         f"or 'package.module:function'")
    try:
        fn = REWARDS[name](**options, task=task)
    except TypeError as e:
        raise ValueError(f"reward {name!r}: bad options {options!r}: {e}") from e
    return name, float(weight), builtin(fn)


def build_reward(specs: list[dict], task: Any = None, search: Sequence[str | Path] = (),
                 stop_on_failure: bool = True) -> CombinedReward:
    """Build the weighted sum of the rewards in `specs`; a repeated name gets a suffix (`format_2`).
    `search`: folders user reward modules are imported from first (the recipe's folder).

    >>> build_reward([{"name": "accuracy"}, {"name": "format"}, {"name": "format", "options": {"tag": "plan"}}]
    ...              ).parts[2].name
    'format_2'
    """
    if not isinstance(specs, list) or not specs:
        raise ValueError(f"rewards: need a non-empty list of reward specs; got {specs!r}")
    parts: list[RewardPart] = []
    for spec in specs:
        name, weight, fn = _build_part(spec, task, search)
        key, k = name, 1
        while any(p.name == key for p in parts):
            k += 1
            key = f"{name}_{k}"
        parts.append(RewardPart(key, weight, fn))
    return CombinedReward(parts, stop_on_failure=stop_on_failure)


# ---- the inputs of a reward call ------------------------------------------------------------------------------
@dataclass
class RewardState:
    """What TRL's `trainer_state` (a transformers.TrainerState) tells reward functions, for a coldstart stage:
    optimizer steps so far, the stage's step budget, passes over the prompt pool, and the process's rank."""

    global_step: int = 0
    max_steps: int = 0
    epoch: float = 0.0
    num_input_tokens_seen: int = 0
    is_world_process_zero: bool = True
    is_local_process_zero: bool = True
    stage: str = "rl"


def reward_inputs(rows: list, texts: list[str], completion_ids: list[list[int]] | None = None,
                  truncated: list[bool] | None = None, trainer_state: RewardState | None = None,
                  prefix: str = "") -> tuple[list, list, dict[str, Any]]:
    """(prompts, completions, columns) for a CombinedReward call on N = len(rows) completions, as TRL builds
    them: prompts as the data has them (strings or message lists), completions as strings, or as
    `[{"role": "assistant", "content": text}]` where the prompt is conversational, and as columns every
    column of the examples under its own name (Example.columns; None where a row lacks it) plus coldstart's:
    `example` (the Example), `completion_ids` (N lists of token ids, eos kept), `completion_length`
    (tokens), `truncated`, `completion_prefix` (what the chat template's generation prompt already wrote of
    the completion, e.g. "<think>\\n") and `trainer_state`.

    rows: N examples (prompt-major: each repeated G times); texts: (N,) completion texts;
    completion_ids: N lists of ids (None: lengths unknown, 0).
    """
    n = len(rows)
    each = [e.columns() for e in rows]
    columns: dict[str, Any] = {k: [c.get(k) for c in each] for k in dict.fromkeys(k for c in each for k in c)}
    completions = [[{"role": "assistant", "content": t}] if e.conversational else t for e, t in zip(rows, texts)]
    ids = completion_ids if completion_ids is not None else [[] for _ in range(n)]
    columns.update(example=list(rows), completion_ids=ids, completion_length=[len(i) for i in ids],
                   truncated=list(truncated) if truncated is not None else [False] * n,
                   completion_prefix=[prefix] * n, trainer_state=trainer_state or RewardState())
    return [e.prompt for e in rows], completions, columns


def score_rows(reward_fn, rows: list, texts: list[str], **kwargs: Any) -> RewardResult:
    """`reward_fn` on the completions `texts` of `rows` (see reward_inputs for the keyword arguments)."""
    prompts, completions, columns = reward_inputs(rows, texts, **kwargs)
    return reward_fn(prompts, completions, **columns)
