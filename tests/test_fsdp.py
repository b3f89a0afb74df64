"""FSDP2 through accelerate's plugin (`recipes/accelerate/fsdp.yaml`) on two CPU processes (gloo): SFT and RL
with sharded weights give the single-process weights and optimizer state, resume included.

accelerate turns FSDP on only for accelerator devices; `coldstart.infra.distributed` switches its state to FSDP for
CPU processes, so this runs the same accelerate / `fully_shard` code as GPUs. The RL steps train on every step
(a length reward, so groups are never flat) against an unsharded KL reference, with micro-batches; the
sampler's rows end at different lengths on the two ranks, which hangs unless every rank decodes until all
are done."""

from __future__ import annotations

import json

import pytest
import torch

from coldstart.config import Recipe
from coldstart.infra.checkpoint import latest_checkpoint, read_optimizer_state
from coldstart.infra.distributed import check_fsdp_plugin, fsdp_refusals
from coldstart.rollout import SamplingParams, TorchSampler
from tests.test_distributed import launch as launch_engine
from tests.test_distributed import metrics, weights

RECIPE = "recipes/demo.yaml"
CONFIG = "recipes/accelerate/fsdp.yaml"
STEPS = ["sft.max_steps=6", "sft.batch_size=7", "sft.eval_every=3", "rl.steps=3", "rl.prompts_per_step=4",
         "rl.group_size=4", "rl.micro_batch_size=3", "rl.kl_coef=0.01", "rl.eval_every=2", "rl.save_every=2",
         "rl.rewards=[{name: 'tests.fixtures.rewards:length_bonus'}]", "run.stages=[sft, rl]"]


def launch(args: list[str], processes: int) -> str:
    """`accelerate launch --config_file recipes/accelerate/fsdp.yaml --num_processes N -m coldstart ARGS`, or
    the CLI in this interpreter for one process; returns stderr (rank 0's console)."""
    return launch_engine(args, processes, config=CONFIG, port=29547, timeout=300)


@pytest.mark.slow
def test_fsdp_two_processes_match_one_in_sft_and_rl_and_resume(tmp_path, tiny_overrides):
    one, two = tmp_path / "one", tmp_path / "two"
    launch(["run", RECIPE, "--out", str(one), *tiny_overrides, *STEPS], 1)
    # two sharded ranks: 2 RL steps, then a resume (weights and optimizer state from rank 0's checkpoint)
    log = launch(["run", RECIPE, "--out", str(two), *tiny_overrides, *STEPS, "rl.steps=2"], 2)
    assert "sft: FSDP2 shards" in log and "rl: FSDP2 shards" in log, log[-2000:]
    log = launch(["rl", RECIPE, "--out", str(two), "--resume", *tiny_overrides, *STEPS], 2)
    assert "resumed from" in log and "rl: FSDP2 shards" in log, log[-2000:]

    for stage in ("sft", "rl"):
        a, b = (weights(d / stage) for d in (one, two))
        assert a.keys() == b.keys()  # a normal HF folder: the tied lm_head is not saved twice
        for k in a:
            torch.testing.assert_close(b[k], a[k], atol=1e-4, rtol=0, msg=f"{stage}: {k}")
        # the optimizer state of the last step's checkpoint (the stage folder may hold the `best` one, saved without)
        sa, sb = (read_optimizer_state(latest_checkpoint(d / stage)) for d in (one, two))
        assert sa["state"].keys() == sb["state"].keys() and len(sa["param_groups"]) == len(sb["param_groups"])
        for i, st in sa["state"].items():
            assert float(sb["state"][i]["step"]) == float(st["step"])
            for key in ("exp_avg", "exp_avg_sq"):
                torch.testing.assert_close(sb["state"][i][key], st[key], atol=1e-6, rtol=1e-3, msg=f"{stage} {i}")
        ma, mb = metrics(one / stage), metrics(two / stage)
        assert [r["step"] for r in ma] == [r["step"] for r in mb]
        key = "loss" if stage == "sft" else "reward/mean"
        for ra, rb in zip(ma, mb):
            assert rb[key] == pytest.approx(ra[key], abs=1e-4), (stage, ra["step"])
            for k in ("val/loss", "val/accuracy"):
                assert (rb.get(k) is None) == (ra.get(k) is None), (stage, k)
                if ra.get(k) is not None:
                    assert rb[k] == pytest.approx(ra[k], abs=1e-4), (stage, k)
    rl_one, rl_two = metrics(one / "rl"), metrics(two / "rl")
    assert all(r["rows/trained"] == 16 for r in rl_one + rl_two)  # every step trained the whole batch
    assert all("dist/param_checksum" in r for r in rl_two)
    assert json.loads((two / "rl" / "complete.json").read_text())["steps"] == 3


def test_sharded_decode_loop_gives_the_unsharded_outputs(monkeypatch):
    """The sampler's FSDP path: while another rank still decodes, a rank whose rows have all ended keeps
    running forward passes (one per step, as many as that rank) and its outputs do not change."""
    from coldstart.infra.distributed import current
    from coldstart.models import build_char_tokenizer, build_tiny_model
    from coldstart.rollout.base import left_pad
    from coldstart.rollout.torch_sampler import uniform_table

    tok = build_char_tokenizer()
    model = build_tiny_model(len(tok), hidden_size=32, layers=1, heads=2, max_len=96, seed=3).eval()
    # a fifth of the vocabulary ends a row, so rows end early and at different steps
    params = SamplingParams(n=3, max_new_tokens=24, temperature=1.0, eos_ids=list(range(4, len(tok), 5)))
    ids, mask = left_pad([tok("12+3=").input_ids, tok("7+45=").input_ids], tok.pad_token_id)
    noise = uniform_table(2, 3, 24, [5, 6], None, "cpu")
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    sampler = TorchSampler(tok)
    with torch.no_grad():
        plain = sampler._generate(model, ids, mask, params, noise)
        n_plain = len(calls)
        monkeypatch.setattr(current(), "all_done", lambda done, device=None: False)  # the other rank never ends
        sharded = sampler._generate(model, ids, mask, params, noise, sharded=True)
    lengths = plain[2].tolist()
    assert max(lengths) < 24 and len(set(lengths)) > 2 and n_plain < 24, f"rows must end early, unevenly: {lengths}"
    assert len(calls) - n_plain == 24  # prefill + one pass per step until the budget
    for a, b in zip(plain, sharded):
        assert torch.equal(a, b)


def test_fsdp_refuses_what_it_cannot_shard():
    recipe = Recipe()
    assert fsdp_refusals(recipe, "sft") == [] and fsdp_refusals(recipe, "rl") == []
    assert "rsft" in fsdp_refusals(recipe, "rsft")[0] and fsdp_refusals(recipe, "")
    bad = recipe.model_copy(deep=True)
    bad.model.lora, bad.rl.advantage, bad.rl.sampler, bad.rl.env = {"r": 4}, "gae", "hf", "guess"
    assert len(fsdp_refusals(bad, "rl")) == 4 and len(fsdp_refusals(bad, "sft")) == 1

    class Plugin:
        fsdp_version, cpu_ram_efficient_loading = 2, False

    check_fsdp_plugin(Plugin())
    Plugin.fsdp_version = 1
    with pytest.raises(ValueError, match="fsdp_version: 2"):
        check_fsdp_plugin(Plugin())
    Plugin.fsdp_version, Plugin.cpu_ram_efficient_loading = 2, True
    with pytest.raises(ValueError, match="cpu_ram_efficient_loading"):
        check_fsdp_plugin(Plugin())
