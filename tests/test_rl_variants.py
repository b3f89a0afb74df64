"""RL variants that train, from one SFT cold start: every advantage estimator, group filter and loss
aggregation must move the weights, below the CLI.

An untrained model's groups are all flat (every reward equal), so every advantage is 0 and nothing trains:
a test that starts RL there passes even when an estimator or the update is broken. These tests start from a
short SFT on 1-digit addition instead, scored by the task's verifier plus the built-in `format` reward
(`<think>…</think><answer>…</answer>`), which the cold start gets right in some samples and not in others.
Each case then asserts what training means (TRL's habit): rows went into the loss, optimizer steps ran, and
the exported weights differ from the checkpoint RL started from.
"""

import json

import pytest
import torch
from safetensors.torch import load_file

from coldstart.cli import main
from tests.conftest import TINY

# 1-digit sums: the target trace fits rl.max_new_tokens=40, and 200 SFT steps (about a second) learn its format
SETUP = [*TINY, "task.options={digits: 1, ops: '+'}", "task.train_size=80", "task.val_size=2", "task.test_size=4"]
REWARDS = "rl.rewards=[{name: task}, {name: format, weight: 0.5}]"
KL_IN_REWARD = ["rl.kl_coef=0.05", "rl.kl_in_reward=true"]

ADVANTAGES = ["grpo", "dr_grpo", "rloo", "reinforce_pp", "gae"]
FILTERS = ["none", "dynamic", "dupo", "pad"]
LOSS_AGGS = ["token_mean", "seq_mean_token_mean", "constant"]
# A pairwise covering set: every advantage × filter once, the aggregation rotating so that every
# advantage × aggregation and every filter × aggregation pair occurs too (20 runs instead of 60).
CASES = [(a, f, LOSS_AGGS[(i + j) % 3]) for i, a in enumerate(ADVANTAGES) for j, f in enumerate(FILTERS)]


def rows(path):
    """The rows of a metrics.jsonl file, as dicts."""
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def cold_start(tmp_path_factory):
    """The SFT stage folder (`<out>/sft`) that every RL run of this module starts from; built once."""
    out = tmp_path_factory.mktemp("cold-start")
    assert main(["sft", "recipes/demo.yaml", "--out", str(out), *SETUP, "sft.traces=64", "sft.max_steps=200",
                 "sft.lr=1e-2"]) == 0
    return out / "sft"


def run_rl(out, init, *extra) -> list[dict]:
    """`coldstart rl` for 2 steps from `init` into `out`; returns its metrics rows."""
    assert main(["rl", "recipes/demo.yaml", "--out", str(out), *SETUP, f"rl.init={init}", "rl.steps=2", REWARDS,
                 *extra]) == 0, extra
    metrics = rows(out / "rl" / "metrics.jsonl")
    assert [r["step"] for r in metrics] == [1, 2]
    return metrics


def changed_tensors(before, after) -> list[str]:
    """Names of the tensors of two model.safetensors files that differ (both must hold the same names)."""
    a, b = load_file(str(before)), load_file(str(after))
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k], b[k])]


def assert_trained(metrics: list[dict], sft, out) -> None:
    """The policy produced informative groups, rows with a non-zero advantage went into the loss, optimizer
    steps ran on at least one step, and the exported weights differ from the starting checkpoint's."""
    assert any(r["groups/zero_std_frac"] < 1 for r in metrics), "every group flat: the cold start is too weak"
    trained = [r for r in metrics if r["rows/trained"] > 0 and r["optimizer_steps"] > 0]
    assert trained, [(r["rows/trained"], r["optimizer_steps"]) for r in metrics]
    assert all(r["adv/abs_mean"] > 0 for r in trained), [r["adv/abs_mean"] for r in trained]
    assert all(r["optimizer_steps_skipped"] == 0 for r in metrics)
    assert changed_tensors(sft / "model.safetensors", out / "rl" / "model.safetensors"), "no weight moved"


def test_the_cold_start_gives_informative_groups_where_the_base_model_does_not(tmp_path, cold_start):
    """The precondition of every case below, against the same reward: without SFT nothing can train."""
    base = run_rl(tmp_path / "base", "model", "rl.filter=none")
    assert all(r["groups/zero_std_frac"] == 1.0 and r["rows/trained"] == 0 for r in base)
    sft = run_rl(tmp_path / "sft", cold_start, "rl.filter=none")
    assert all(r["groups/zero_std_frac"] < 1.0 and r["rows/trained"] > 0 for r in sft)
    assert any(r["reward/format"] > 0 for r in sft)


@pytest.mark.parametrize(("advantage", "filter_", "loss_agg"), CASES, ids=["-".join(c) for c in CASES])
def test_variant_trains_from_the_cold_start(tmp_path, cold_start, advantage, filter_, loss_agg):
    """2 RL steps of one advantage × filter × loss aggregation move the weights."""
    extra = [f"rl.advantage={advantage}", f"rl.filter={filter_}", f"rl.loss_agg={loss_agg}"]
    if advantage in ("reinforce_pp", "gae"):  # the token-level estimators: −β·KL per token in their reward
        extra += KL_IN_REWARD
    out = tmp_path / "run"
    metrics = run_rl(out, cold_start, *extra)
    assert_trained(metrics, cold_start, out)
    if filter_ == "pad":
        assert all(r["pad/kept"] > 0 for r in metrics)
    if filter_ == "dupo":  # duplicated groups fill the batch back to rl.prompts_per_step
        assert any(r["groups/duplicated"] > 0 for r in metrics)
    if advantage == "gae":  # the value head starts at zero and is saved in the trainer state
        head = torch.load(out / "rl" / "trainer_state" / "states.pt", weights_only=True)["modules"]["value_head"]
        assert head["weight"].abs().sum() > 0 and "loss/value" in metrics[0]


def test_gae_policy_gradient_alone_moves_the_weights(tmp_path, cold_start):
    """With rl.vf_coef=0 the value loss sends no gradient (the head stays at zero), so the weights that move
    were moved by the GAE advantage in the policy loss, which the cases above cannot tell from the value loss."""
    out = tmp_path / "gae"
    metrics = run_rl(out, cold_start, "rl.advantage=gae", "rl.filter=none", "rl.vf_coef=0", *KL_IN_REWARD)
    assert_trained(metrics, cold_start, out)
    head = torch.load(out / "rl" / "trainer_state" / "states.pt", weights_only=True)["modules"]["value_head"]
    assert not head["weight"].any() and not head["bias"].any()


def test_minibatches_and_epochs_make_several_optimizer_steps(tmp_path, cold_start):
    """rl.epochs=2 over minibatches of 8 (micro-batches of 4) of the 16 rows: more than one step per batch."""
    out = tmp_path / "mb"
    metrics = run_rl(out, cold_start, "rl.advantage=rloo", "rl.filter=dynamic", "rl.epochs=2",
                     "rl.minibatch_size=8", "rl.micro_batch_size=4")
    assert_trained(metrics, cold_start, out)
    assert max(r["optimizer_steps"] for r in metrics) == 4  # 2 epochs × 16 rows / 8 rows per minibatch


def test_an_rl_setting_the_stage_refuses_fails_before_sft_runs(tmp_path, tiny_overrides):
    from coldstart.cli import main

    assert main(["run", "recipes/demo.yaml", "--out", str(tmp_path), *tiny_overrides, "rl.kl_in_reward=true",
                 "rl.kl_coef=0.1", "rl.advantage=grpo", "run.stages=[sft,rl]"]) == 2
    assert not (tmp_path / "sft").exists()
