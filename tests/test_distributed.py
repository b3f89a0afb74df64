"""Two CPU processes (gloo) through `accelerate launch`: SFT and RL give the single-process weights.

The launched run checks after every optimizer step that both ranks hold identical weights (a float64
checksum gathered from each rank; a mismatch raises) and logs it as `dist/param_checksum`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from coldstart.infra.distributed import merge_rows

RECIPE = "recipes/demo.yaml"
STEPS = ["sft.max_steps=6", "sft.batch_size=7", "sft.eval_every=3", "rl.steps=3", "rl.prompts_per_step=4",
         "rl.group_size=4", "rl.micro_batch_size=3", "rl.filter=dynamic", "rl.save_every=2", "run.stages=[sft, rl]"]


def launch(args: list[str], processes: int, config: str | None = None, port: int = 29533, timeout: int = 600) -> str:
    """`accelerate launch --multi_gpu --num_processes N -m coldstart ARGS` (on CPU, --multi_gpu selects
    torch.distributed's launcher and accelerate picks gloo), or with `--config_file CONFIG` instead of the
    DDP flags; a single process runs the CLI directly. Returns stderr (rank 0's console)."""
    if processes == 1:
        cmd = [sys.executable, "-m", "coldstart", *args]
    else:
        accelerate = shutil.which("accelerate") or pytest.fail("accelerate's launcher is not on PATH")
        engine = (["--config_file", config] if config else
                  ["--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no"])
        cmd = [accelerate, "launch", *engine, "--num_processes", str(processes), "--num_machines", "1",
               "--main_process_port", str(port), "-m", "coldstart", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stderr


def weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def metrics(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_processes_match_one_in_sft_and_rl_and_resume(tmp_path, tiny_overrides):
    one, two = tmp_path / "one", tmp_path / "two"
    launch(["run", RECIPE, "--out", str(one), *tiny_overrides, *STEPS], 1)
    # two ranks: 2 RL steps, then a resume (both ranks from rank 0's checkpoint) to the third
    launch(["run", RECIPE, "--out", str(two), *tiny_overrides, *STEPS, "rl.steps=2"], 2)
    launch(["rl", RECIPE, "--out", str(two), "--resume", *tiny_overrides, *STEPS], 2)

    for stage in ("sft", "rl"):
        a, b = weights(one / stage), weights(two / stage)
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(b[k], a[k], atol=2e-5, rtol=1e-4, msg=f"{stage}: {k}")
        ma, mb = metrics(one / stage), metrics(two / stage)
        assert [r["step"] for r in ma] == [r["step"] for r in mb]
        key = "loss" if stage == "sft" else "reward/mean"
        for ra, rb in zip(ma, mb):
            assert rb[key] == pytest.approx(ra[key], abs=1e-4), (stage, ra["step"])
            assert (stage == "sft") or "dist/param_checksum" in rb
    # eval split over the ranks: the merged greedy metrics are the single-process ones
    launch(["eval", RECIPE, "--out", str(one), *tiny_overrides, *STEPS, "eval.samples=0"], 1)
    launch(["eval", RECIPE, "--out", str(two), *tiny_overrides, *STEPS, "eval.samples=0"], 2)
    ea, eb = (json.loads((d / "eval.json").read_text()) for d in (one, two))
    assert set(ea) == set(eb) == {"base", "sft", "rl"}
    for stage in ea:
        assert eb[stage]["n"] == ea[stage]["n"] == 16
        assert eb[stage]["accuracy"] == pytest.approx(ea[stage]["accuracy"], abs=1e-9)
    rl_two = metrics(two / "rl")
    assert sum(r["rows/trained"] for r in rl_two) == sum(r["rows/trained"] for r in metrics(one / "rl"))
    assert json.loads((two / "rl" / "complete.json").read_text())["steps"] == 3


def test_merge_rows_sums_counts_maxes_maxima_and_averages_the_rest():
    rows = [{"step": 3, "rows/trained": 4, "length/max": 9, "reward/mean": 0.5, "kl": None, "flag": True},
            {"step": 3, "rows/trained": 2, "length/max": 12, "reward/mean": 0.25, "kl": None, "flag": False}]
    assert merge_rows(rows) == {"step": 3, "rows/trained": 6, "length/max": 12, "reward/mean": 0.375, "kl": None,
                                "flag": True}


@pytest.mark.slow
def test_gae_is_refused_on_two_processes_since_it_whitens_over_the_whole_batch(tmp_path, tiny_overrides):
    """Each rank holds a share of the batch: whitening it per rank would give other advantages than one process
    (the estimator's registry entry says `batch_normalised`), so the run stops before training, naming why."""
    accelerate = shutil.which("accelerate") or pytest.fail("accelerate's launcher is not on PATH")
    cmd = [accelerate, "launch", "--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--num_processes", "2", "--num_machines", "1", "--main_process_port", "29541", "-m", "coldstart", "rl",
           RECIPE, "--out", str(tmp_path / "gae"), *tiny_overrides, "rl.init=model", "rl.advantage=gae"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode != 0
    assert "rl.advantage=gae normalises over the whole batch" in proc.stderr + proc.stdout
    assert not (tmp_path / "gae" / "rl" / "metrics.jsonl").exists()


@pytest.mark.slow
def test_a_reward_failing_on_one_rank_stops_both(tmp_path, tiny_overrides):
    """The stop for a reward that fails on every item is collective: the healthy rank does not hang."""
    accelerate = shutil.which("accelerate") or pytest.fail("accelerate's launcher is not on PATH")
    cmd = [accelerate, "launch", "--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--num_processes", "2", "--num_machines", "1", "--main_process_port", "29541", "-m", "coldstart", "rl",
           RECIPE, "--out", str(tmp_path), *tiny_overrides, "rl.init=model", "rl.filter=none",
           "rl.rewards=[{name: task}, {name: 'tests.fixtures.rewards:fails_on_rank0'}]"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode != 0
    assert "fails_on_rank0' failed on every one of the 8 completions" in " ".join(proc.stderr.split())
