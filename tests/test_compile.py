"""run.compile: torch.compile of the decoder blocks for the training passes, samplers eager."""

import json
import subprocess
import sys

import torch
from safetensors.torch import load_file

from coldstart.models import build_char_tokenizer, build_tiny_model, compile_blocks


def test_compiled_run_trains_like_eager(tmp_path, tiny_overrides):
    # In subprocesses: inductor leaves variables in os.environ (a pointer into this process among them) that
    # processes launched later by other tests would inherit.
    stages = ["run.stages=[sft, rl]", "sft.max_steps=4", "rl.steps=2",
              "rl.rewards=[{name: 'tests.fixtures.rewards:length_bonus'}]"]
    for name, extra in (("eager", []), ("compiled", ["run.compile=true"])):
        proc = subprocess.run([sys.executable, "-m", "coldstart.cli", "run", "recipes/demo.yaml", "--out",
                               str(tmp_path / name), *tiny_overrides, *stages, *extra],
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert "torch.compile on 1 decoder blocks" in proc.stderr
    eager, compiled = (load_file(tmp_path / n / "sft" / "model.safetensors") for n in ("eager", "compiled"))
    assert eager.keys() == compiled.keys()  # the checkpoint is a plain HF folder: no compile wrapper in the keys
    assert max(float((eager[k] - compiled[k]).abs().max()) for k in eager) < 1e-4
    sft = compiled
    rl = load_file(tmp_path / "compiled" / "rl" / "model.safetensors")
    assert any(not torch.equal(sft[k], rl[k]) for k in sft)
    rows = [json.loads(x) for x in (tmp_path / "compiled" / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]


def test_compile_blocks_finds_the_decoder_blocks():
    vocab = len(build_char_tokenizer())
    model = build_tiny_model(vocab, hidden_size=32, layers=2, heads=2)
    assert compile_blocks(model) == 2 and model.coldstart_compiled
    other = build_tiny_model(vocab, hidden_size=32, layers=2, heads=2)
    other.config.num_hidden_layers = 5  # no list of 5 identical blocks: nothing is compiled or marked
    assert compile_blocks(other) == 0 and not getattr(other, "coldstart_compiled", False)
