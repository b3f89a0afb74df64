"""Fault injection: SIGKILL a short SFT → RL run at seeded random points, resume it each time, and compare
with an uninterrupted run: bit-identical weights and identical metrics (wall-clock keys aside).

Kill points alternate between "inside a step" (a seeded random delay after a new metrics line appears)
and "inside a checkpoint save" (as soon as a `checkpoints/.tmp-*` folder appears). After every kill the
newest checkpoint that `latest_checkpoint` picks must load (weights and trainer state). The uninterrupted
run goes on in parallel, so the whole test takes about as long as the killed run with its restarts.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from coldstart.infra.checkpoint import latest_checkpoint, load_trainer_state
from coldstart.models import load_model
from tests.conftest import TINY

REPO = Path(__file__).resolve().parents[2]
# The RL stage must change the weights every step: the overlong reward varies with the sampled length, so
# groups are not flat, and an entropy bonus trains every row.
ARGS = ["run", "recipes/demo.yaml", *TINY, "run.stages=[sft, rl]", "sft.max_steps=8", "sft.save_every=2",
        "rl.steps=4", "rl.save_every=1", "rl.entropy_coef=0.01",
        "rl.rewards=[{name: task}, {name: overlong, options: {max_len: 40, cache_len: 30}}]"]
STAGES = ("sft", "rl")
STEPS = 8 + 4  # metrics lines of the whole run: the progress points kills are planned at
KILLS = 5
WALL_KEYS = ("time/", "tokens_per_s")  # wall-clock measurements: the only keys allowed to differ


def _start(out: Path, resume: bool) -> subprocess.Popen:
    """Start `coldstart run` into `out`; its stderr goes to `out`.log (a pipe could fill up and block it)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{out}.log", "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "coldstart.cli", *ARGS, "--out", str(out),
                                 *(["--resume"] if resume else [])], cwd=REPO, stdout=subprocess.DEVNULL,
                                stderr=log, start_new_session=True)


def _finish(proc: subprocess.Popen, out: Path) -> None:
    assert proc.wait(timeout=300) == 0, Path(f"{out}.log").read_text()[-3000:]


def _metric_lines(out: Path) -> int:
    n = 0
    for stage in STAGES:
        path = out / stage / "metrics.jsonl"
        if path.exists():
            n += path.read_bytes().count(b"\n")
    return n


def _saving(out: Path) -> Path | None:
    """The stage folder whose checkpoint is being written right now, if any."""
    for stage in STAGES:
        if any((out / stage / "checkpoints").glob(".tmp-*")):
            return out / stage
    return None


def _run_until_killed(out: Path, mode: str, at: int, delay: float, resume: bool) -> tuple[str, Path | None] | None:
    """Run once and SIGKILL the process group once `at` metrics lines exist: after `delay` seconds (mode
    "step"), or as soon as a checkpoint save is under way (mode "save"). Returns (stage being trained, stage
    folder killed mid-save or None), or None if the run finished first."""
    proc = _start(out, resume)
    saving = None
    while proc.poll() is None:
        if _metric_lines(out) >= at:
            if mode == "step":
                time.sleep(delay)
                break
            saving = _saving(out)
            if saving is not None:
                break
        time.sleep(0.005)
    if proc.poll() is not None:
        _finish(proc, out)
        return None
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return ("rl" if (out / "rl" / "metrics.jsonl").exists() else "sft"), saving


def _assert_latest_loads(stage: Path) -> None:
    ckpt = latest_checkpoint(stage)
    if ckpt is None:  # killed while writing the very first checkpoint of the stage
        return
    model = load_model(ckpt)
    opt = torch.optim.AdamW(model.parameters())
    state = load_trainer_state(ckpt, opt)
    assert state["step"] == int(ckpt.name.split("-")[1])


def _rows(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(WALL_KEYS)} for r in rows]


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_matches_an_uninterrupted_run(tmp_path):
    start = time.monotonic()
    straight = _start(tmp_path / "straight", resume=False)
    killed = tmp_path / "killed"
    rng = random.Random(20261126)
    # progress (metrics lines so far) at which each kill happens: 2 in SFT (lines 0-7), 3 in RL (lines 8-11)
    points = sorted(rng.sample(range(1, 8), 2) + rng.sample(range(8, STEPS), 3))
    kills: list[tuple[str, str]] = []
    for i, at in enumerate(points):
        mode = "save" if i % 2 == 0 else "step"
        result = _run_until_killed(killed, mode, at, rng.uniform(0.0, 0.25), resume=i > 0)
        if result is None:
            break
        stage, saving = result
        kills.append((stage, mode))
        if saving is not None:
            _assert_latest_loads(saving)
    _finish(_start(killed, resume=True), killed)
    _finish(straight, tmp_path / "straight")
    assert len(kills) == KILLS and {stage for stage, _ in kills} == set(STAGES), kills

    for stage in STAGES:
        a = load_file(str(tmp_path / "straight" / stage / "model.safetensors"))
        b = load_file(str(killed / stage / "model.safetensors"))
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (stage, key)
        assert _rows(tmp_path / "straight" / stage / "metrics.jsonl") == _rows(killed / stage / "metrics.jsonl")
    base = load_file(str(tmp_path / "straight" / "base" / "model.safetensors"))
    rl = load_file(str(killed / "rl" / "model.safetensors"))
    assert any(not torch.equal(base[k], rl[k]) for k in base)  # the runs trained: equality is not vacuous
    print(f"faults: {len(kills)} kills survived ({kills}) in {time.monotonic() - start:.0f} s")
