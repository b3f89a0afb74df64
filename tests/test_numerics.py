"""A NaN or inf loss or gradient skips the optimizer step and is logged; K in a row stop the run with a
message naming the last checkpoint; a checkpoint never holds NaN."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from coldstart.cli import main
from coldstart.config import RLConfig
from coldstart.infra.runtime import NonFinite, assert_finite, build_optimizer
from coldstart.models import build_char_tokenizer, build_tiny_model
from coldstart.rl import UpdateSettings
from coldstart.rl.update import update
from coldstart.rollout import SamplingParams, TorchSampler


def test_nonfinite_counter_skips_then_stops_after_k_in_a_row():
    state: dict = {}
    guard = NonFinite("sft", 2, state)
    assert guard.check(False, 1, "ckpt-a") is True  # skipped
    assert guard.check(True, 2, "ckpt-a") is False  # a good step resets the run
    assert guard.check(False, 3, "ckpt-a") is True
    with pytest.raises(FloatingPointError, match=r"2 steps in a row.*step 4.*ckpt-a"):
        guard.check(False, 4, "ckpt-a")
    assert state["nonfinite_total"] == 3


def test_a_model_holding_nan_is_never_saved():
    model = build_tiny_model(300, hidden_size=16, layers=1, heads=2, max_len=32)
    assert_finite(model, "here")
    with torch.no_grad():
        next(model.parameters())[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="holds NaN"):
        assert_finite(model, "here")


def test_rl_update_skips_the_optimizer_step_on_a_nan_loss():
    tok = build_char_tokenizer()
    model = build_tiny_model(len(tok), hidden_size=16, layers=1, heads=2, max_len=64)
    ro = TorchSampler(tok).sample(model, [tok("1+2=").input_ids], SamplingParams(n=4, max_new_tokens=6, seed=0))
    opt = build_optimizer(model.parameters(), 1e-2, 0.0)
    before = [p.detach().clone() for p in model.parameters()]
    cfg = UpdateSettings.from_config(RLConfig(max_new_tokens=6))
    good = ro.logprobs.clone()
    ro.logprobs[0, 0] = float("nan")  # a NaN old log-prob: the PPO ratio and the loss are NaN
    out = update(model, None, None, opt, ro, torch.ones_like(good), None, None, cfg)
    assert out["optimizer_steps_skipped"] == 1 and out["optimizer_steps"] == 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.grad is None for p in model.parameters())  # nothing left over for the next step
    ro.logprobs = good
    out = update(model, None, None, opt, ro, torch.ones_like(good), None, None, cfg)
    assert out["optimizer_steps"] == 1 and out["optimizer_steps_skipped"] == 0
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_sft_with_an_exploding_learning_rate_skips_logs_and_stops(tmp_path, tiny_overrides, capsys):
    out = tmp_path / "run"
    # lr 1e30: step 1 is finite but throws the weights to ±1e30; every later loss is NaN
    code = main(["sft", "recipes/demo.yaml", "--out", str(out), *tiny_overrides, "sft.lr=1e30", "sft.warmup=0",
                 "sft.save_every=1", "run.max_nonfinite_steps=3"])
    assert code == 3
    err = capsys.readouterr().err.replace("\n", "")  # rich wraps long lines
    assert "3 steps in a row had a NaN or inf loss or gradient (last at step 4)" in err
    assert "step 2: non-finite loss or gradient; step skipped" in err and "step-000003" in err
    rows = [json.loads(line) for line in (out / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert [r["nonfinite_steps"] for r in rows] == [0, 1, 2]
    assert rows[1]["loss"] is None and rows[1]["grad_norm"] is None
    ckpts = sorted((out / "sft" / "checkpoints").glob("step-*"))
    assert [c.name for c in ckpts] == ["step-000002", "step-000003"]  # the last two saves are kept
    for c in ckpts:  # a skipped step leaves the weights of step 1: huge but finite
        assert all(torch.isfinite(w).all() for w in load_file(str(c / "model.safetensors")).values())
    assert not (out / "sft" / "complete.json").exists()
