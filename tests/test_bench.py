"""Smoke checks of the benchmark scripts' counting and table code (bench/); the benchmarks themselves are not
run in CI. Hand-computed FLOP counts, and the GPU script's CPU path on its tiny config."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load(path: Path):
    """Import a bench script as a module without running its main()."""
    sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("script", sorted(p.name for p in [*BENCH.glob("*.py"), *BENCH.glob("gpu/*.py")]))
def test_bench_script_imports(script):
    """Every benchmark still imports after the library moves a module (bench/ is not run in CI)."""
    path = next(p for p in [*BENCH.glob("*.py"), *BENCH.glob("gpu/*.py")] if p.name == script)
    module = load(path)
    shared = path.stem == "rlbench"  # the parts the two TRL benchmarks share
    assert shared or callable(getattr(module, "main", None)), f"{script} has no main()"


def test_roofline_flop_counts():
    roof = load(BENCH / "roofline.py")
    lin = torch.nn.Sequential(torch.nn.Linear(4, 3, bias=False), torch.nn.Linear(3, 2))
    assert roof.linear_weights(lin) == 4 * 3 + 3 * 2
    assert roof.attention_flops(layers=2, d=8, context=5) == 4 * 2 * 8 * 5


def test_grpo_table_ratios():
    grpo = load(BENCH / "grpo_vs_trl.py")
    row = {"time/step_s": 2.0, "time/generate_s": 1.0, "tokens/generated": 100, "tokens/train": 300}
    d = grpo.derived(row)
    assert d == {"s/step": 2.0, "gen s": 1.0, "gen tok/s": 100.0, "train tok/s": 300.0, "end-to-end tok/s": 50.0}
    fast = grpo.derived({**row, "time/step_s": 1.5, "time/generate_s": 0.5})
    text = grpo.table({"cold": [fast], "trl": [d]})
    assert "1.33x" in text  # TRL's 2.0 s per step over coldstart's 1.5 s


def test_dense_reward_varies_within_a_group():
    rlbench = load(BENCH / "rlbench.py")
    scores = rlbench.dense_reward(["p"] * 3, ["<answer>12</answer>", "ab", [{"role": "assistant", "content": "1"}]],
                                  answer=["12", "12", "12"])
    assert scores[0] > 1.0 and scores[1] == 0.0 and scores[2] == pytest.approx(0.5)


def test_gpu_script_cpu_path(capsys):
    mfu = load(BENCH / "gpu" / "mfu.py")
    model, attn = mfu.build_model(mfu.TINY, torch.device("cpu"), torch.float32, 64)
    cfg = model.config
    w = mfu.linear_weights(model)
    pair = mfu.make_batch(cfg.vocab_size, 1, 2, varied=False)
    assert mfu.batch_flops(model, pair) == 3 * (2 * w * 2 + 4 * cfg.num_hidden_layers * cfg.hidden_size * 3)
    assert attn == "sdpa"
    varied = mfu.make_batch(cfg.vocab_size, 4, 16, varied=True)
    assert all(2 <= len(e.ids) <= 16 and e.n_prompt >= 1 for e in varied)
    for variant in ("hf", "auto", "pad", "pack"):
        batch = mfu.make_batch(cfg.vocab_size, 2, 8, varied=False) if variant == "hf" else varied
        assert len(mfu.time_training(model, torch.device("cpu"), batch, 0, 1, variant)) == 1
    rates = mfu.time_sampling(model.eval(), torch.device("cpu"), 2, 4, 3, 1)
    assert all(len(v) == 1 and v[0] > 0 for v in rates.values())
