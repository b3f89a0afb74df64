"""Glue between the recipe and the stages: the task, the base model folder, the trace budget.

With `model.init: tiny` the base model is built once, seeded, into `DIR/base/` (tokenizer included), so that
every stage and every arm of the demo starts from the very same weights. With a pretrained model the base is
`model.path` itself (a folder or hub id), never copied.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .checkpoint import MARKER, is_complete, latest_checkpoint
from .config import Recipe, save_recipe
from .models import build_char_tokenizer, build_tiny_model
from .tasks import build_task
from .types import Example, Task


def build_task_from(recipe: Recipe) -> Task:
    """The recipe's task, built with its options and the run seed."""
    return build_task(recipe.task.name, recipe.task.options, seed=recipe.run.seed)


def base_model(recipe: Recipe, out: Path) -> str | Path:
    """The folder (or hub id) of the untrained model; builds `out/base` for a tiny model if missing."""
    m = recipe.model
    if m.init == "pretrained":
        if not m.path:
            raise ValueError("model.path: required unless model.init is 'tiny' (a folder or a hub id)")
        return m.path
    from .distributed import current

    base, dist = out / "base", current()
    # every rank checks before any builds (the reduce waits for all), so they all take the same branch
    if dist.max(0.0 if is_complete(base) else 1.0) == 0:
        return base
    if not dist.is_main:  # rank 0 builds it; the others wait for the whole folder
        dist.barrier()
        return base
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(
        len(tokenizer), arch=m.arch, hidden_size=m.hidden_size, layers=m.layers, heads=m.heads,
        kv_heads=m.kv_heads, intermediate_size=m.intermediate_size, max_len=m.max_len,
        pad_id=tokenizer.pad_token_id, bos_id=tokenizer.bos_token_id, eos_id=tokenizer.eos_token_id,
        seed=recipe.run.seed,
    )
    base.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(base)
    tokenizer.save_pretrained(base)
    save_recipe(recipe, base / "config.yaml")
    (base / MARKER).write_text(json.dumps({"stage": "base", "init": "tiny"}))
    dist.barrier()
    return base


# the training stages that run on several processes (DDP through accelerate; docs/scale-out.md)
MULTI_PROCESS_STAGES = ("sft", "rsft", "dpo", "rl")


@dataclass
class Stage:
    """What a training stage starts with: its folder, device, task, start model and resume point."""

    dir: Path
    device: torch.device
    task: Task
    start: str | Path  # the model folder (or hub id) the stage starts from
    ckpt: Path | None  # the checkpoint to resume from, if any
    tokenizer: Any
    model: torch.nn.Module


def open_stage(recipe: Recipe, out: Path, name: str, init: str, resume: bool) -> Stage:
    """Create `out/name`, save the recipe there, seed, and load the model to train (from the newest
    checkpoint with `resume`, else from `init`, resolved by runtime.stage_start)."""
    from .distributed import current
    from .models import add_lora, compile_blocks, count_parameters, load_lora, load_model, load_tokenizer
    from .runtime import console, setup, stage_start

    stage = out / name
    device = setup(recipe.run.seed, recipe.run.threads, recipe.run.device)
    if current().world > 1 and name not in MULTI_PROCESS_STAGES:
        raise ValueError(f"{name}: this stage does not run on several processes yet ({', '.join(MULTI_PROCESS_STAGES)} "
                         "and eval do); run it with one process, then launch the next stages (docs/scale-out.md)")
    if current().is_main:  # only rank 0 writes files
        stage.mkdir(parents=True, exist_ok=True)
        save_recipe(recipe, stage / "config.yaml")
    current().barrier()
    task = build_task_from(recipe)
    start = stage_start(out, init, base_model(recipe, out), previous_stages(recipe, name))
    ckpt = latest_checkpoint(stage) if resume else None
    tokenizer = load_tokenizer(ckpt or start)
    lora = recipe.model.lora
    if lora is None:
        model = load_model(ckpt or start, recipe.run.dtype, device)
    elif ckpt is not None:  # a LoRA checkpoint holds the adapter only: the base is the stage's start
        model = load_lora(start, ckpt, recipe.run.dtype, device)
    else:
        model = add_lora(load_model(start, recipe.run.dtype, device), lora.r, lora.alpha, lora.dropout,
                         lora.target_modules)
    trainable, total = count_parameters(model)
    console.print(f"{name}: {trainable:,} trainable parameters of {total:,}" + (" (LoRA)" if lora else ""))
    if recipe.run.compile:
        blocks = compile_blocks(model)
        console.print(f"{name}: torch.compile on {blocks} decoder blocks" if blocks else
                      f"[yellow]{name}: run.compile found no decoder blocks to compile; training runs eagerly")
    return Stage(stage, device, task, start, ckpt, tokenizer, model.train())


def previous_stages(recipe: Recipe, name: str) -> tuple[str, ...]:
    """The training stages that come before `name` in `run.stages` (all of them if `name` is not listed)."""
    from .config import TRAINING_STAGES

    order = [s for s in recipe.run.stages if s in TRAINING_STAGES]
    return tuple(order[: order.index(name)] if name in order else order)


def select_traces(pool: list[Example], budget: int | float) -> list[Example]:
    """The first `budget` examples with a solution: a count, or a fraction in (0, 1] of those available."""
    with_trace = [ex for ex in pool if ex.solution]
    if not with_trace:
        raise ValueError("sft: the task's training examples have no solution traces (data.fields.solution?)")
    if isinstance(budget, float) and budget <= 1.0:
        if budget <= 0:
            raise ValueError(f"sft.traces: a fraction must be in (0, 1], got {budget}")
        n = max(1, round(budget * len(with_trace)))
    else:
        n = int(budget)
        if n < 1:
            raise ValueError(f"sft.traces: need at least 1 trace, got {budget}")
        if n > len(with_trace):
            raise ValueError(f"sft.traces: asked for {n} traces but the training pool has {len(with_trace)} "
                             "with a solution (raise task.train_size or lower sft.traces)")
    return with_trace[:n]
