"""What every training stage sets up the same way: device, threads, seeds, optimizer and schedule,
the metrics log, the progress bar, and which model folder a stage starts from."""

from __future__ import annotations

import atexit
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from .checkpoint import checkpoint_path, save_checkpoint

# Markup off: messages carry user text (paths, keys, "pip install coldstart[wandb]") that rich would eat as
# markup; colour goes through style= instead.
console = Console(stderr=True, markup=False, highlight=False, soft_wrap=True)  # soft_wrap: a message is one line


def setup(seed: int, threads: int | None, device: str) -> torch.device:
    """Seed python and torch, set intra-op threads, and resolve `auto` to cuda / mps / cpu. Under
    `accelerate launch` the device is the one accelerate gave this rank, and only rank 0 prints."""
    from .distributed import current

    dist = current()
    console.quiet = not dist.is_main
    random.seed(seed)
    torch.manual_seed(seed)
    # Denormal floats make CPU matmuls several times slower once trained weights and activations get tiny.
    torch.set_flush_denormal(True)
    if threads:
        torch.set_num_threads(threads)
    if dist.device is not None:
        return dist.device
    if device == "auto":
        if torch.cuda.is_available():
            device = "cuda"
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    return torch.device(device)


def build_optimizer(params, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over the trainable parameters (foreach kernels; fused where CUDA allows)."""
    params = [p for p in params if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.95))


def build_scheduler(optimizer, schedule: str, total_steps: int, warmup: float, min_lr_ratio: float):
    """Linear warmup over `warmup` × total steps, then cosine / linear decay to `min_lr_ratio`, or constant."""
    warm = round(warmup * total_steps)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warm) / max(1, total_steps - warm))
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1 - progress
        return min_lr_ratio + (1 - min_lr_ratio) * shape

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def assert_finite(model: torch.nn.Module | dict[str, torch.Tensor], where: str) -> None:
    """Raise FloatingPointError naming the first parameter (of a model, or of a {name: tensor} state dict)
    holding NaN or inf (called before every save, so a checkpoint never holds one)."""
    for name, p in model.items() if isinstance(model, dict) else model.named_parameters():
        if not torch.isfinite(p).all():
            raise FloatingPointError(f"{where}: parameter {name} holds NaN or inf; not saving it")


def save_on_main(stage: Path, model: torch.nn.Module, tokenizer, state: dict, where: str, optimizer=None,
                 scheduler=None, generators: dict | None = None, extra: dict | None = None,
                 name: str | None = None) -> Path:
    """`save_checkpoint` on rank 0 only, never of a non-finite model (`where` names the stage in that error),
    then wait for it on every rank. Returns the checkpoint's path on every rank. Under FSDP every rank first
    takes part in gathering the full weights and optimizer state, which rank 0 writes as one process would."""
    from .distributed import current

    dist = current()
    weights = optim = None
    if dist.sharded:
        weights, optim = dist.full_state(model, optimizer)
    if dist.is_main:
        assert_finite(model if weights is None else weights, f"{where} step {state['step']}")
        save_checkpoint(stage, state["step"], model, tokenizer, state, optimizer, scheduler, generators, extra,
                        name=name, weights=weights, optimizer_state=optim)
    dist.barrier()
    return checkpoint_path(stage, state["step"], name)


class NonFinite:
    """Counts optimizer steps skipped for a NaN / inf loss or gradient; `limit` in a row stop the run."""

    def __init__(self, stage: str, limit: int, state: dict):
        self.stage, self.limit, self.state = stage, limit, state
        state.setdefault("nonfinite_run", 0)
        state.setdefault("nonfinite_total", 0)

    def check(self, ok: bool, step: int, last_ckpt) -> bool:
        """Record whether this step's loss and gradient were finite; True when the step must be skipped.
        Raises FloatingPointError after `limit` skipped steps in a row."""
        if ok:
            self.state["nonfinite_run"] = 0
            return False
        self.state["nonfinite_run"] += 1
        self.state["nonfinite_total"] += 1
        console.print(f"{self.stage}: step {step}: non-finite loss or gradient; step skipped "
                      f"({self.state['nonfinite_run']} in a row, {self.state['nonfinite_total']} in all)",
                      style="yellow")
        if self.state["nonfinite_run"] >= self.limit:
            raise FloatingPointError(
                f"{self.stage}: {self.limit} steps in a row had a NaN or inf loss or gradient (last at step "
                f"{step}); stopped. The last checkpoint is intact: {last_ckpt}. Lower the learning rate, "
                f"check the data, or raise run.max_nonfinite_steps")
        return True


class MetricsLog:
    """Appends one JSON object per line to `path`; on resume, drops lines past the resumed step.

    Every row also goes to the sinks named in `log_to` ("tensorboard": `<stage>/tb/`, "wandb"); None reads
    `run.log_to` from the stage's `config.yaml` next to `path` (open_stage writes it), so every stage that logs
    through MetricsLog feeds the same dicts to all sinks.
    """

    def __init__(self, path: str | Path, resume_step: int | None = None, log_to: list[str] | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.write_text("")
        elif self.path.exists():
            kept = [ln for ln in self.path.read_text().splitlines() if _step_of(ln) <= resume_step]
            self.path.write_text("".join(ln + "\n" for ln in kept))
        names = _configured_sinks(self.path.parent) if log_to is None else list(log_to)
        self.sinks = [SINKS[name](self.path.parent, resume_step) for name in dict.fromkeys(names)]
        if self.sinks:
            atexit.register(self.close)

    def write(self, row: dict[str, Any]) -> None:
        """Append `row` to metrics.jsonl and hand it to every sink."""
        with self.path.open("a") as f:
            f.write(json.dumps(row, default=float) + "\n")
        for sink in self.sinks:
            sink.write(row)

    def close(self) -> None:
        """Flush and close the sinks (also called at exit)."""
        for sink in self.sinks:
            sink.close()
        self.sinks = []


def _configured_sinks(stage: Path) -> list[str]:
    """`run.log_to` of the recipe saved in `stage/config.yaml`, or [] without one."""
    import yaml

    cfg = stage / "config.yaml"
    if not cfg.is_file():
        return []
    data = yaml.safe_load(cfg.read_text()) or {}
    names = (data.get("run") or {}).get("log_to") or []
    unknown = [n for n in names if n not in SINKS]
    if unknown:
        raise ValueError(f"{cfg}: run.log_to: unknown sink(s) {unknown}; valid: {', '.join(SINKS)}")
    return list(names)


def scalars(row: dict[str, Any]) -> dict[str, float]:
    """The numeric entries of a metrics row but `step`, as floats (None, strings and lists are dropped)."""
    return {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}


class TensorBoardSink:
    """Scalars of each row into `<stage>/tb/` (torch.utils.tensorboard), at the row's `step`."""

    def __init__(self, stage: Path, resume_step: int | None = None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ValueError("run.log_to: tensorboard needs the tensorboard package: "
                             "pip install coldstart[tensorboard]") from e
        # purge_step drops events a killed run wrote past the step it resumes from
        self.writer = SummaryWriter(str(stage / "tb"), purge_step=None if resume_step is None else resume_step + 1)

    def write(self, row: dict[str, Any]) -> None:
        """Add every numeric value of `row` as a scalar at `row["step"]`."""
        step = int(row.get("step", 0))
        for key, value in scalars(row).items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        """Close the event file."""
        self.writer.close()


class WandbSink:
    """Each row to Weights & Biases: project $WANDB_PROJECT (default coldstart), run `<run folder>/<stage>`,
    mode from $WANDB_MODE (online | offline | disabled), files under `<stage>/`."""

    def __init__(self, stage: Path, resume_step: int | None = None):
        try:
            import wandb
        except ImportError as e:
            raise ValueError("run.log_to: wandb is not installed: pip install coldstart[wandb]") from e
        import os

        import yaml

        if wandb.run is not None:  # the previous stage of the same `coldstart run`
            wandb.run.finish()
        cfg = stage / "config.yaml"
        config = yaml.safe_load(cfg.read_text()) if cfg.is_file() else {}
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "coldstart"),
                              name=f"{stage.resolve().parent.name}/{stage.name}", group=stage.resolve().parent.name,
                              job_type=stage.name, dir=str(stage), config=config,
                              mode=os.environ.get("WANDB_MODE") or None)

    def write(self, row: dict[str, Any]) -> None:
        """Log the numeric values of `row` at `row["step"]`."""
        self.run.log(scalars(row), step=int(row.get("step", 0)))

    def close(self) -> None:
        """Finish the W&B run."""
        self.run.finish()


SINKS = {"tensorboard": TensorBoardSink, "wandb": WandbSink}


def log_eval(recipe: Any, out: Path, results: dict[str, dict[str, Any]]) -> None:
    """The eval stage's results into the sinks of `run.log_to`, as one row at step 0 under `out/eval/`
    (TensorBoard: `out/eval/tb`; W&B: run `<run folder>/eval`), keyed `eval/<stage>/<metric>`."""
    names = list(dict.fromkeys(recipe.run.log_to or []))
    if not names:
        return
    folder = Path(out) / "eval"
    folder.mkdir(parents=True, exist_ok=True)
    row = {"step": 0, **{f"eval/{stage}/{k}": v for stage, r in results.items() for k, v in r.items()
                         if isinstance(v, (int, float)) and not isinstance(v, bool)}}
    for name in names:
        sink = SINKS[name](folder)
        sink.write(row)
        sink.close()


def _step_of(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (ValueError, AttributeError):
        return 1 << 62  # unreadable line (a kill mid-write): dropped


def progress(quiet: bool, every_s: float = 30.0) -> Progress | LineProgress:
    """A rich progress bar on stderr with elapsed time and ETA; when stderr is not a terminal (a log file, CI),
    plain lines instead (LineProgress); nothing when quiet."""
    if not quiet and not console.is_terminal:
        return LineProgress(every_s)
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}", markup=False),
        console=console,
        disable=quiet,
        transient=False,
    )


class LineProgress:
    """Progress as plain lines for output that is not a terminal: `sft 40/300 · loss 1.234 · 12 s`, on the
    first and last update and whenever a tenth of the total or `every_s` seconds have passed since the last
    line. The same calls as rich's Progress (add_task, update, advance; a context manager)."""

    def __init__(self, every_s: float = 30.0, out: Any = None):
        self.every_s, self.out = every_s, out
        self.tasks: dict[int, dict[str, Any]] = {}

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def add_task(self, description: str, total: float | None = None, completed: float = 0, **fields) -> int:
        self.tasks[len(self.tasks)] = {"description": description, "total": total, "completed": completed,
                                       "start": time.perf_counter(), "shown_at": None, "shown_t": 0.0,
                                       "info": fields.get("info", "")}
        return len(self.tasks) - 1

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def update(self, task_id: int, completed: float | None = None, advance: float | None = None,
               info: str | None = None, **_: Any) -> None:
        t = self.tasks[task_id]
        if completed is not None:
            t["completed"] = completed
        if advance is not None:
            t["completed"] += advance
        if info is not None:
            t["info"] = info
        now, total, done = time.perf_counter(), t["total"], t["completed"]
        tenth = (total or 0) / 10
        due = (t["shown_at"] is None or done == total or now - t["shown_t"] >= self.every_s
               or (tenth and done - t["shown_at"] >= tenth))
        if due and done != t["shown_at"]:
            t["shown_at"], t["shown_t"] = done, now
            parts = [f"{t['description']} {done:g}" + (f"/{total:g}" if total else ""), t["info"],
                     f"{now - t['start']:.0f} s"]
            print(" · ".join(p for p in parts if p), file=self.out or sys.stderr, flush=True)


class Timer:
    """Context manager that adds elapsed seconds into a dict under a key."""

    def __init__(self, into: dict[str, float], key: str):
        self.into, self.key = into, key

    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.into[self.key] = self.into.get(self.key, 0.0) + time.perf_counter() - self.t0

