"""What every training stage sets up the same way: device, threads, seeds, optimizer and schedule,
the metrics log, the progress bar, and which model folder a stage starts from."""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .checkpoint import is_complete

console = Console(stderr=True)


def setup(seed: int, threads: int | None, device: str) -> torch.device:
    """Seed python and torch, set intra-op threads, and resolve `auto` to cuda / mps / cpu."""
    random.seed(seed)
    torch.manual_seed(seed)
    # Denormal floats make CPU matmuls several times slower once trained weights and activations get tiny.
    torch.set_flush_denormal(True)
    if threads:
        torch.set_num_threads(threads)
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


class MetricsLog:
    """Appends one JSON object per line to `path`; on resume, drops lines past the resumed step."""

    def __init__(self, path: str | Path, resume_step: int | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.write_text("")
        elif self.path.exists():
            kept = [ln for ln in self.path.read_text().splitlines() if _step_of(ln) <= resume_step]
            self.path.write_text("".join(ln + "\n" for ln in kept))

    def write(self, row: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(row, default=float) + "\n")


def _step_of(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (ValueError, AttributeError):
        return 1 << 62  # unreadable line (a kill mid-write): dropped


def progress(quiet: bool) -> Progress:
    """A rich progress bar on stderr (disabled when quiet)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        disable=quiet,
        transient=False,
    )


class Timer:
    """Context manager that adds elapsed seconds into a dict under a key."""

    def __init__(self, into: dict[str, float], key: str):
        self.into, self.key = into, key

    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.into[self.key] = self.into.get(self.key, 0.0) + time.perf_counter() - self.t0


def stage_start(out: Path, init: str, base: str | Path, previous: tuple[str, ...] = ("sft",)) -> str | Path:
    """The model a stage starts from: `auto` = the last finished stage folder among `previous` (the stages
    before this one in `run.stages`), else the base model; `model` or `base` = the base model; a stage name
    (`sft`, `rsft`, `dpo`, `rl`) = that finished stage; anything else is a folder or hub id."""
    from .config import TRAINING_STAGES

    if init == "auto":
        done = [s for s in previous if is_complete(out / s)]
        return out / done[-1] if done else base
    if init in ("model", "base"):
        return base
    if init in TRAINING_STAGES:
        if not is_complete(out / init):
            raise FileNotFoundError(f"{out / init}: no finished {init} stage to start from "
                                    f"(run `coldstart {init}` first)")
        return out / init
    return init
