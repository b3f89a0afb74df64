"""A training stage's books: what sft, rsft, dpo and rl keep the same way around their own steps.

    resume      state.json, optimizer, scheduler, generators and extra modules from the newest checkpoint
    metrics     one JSON row per step in `metrics.jsonl` (and the run's sinks); on resume the rows past the
                resumed step are dropped (runtime.MetricsLog)
    NaN policy  a step whose loss or gradient is not finite is skipped and counted; run.max_nonfinite_steps
                of them in a row stop the stage with the last checkpoint intact (runtime.NonFinite)
    clock       elapsed seconds carried across resumes (what a stage's max_seconds cap reads)
    saves       a checkpoint every save_every steps; the best val accuracy (`val/accuracy`) as checkpoints/best
    finish      the last checkpoint saved; checkpoints/best exported when keep_best and one was saved, else
                the last; complete.json written last (checkpoint.finalize_stage)

The stage's counters live in its state record: `StageState` for sft, rsft and dpo, rl's `TrainerState`. Both
have `step`, `elapsed`, `best`, `nonfinite` and `to_dict()`; the books read and write nothing else of them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .checkpoint import finalize_stage, load_trainer_state
from .distributed import current
from .runtime import MetricsLog, NonFinite, console, save_on_main
from .stage import Stage

VAL_ACCURACY = "val/accuracy"  # the metric every stage keeps its best checkpoint by


class Counters(Protocol):
    """What the books need of a stage's state record."""

    step: int
    elapsed: float
    best: float | None
    nonfinite: dict[str, int]

    def to_dict(self) -> dict[str, Any]: ...


@dataclass
class StageState:
    """The counters of sft, rsft and dpo, saved as state.json (the keys they wrote before this record, so old
    runs resume). counters: the stage's own (sft: traces; dpo: pairs; rsft: cursor, kept_total); nonfinite:
    runtime.NonFinite's counters; bad_evals: evaluations since the best (sft.patience)."""

    step: int = 0
    elapsed: float = 0.0
    best: float | None = None
    bad_evals: int = 0
    nonfinite: dict[str, int] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The state.json object: the named fields, then the NonFinite and the stage's counters, flat."""
        return {"step": self.step, "best": self.best, "bad_evals": self.bad_evals, "elapsed": self.elapsed,
                **self.nonfinite, **self.counters}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StageState:
        """Read a state.json object written by `to_dict`, or by coldstart before this record existed (rsft wrote
        its round count as both `round` and `step`)."""
        named = ("step", "elapsed", "best", "bad_evals")
        return cls(**{k: d[k] for k in named if k in d},
                   nonfinite={k: v for k, v in d.items() if k.startswith("nonfinite_")},
                   counters={k: v for k, v in d.items()
                             if k not in named and k != "round" and not k.startswith("nonfinite_")})


class StageRun:
    """The books of one stage run (see the module docstring); built after the optimizer, before the first step.

    `state` is the fresh run's record; with a checkpoint to resume (st.ckpt) it is replaced by the saved one,
    read by `read_state`, and the optimizer, scheduler, generators and modules are restored in place.
    """

    def __init__(self, name: str, st: Stage, state: Counters, *, optimizer=None, scheduler=None,
                 generators: dict | None = None, modules: dict | None = None, keep_best: bool = True,
                 save_every: int = 0, max_nonfinite: int = 3, lora: bool = False,
                 read_state=StageState.from_dict):
        self.name, self.st, self.optimizer, self.scheduler = name, st, optimizer, scheduler
        self.generators, self.modules = generators, modules
        self.keep_best, self.save_every = keep_best, save_every
        self.lora_base = st.start if lora else None  # a LoRA stage exports its adapter merged into the start
        if st.ckpt is not None:
            state = read_state(load_trainer_state(st.ckpt, optimizer, scheduler, generators, modules))
            console.print(f"{name}: resumed from {st.ckpt} at step {state.step}")
        self.state = state
        self.log = MetricsLog(st.dir / "metrics.jsonl",
                              resume_step=state.step if st.ckpt else None) if current().is_main else None
        self.nonfinite = NonFinite(name, max_nonfinite, state.nonfinite)
        self.last: Path | None = st.ckpt  # the newest step checkpoint, named in the NaN stop's message
        self._saved_step = state.step if st.ckpt is not None else None
        self._t0 = time.perf_counter() - state.elapsed

    def start_clock(self) -> None:
        """Count elapsed time from now on (plus what a resumed run had spent): call it before the first step."""
        self._t0 = time.perf_counter() - self.state.elapsed

    def skip_step(self, finite: bool) -> bool:
        """Record whether the step being taken (state.step + 1) had a finite loss and gradient; True when its
        optimizer step must be skipped. Raises FloatingPointError after max_nonfinite skipped in a row."""
        return self.nonfinite.check(finite, self.state.step + 1, self.last)

    def advance(self) -> None:
        """One step done: the step counter and the elapsed seconds."""
        self.state.step += 1
        self.state.elapsed = time.perf_counter() - self._t0

    @property
    def nonfinite_total(self) -> int:
        """Steps skipped for a NaN / inf loss or gradient so far (the `nonfinite_steps` metric)."""
        return self.state.nonfinite["nonfinite_total"]

    def write(self, row: dict[str, Any]) -> None:
        """Log the step's metrics row (rank 0 only)."""
        if self.log is not None:
            self.log.write(row)

    def save(self, name: str | None = None) -> Path:
        """A checkpoint of the current step (`checkpoints/{name}` when named), on rank 0; returns its path. Every
        save holds the whole trainer state (optimizer, scheduler, generators, modules such as rl's value
        head): the best one may become the stage's exported folder, whose trainer state must be whole too."""
        st = self.st
        path = save_on_main(st.dir, st.model, st.tokenizer, self.state.to_dict(), self.name, self.optimizer,
                            self.scheduler, self.generators, self.modules, name=name)
        if name is None:
            self.last, self._saved_step = path, self.state.step
        return path

    def save_if_due(self, total: int) -> None:
        """The periodic checkpoint: every save_every steps, except the last (finish saves that one)."""
        step = self.state.step
        if self.save_every and step % self.save_every == 0 and step < total:
            self.save()

    def track_best(self, accuracy: float | None) -> bool:
        """Keep checkpoints/best when `accuracy` (val/accuracy) beats the best so far; True when it did."""
        if accuracy is None or (self.state.best is not None and accuracy <= self.state.best):
            return False
        self.state.best = accuracy
        self.save("best")
        return True

    def finish(self, summary: dict[str, Any]) -> Path:
        """Save the last step (unless just saved), export the stage's model and write complete.json with the
        common summary plus the stage's own `summary` keys; returns the stage folder."""
        if self._saved_step != self.state.step:  # None until the first step save (or the resumed checkpoint)
            self.save()
        best = self.st.dir / "checkpoints" / "best"
        final = best if self.keep_best and best.is_dir() else self.last
        s = self.state
        summary = {"stage": self.name, "steps": s.step, "seconds": s.elapsed, "best_val_accuracy": s.best,
                   "nonfinite_steps": self.nonfinite_total, **summary}
        if current().is_main:
            finalize_stage(self.st.dir, final, summary, lora_base=self.lora_base)
        current().barrier()
        console.print(f"{self.name}: done in {s.elapsed:.0f}s, {s.step} steps; model in {self.st.dir}")
        return self.st.dir
