"""A stage's start: the task, the base model folder, the model a stage starts from, its folder and resume point.

With `model.init: tiny` the base model is built once, seeded, into `DIR/base/` (tokenizer included), so that
every stage and every arm of the demo starts from the very same weights. With a pretrained model the base is
`model.path` itself (a folder or hub id), never copied.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import TRAINING_STAGES, Recipe, save_recipe
from ..models import build_char_tokenizer, build_tiny_model
from ..tasks import build_task
from ..types import Task
from .checkpoint import MARKER, is_complete, latest_checkpoint


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


def set_aside_checkpoints(stage: Path, console=None) -> Path | None:
    """A fresh (not --resume) run into a stage folder that holds an earlier run's checkpoints moves them to
    `checkpoints.previous/` (replacing an older one): its best checkpoint, pruning and --resume then only ever
    see this run's (#22: the earlier run's checkpoints/best was exported as this run's model). The stage's
    exported model stays until this run replaces it (it may be this run's start, `sft.init: sft`)."""
    ckpts = stage / "checkpoints"
    if not ckpts.is_dir() or not any(ckpts.iterdir()):
        return None
    aside = stage / "checkpoints.previous"
    if aside.exists():
        shutil.rmtree(aside)
    os.replace(ckpts, aside)
    if console is not None:
        console.print(f"{stage.name}: a fresh run (no --resume): the earlier run's checkpoints moved to {aside}")
    return aside


def open_stage(recipe: Recipe, out: Path, name: str, init: str, resume: bool) -> Stage:
    """Create `out/name`, save the recipe there, seed, and load the model to train (from the newest
    checkpoint with `resume`, else from `init`, resolved by stage_start)."""
    from ..models import add_lora, compile_blocks, count_parameters, load_lora, load_model, load_tokenizer
    from .distributed import current
    from .runtime import console, setup

    stage = out / name
    device = setup(recipe.run.seed, recipe.run.threads, recipe.run.device)
    if current().is_main:  # only rank 0 writes files
        stage.mkdir(parents=True, exist_ok=True)
        if not resume:
            set_aside_checkpoints(stage, console)
        save_recipe(recipe, stage / "config.yaml")
    current().barrier()
    task = build_task_from(recipe)
    start = stage_start(out, init, base_model(recipe, out), previous_stages(recipe, name))
    ckpt = latest_checkpoint(stage) if resume else None
    tokenizer = load_tokenizer(ckpt or start, recipe.model.chat_template)
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
                      f"{name}: run.compile found no decoder blocks to compile; training runs eagerly",
                      style=None if blocks else "yellow")
    return Stage(stage, device, task, start, ckpt, tokenizer, model.train())


def stage_start(out: Path, init: str, base: str | Path, previous: tuple[str, ...] = ("sft",)) -> str | Path:
    """The model a stage starts from: `auto` = the last finished stage folder among `previous` (the stages
    before this one in `run.stages`), else the base model; `model` or `base` = the base model; a stage name
    (`sft`, `rsft`, `dpo`, `rl`) = that finished stage; anything else is a folder or hub id."""
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


def previous_stages(recipe: Recipe, name: str) -> tuple[str, ...]:
    """The training stages that come before `name` in `run.stages` (all of them if `name` is not listed)."""
    order = [s for s in recipe.run.stages if s in TRAINING_STAGES]
    return tuple(order[: order.index(name)] if name in order else order)

