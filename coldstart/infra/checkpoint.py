"""Checkpoints: atomic saves, exact resume, and the final Hugging Face folder of a stage.

Layout of a stage folder `DIR/<stage>/`:

    checkpoints/step-000100/   model (safetensors, config, tokenizer, generation config) + trainer_state/
    checkpoints/step-000200/   ... the last `keep` saves
    model.safetensors, config.json, tokenizer files, trainer_state/    the final model, exported at the end
    complete.json              written last: the stage finished and the folder above is whole
    metrics.jsonl, config.yaml

A save writes into a hidden temp folder, fsyncs every file, then renames it into place, so a process killed
mid-save never leaves a half-written checkpoint under a `step-*` name; `latest_checkpoint` only ever sees
whole ones. trainer_state/ holds the optimizer, scheduler, RNG states (python, torch, and any generator the
trainer names) and a JSON of counters (step, data position, best metric), which is what exact resume needs.

Loading is data-only: model weights are safetensors files, and `states.pt` is read with
`torch.load(weights_only=True)`, which unpickles tensors and plain containers (dict, list, tuple, str,
numbers, None) and nothing else, so a checkpoint from elsewhere cannot run code when it is resumed. The
python RNG state is a tuple of ints, which that allows; the format is the one earlier checkpoints have.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

STATE_DIR = "trainer_state"
MARKER = "complete.json"


class UnsafeCheckpointError(ValueError):
    """A trainer state file that holds pickled objects beyond tensors and plain containers."""


def _fsync_tree(path: Path, skip: tuple[str, ...] = ()) -> None:
    """fsync every file and folder under `path`, not descending into folders named in `skip`."""
    for root, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if d not in skip]
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
        fd = os.open(root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def checkpoint_path(stage_dir: str | Path, step: int, name: str | None = None) -> Path:
    """Where `save_checkpoint` puts the save of `step` (or the one called `name`, e.g. "best")."""
    return Path(stage_dir) / "checkpoints" / (name or f"step-{step:06d}")


def save_checkpoint(
    stage_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    tokenizer,
    state: dict[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    generators: dict[str, torch.Generator] | None = None,
    extra_modules: dict[str, torch.nn.Module] | None = None,
    keep: int = 2,
    name: str | None = None,
    weights: dict[str, torch.Tensor] | None = None,
    optimizer_state: dict | None = None,
) -> Path:
    """Atomically write `stage_dir/checkpoints/step-{step:06d}` (or `checkpoints/{name}`, e.g. "best") and
    prune all but the last `keep` step saves. `weights` and `optimizer_state`, when given, are saved instead
    of the model's and the optimizer's own (an FSDP run's gathered full states, `Dist.full_state`)."""
    final = checkpoint_path(stage_dir, step, name)
    ckpt_root = final.parent
    ckpt_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=ckpt_root))
    try:
        model.save_pretrained(tmp, safe_serialization=True, **({"state_dict": weights} if weights is not None else {}))
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        sdir = tmp / STATE_DIR
        sdir.mkdir()
        torch.save(
            {
                "optimizer": optimizer_state if optimizer_state is not None else
                optimizer.state_dict() if optimizer is not None else None,
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "torch_rng": torch.get_rng_state(),
                "python_rng": random.getstate(),
                "generators": {k: g.get_state() for k, g in (generators or {}).items()},
                "modules": {k: m.state_dict() for k, m in (extra_modules or {}).items()},
            },
            sdir / "states.pt",
        )
        (sdir / "state.json").write_text(json.dumps({**state, "step": step}, indent=1))
        _fsync_tree(tmp)
        if final.exists():  # a re-save of the same name: swap, so a whole copy exists at every moment
            old = ckpt_root / f".old-{final.name}"
            shutil.rmtree(old, ignore_errors=True)
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in sorted(ckpt_root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(stage_dir: str | Path) -> Path | None:
    """The newest whole checkpoint folder of a stage, or None. Leftover temp folders are removed."""
    ckpt_root = Path(stage_dir) / "checkpoints"
    if not ckpt_root.is_dir():
        return None
    for tmp in ckpt_root.glob(".tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)
    for old in ckpt_root.glob(".old-*"):  # killed between the two renames of a swap: the old copy is whole
        if (ckpt_root / old.name[5:]).exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(old, ckpt_root / old.name[5:])
    found = sorted(p for p in ckpt_root.glob("step-*") if (p / STATE_DIR / "state.json").is_file())
    return found[-1] if found else None


def load_trainer_state(
    ckpt: str | Path,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    generators: dict[str, torch.Generator] | None = None,
    extra_modules: dict[str, torch.nn.Module] | None = None,
) -> dict[str, Any]:
    """Restore optimizer, scheduler, RNG and generator states from a checkpoint; return its counters."""
    sdir = Path(ckpt) / STATE_DIR
    blob = _read_states(sdir)
    if optimizer is not None and blob["optimizer"] is not None:
        optimizer.load_state_dict(blob["optimizer"])
    if scheduler is not None and blob["scheduler"] is not None:
        scheduler.load_state_dict(blob["scheduler"])
    torch.set_rng_state(blob["torch_rng"])
    random.setstate(blob["python_rng"])
    for name, gen in (generators or {}).items():
        if name in blob["generators"]:
            gen.set_state(blob["generators"][name])
    for name, module in (extra_modules or {}).items():
        if name in blob["modules"]:
            module.load_state_dict(blob["modules"][name])
    return json.loads((sdir / "state.json").read_text())


def _read_states(sdir: Path) -> dict[str, Any]:
    """The tensors and counters of `states.pt`, loaded data-only (weights_only=True)."""
    try:
        return torch.load(sdir / "states.pt", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(
            f"{sdir / 'states.pt'}: refused to load: it holds objects other than tensors and plain containers, "
            f"which could run code when unpickled (torch.load weights_only=True). Only resume checkpoints that "
            f"coldstart wrote. Detail: {str(e).splitlines()[0][:300]}") from None


def read_optimizer_state(ckpt: str | Path) -> dict | None:
    """The optimizer state saved in checkpoint `ckpt` (`Optimizer.state_dict()` format, full tensors), or None."""
    return _read_states(Path(ckpt) / STATE_DIR)["optimizer"]


def finalize_stage(stage_dir: str | Path, ckpt: str | Path, summary: dict[str, Any],
                   lora_base: str | Path | None = None) -> None:
    """Export checkpoint `ckpt` as the stage's own model folder, then write the completion marker last.

    A LoRA checkpoint holds only the adapter: it is copied to `stage_dir/adapter/`, and the adapter merged
    into `lora_base` is saved as the stage's model, so the folder still loads with AutoModelForCausalLM.
    """
    stage_dir, ckpt = Path(stage_dir), Path(ckpt)
    (stage_dir / MARKER).unlink(missing_ok=True)
    if lora_base is not None:
        _export_merged(stage_dir, ckpt, lora_base)
    for src in ckpt.iterdir():
        is_adapter = src.name.startswith("adapter_") or (lora_base is not None and src.name == "README.md")
        dst = stage_dir / ("adapter" if is_adapter else "") / src.name
        dst.parent.mkdir(exist_ok=True)
        tmp = stage_dir / f".tmp-{src.name}"
        if src.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(src, tmp)
            shutil.rmtree(dst, ignore_errors=True)
        else:
            shutil.copy2(src, tmp)
        os.replace(tmp, dst)
    _fsync_tree(stage_dir, skip=("checkpoints",))  # the checkpoints were synced when they were saved
    marker_tmp = stage_dir / f".tmp-{MARKER}"
    marker_tmp.write_text(json.dumps({**summary, "from_checkpoint": ckpt.name}, indent=1))
    os.replace(marker_tmp, stage_dir / MARKER)


def _export_merged(stage_dir: Path, ckpt: Path, base: str | Path) -> None:
    """Merge the adapter in `ckpt` into `base` and write the full model files into `stage_dir`."""
    from ..models import load_lora

    merged = load_lora(base, ckpt).merge_and_unload()
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-merged-", dir=stage_dir))
    try:
        merged.save_pretrained(tmp, safe_serialization=True)
        for src in tmp.iterdir():
            os.replace(src, stage_dir / src.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def is_complete(stage_dir: str | Path) -> bool:
    """True when the stage finished and its folder holds a whole exported model."""
    return (Path(stage_dir) / MARKER).is_file()
