"""Prefix-RFT (coldstart.algorithms.prefix, docs/algorithms.md §11): schedule, prefix cut, hybrid rows, prefix-aware
advantage, entropy mask, per-token clip range, and the hook in the RL loop on a tiny model."""

from __future__ import annotations

import json
import math

import pytest
import torch

from coldstart.algorithms import (
    clip_range,
    entropy_top_mask,
    interleave_groups,
    policy_loss,
    prefix_advantage,
    prefix_fraction,
    prefix_lengths,
    prefix_rft_advantage,
    splice_prefix,
)
from coldstart.cli import main
from coldstart.models import build_char_tokenizer, build_tiny_model
from coldstart.rl.logprobs import sequence_logprobs
from coldstart.rl.prefix_rft import sample_with_prefix
from coldstart.rollout import SamplingParams, TorchSampler
from coldstart.rollout_utils import cat_rollouts, select_rows
from coldstart.types import Rollouts

T_, F_ = True, False


def _close(t, expected):
    return torch.allclose(t.float(), torch.tensor(expected), atol=1e-6)


def _decode(ids, n):
    return [str(ids[i, : int(n[i])].tolist()) for i in range(ids.shape[0])]


def _rollouts(prompts, comps, logps, trunc, width_p, width_t, pad=0, texts=None):
    """A hand-made Rollouts: prompts left-padded to width_p, completions right-padded to width_t."""
    n = len(prompts)
    pi, pm = torch.full((n, width_p), pad), torch.zeros((n, width_p), dtype=torch.bool)
    ci, cm, lp = torch.full((n, width_t), pad), torch.zeros((n, width_t), dtype=torch.bool), torch.zeros(n, width_t)
    for i, (p, c, logp) in enumerate(zip(prompts, comps, logps, strict=True)):
        pi[i, width_p - len(p):], pm[i, width_p - len(p):] = torch.tensor(p), True
        ci[i, : len(c)], cm[i, : len(c)], lp[i, : len(c)] = torch.tensor(c), True, torch.tensor(logp)
    return Rollouts(pi, pm, ci, cm, lp, torch.tensor(trunc), texts or [str(c) for c in comps])


def test_prefix_fraction_schedules():
    assert prefix_fraction(0, 5) == pytest.approx(0.95)
    assert prefix_fraction(2, 5) == pytest.approx(0.5)  # cos(π/2) = 0: the midpoint
    assert prefix_fraction(1, 5) == pytest.approx(0.05 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))  # 0.8682
    assert prefix_fraction(4, 5) == pytest.approx(0.05)
    assert prefix_fraction(9, 5) == pytest.approx(0.05)  # past the end: stays at the end
    assert prefix_fraction(1, 5, 0.9, 0.1, "linear") == pytest.approx(0.7)
    assert prefix_fraction(3, 5, 0.6, 0.1, "constant") == 0.6
    assert prefix_fraction(0, 1) == pytest.approx(0.95)  # a one-step run uses the start
    with pytest.raises(ValueError, match="schedule"):
        prefix_fraction(0, 5, schedule="step")


def test_prefix_lengths_floor_and_budget():
    assert prefix_lengths([10, 7, 100, 0], 0.5, 40) == [5, 3, 39, 0]
    assert prefix_lengths([10], 0.3, 40) == [3]  # 0.3·10 is 3.0000000000000004 in floats: still 3
    assert prefix_lengths([20], 0.95, 40) == [19]
    assert prefix_lengths([20, 1], 1.0, 40) == [19, 0]  # never the demonstration's last token (its eos)
    with pytest.raises(ValueError, match="max_new_tokens"):
        prefix_lengths([10], 0.5, 1)


def test_splice_prefix_moves_the_prefix_into_the_completion():
    # row 0: prompt [5, 6] + prefix [7, 8], continuation [9, 2]; row 1: prompt [5] + prefix [7], continuation 9 9 9
    cont = _rollouts([[5, 6, 7, 8], [5, 7]], [[9, 2], [9, 9, 9]], [[-0.5, -0.25], [-1.0, -1.0, -1.0]],
                     [F_, T_], width_p=4, width_t=3)
    hyb = splice_prefix(cont, torch.tensor([2, 1]), budget=4, pad_id=0, decode=_decode)
    assert hyb.prompt_ids.tolist() == [[5, 6], [0, 5]]
    assert hyb.prompt_mask.tolist() == [[T_, T_], [F_, T_]]
    assert hyb.completion_ids.tolist() == [[7, 8, 9, 2], [7, 9, 9, 9]]
    assert hyb.completion_mask.tolist() == [[T_] * 4, [T_] * 4]
    assert hyb.prefix_mask.tolist() == [[T_, T_, F_, F_], [T_, F_, F_, F_]]
    assert hyb.logprobs.tolist() == [[0.0, 0.0, -0.5, -0.25], [0.0, -1.0, -1.0, -1.0]]
    assert hyb.truncated.tolist() == [F_, T_]
    assert hyb.texts == ["[7, 8, 9, 2]", "[7, 9, 9, 9]"]
    # a budget of 3 cuts row 0 (2 + 2 > 3): it becomes truncated
    cut = splice_prefix(cont, torch.tensor([2, 1]), budget=3, pad_id=0, decode=_decode)
    assert cut.completion_ids.tolist() == [[7, 8, 9], [7, 9, 9]]
    assert cut.truncated.tolist() == [T_, T_]
    with pytest.raises(ValueError, match="prefix length"):
        splice_prefix(cont, torch.tensor([3, 3]), budget=4, pad_id=0, decode=_decode)


def test_interleave_groups_puts_hybrids_last_and_rows_carry_prefix_mask():
    on = _rollouts([[1], [1], [2, 2], [2, 2]], [[3], [4, 4], [5], [6]], [[-1.0], [-1.0, -1.0], [-1.0], [-1.0]],
                   [F_] * 4, width_p=2, width_t=2, texts=["a0", "a1", "b0", "b1"])
    hyb = _rollouts([[1], [2, 2]], [[7, 7, 3], [8]], [[0.0, -1.0, -1.0], [0.0]], [F_, F_], width_p=2, width_t=3,
                    texts=["ah", "bh"])
    hyb.prefix_mask = torch.tensor([[T_, F_, F_], [T_, F_, F_]])
    ro = interleave_groups(on, hyb, n_on=2, n_hybrid=1, pad_id=0)
    assert ro.texts == ["a0", "a1", "ah", "b0", "b1", "bh"]
    assert ro.prefix_mask.tolist() == [[F_] * 3, [F_] * 3, [T_, F_, F_], [F_] * 3, [F_] * 3, [T_, F_, F_]]
    assert ro.completion_ids[2].tolist() == [7, 7, 3] and ro.completion_ids[1].tolist() == [4, 4, 0]
    # select_rows / cat_rollouts keep the mask aligned with the completion columns
    sub = select_rows(ro, torch.tensor([0, 5]))
    assert sub.prefix_mask.tolist() == [[F_], [T_]] and sub.completion_ids.tolist() == [[3], [8]]
    assert cat_rollouts([sub, on], 0).prefix_mask.tolist() == [[F_, F_], [T_, F_]] + [[F_, F_]] * 4
    assert cat_rollouts([on, on], 0).prefix_mask is None
    with pytest.raises(ValueError, match="hybrid rows"):
        interleave_groups(on, select_rows(hyb, torch.tensor([0])), n_on=2, n_hybrid=1, pad_id=0)


def test_prefix_advantage_against_the_on_policy_mean():
    scores = torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0])
    hybrid = torch.tensor([F_, F_, F_, T_, F_, F_, F_, T_])
    # group 0: 1 − mean(0, 0, 0) = 1; group 1: 1 − mean(1, 0, 1) = 1/3; on-policy rows 0
    dr = prefix_advantage(scores, hybrid, 4)
    assert dr.tolist() == pytest.approx([0, 0, 0, 1.0, 0, 0, 0, 1 / 3])
    # grpo scale: both groups have unbiased std 0.5 → 2 and 2/3
    assert prefix_advantage(scores, hybrid, 4, std_normalize=True).tolist() == pytest.approx(
        [0, 0, 0, 2.0, 0, 0, 0, 2 / 3], rel=1e-5)
    # two hybrids sharing a prefix: (1 − mean(0, 1)) / 2 = 0.25 each
    two = prefix_advantage(torch.tensor([0.0, 1.0, 1.0, 1.0]), torch.tensor([F_, F_, T_, T_]), 4)
    assert two.tolist() == pytest.approx([0, 0, 0.25, 0.25])
    # a flat group has no signal, with or without std
    flat = prefix_advantage(torch.ones(4), torch.tensor([F_, F_, F_, T_]), 4, std_normalize=True)
    assert flat.tolist() == [0.0] * 4


def test_entropy_top_mask_keeps_the_highest_entropy_prefix_tokens():
    entropy = torch.tensor([[0.1, 0.9, 0.5, 5.0], [0.7, 0.2, 0.3, 0.8]])
    prefix = torch.tensor([[T_, T_, T_, F_], [T_, T_, F_, F_]])  # prefix entropies 0.1 0.9 0.5 | 0.7 0.2
    # top 0.4 of 5 prefix tokens = 2 tokens: 0.9 and 0.7 (the 5.0 is a continuation token and does not count)
    assert entropy_top_mask(entropy, prefix, 0.4).tolist() == [[F_, T_, F_, F_], [T_, F_, F_, F_]]
    assert entropy_top_mask(entropy, prefix, 0.5).tolist() == [[F_, T_, T_, F_], [T_, F_, F_, F_]]  # ⌈2.5⌉ = 3
    assert entropy_top_mask(entropy, prefix, 1.0).tolist() == prefix.tolist()
    assert not entropy_top_mask(entropy, prefix, 0.0).any()
    assert int(entropy_top_mask(torch.arange(10.0)[None], torch.ones(1, 10, dtype=torch.bool), 0.3).sum()) == 3
    with pytest.raises(ValueError, match="entropy_top"):
        entropy_top_mask(entropy, prefix, 1.5)


def test_prefix_rft_advantage_replaces_only_prefix_tokens():
    scores = torch.tensor([0.0, 1.0])  # one group of 2: row 0 on-policy, row 1 hybrid
    adv = torch.tensor([[-0.7, -0.7, 0.0], [0.7, 0.7, 0.7]])  # the run's estimator (grpo) on every token
    prefix = torch.tensor([[F_, F_, F_], [T_, T_, F_]])
    entropy = torch.tensor([[9.0, 9.0, 9.0], [0.1, 0.8, 9.0]])
    out, metrics = prefix_rft_advantage(adv, scores, prefix, entropy, 2, entropy_top=0.5)
    # prefix advantage 1 − 0 = 1 on the higher-entropy prefix token only; continuation keeps 0.7
    assert _close(out, [[-0.7, -0.7, 0.0], [0.0, 1.0, 0.7]])
    assert metrics == pytest.approx({"prefix/hybrid_reward": 1.0, "prefix/onpolicy_reward": 0.0,
                                     "prefix/tokens_mean": 2.0, "prefix/kept_frac": 0.5, "prefix/adv_mean": 1.0})


def test_clip_range_and_per_token_clip_in_policy_loss():
    assert clip_range(None, 0.2, 0.28, 0.1, 0.6) == (0.2, 0.28)
    assert clip_range(torch.zeros(2, 2, dtype=torch.bool), 0.2, 0.28, 0.1, 0.6) == (0.2, 0.28)
    prefix = torch.tensor([[F_, T_]])
    low, high = clip_range(prefix, 0.2, 0.28, 0.1, 0.6)
    assert _close(low, [[0.2, 0.1]]) and _close(high, [[0.28, 0.6]])
    # ratio 1.5 on both tokens with A = 1: the on-policy token is clipped at 1.28, the prefix token at 1.6 is not
    old = torch.zeros(1, 2)
    logp = torch.full((1, 2), math.log(1.5), requires_grad=True)
    adv, mask = torch.ones(1, 2), torch.ones(1, 2, dtype=torch.bool)
    loss, metrics = policy_loss(logp, old, adv, mask, eps_low=low, eps_high=high)
    assert float(loss.detach()) == pytest.approx(-(1.28 + 1.5) / 2)
    assert metrics["clip/high_frac"] == pytest.approx(0.5)
    loss.backward()
    assert _close(logp.grad, [[0.0, -0.5 * 1.5]])  # only the unclipped token has gradient
    # a tensor clip range filled with the float values gives exactly the float result
    a, b = policy_loss(logp, old, adv, mask, eps_low=0.2, eps_high=0.28)[0], policy_loss(
        logp, old, adv, mask, eps_low=torch.full((1, 2), 0.2), eps_high=torch.full((1, 2), 0.28))[0]
    assert float(a.detach()) == float(b.detach())
    with pytest.raises(ValueError, match=">= 0"):
        policy_loss(logp, old, adv, mask, eps_low=torch.tensor([[0.2, -0.1]]))
    with pytest.raises(ValueError, match=r"\(N, T\)"):
        policy_loss(logp, old, adv, mask, eps_low=torch.full((2, 2), 0.2))


def test_sample_with_prefix_builds_hybrid_groups_with_policy_logprobs():
    from coldstart.config import RLConfig

    tok = build_char_tokenizer()
    torch.manual_seed(0)
    model = build_tiny_model(len(tok), hidden_size=32, layers=1, heads=2, max_len=96)
    cfg = RLConfig(group_size=3, steps=5, max_new_tokens=12, prefix_rft={"start": 0.5, "end": 0.5})
    demos = {"1+1": "<think>1+1=2</think>", "22+3": "<answer>25</answer>"}
    prompts = tok(["1+1", "22+3"], add_special_tokens=False).input_ids
    demo_ids = tok([demos[e] for e in ("1+1", "22+3")], add_special_tokens=False).input_ids
    params = SamplingParams(n=3, max_new_tokens=12, eos_ids=[tok.eos_token_id])
    ro = sample_with_prefix(model, TorchSampler(tok), prompts, demo_ids, params, torch.Generator().manual_seed(1),
                            0, cfg.steps, cfg.prefix_rft, cfg.group_size)
    assert ro.completion_ids.shape[0] == 6 and ro.prefix_mask.any(1).tolist() == [F_, F_, T_, F_, F_, T_]
    for row, demo in ((2, "<think>1+1=2</think>"), (5, "<answer>25</answer>")):
        ids = tok(demo, add_special_tokens=False).input_ids
        L = len(ids) // 2  # fraction 0.5 of the demonstration's tokens
        assert L > 0 and int(ro.prefix_mask[row].sum()) == L
        assert ro.completion_ids[row, :L].tolist() == ids[:L]
        assert ro.texts[row].startswith(tok.decode(ids[:L])) and int(ro.lengths[row]) <= 12
    # the prefix tokens' old log-probs are the policy's own; the continuation's are the sampler's
    with torch.no_grad():
        logp = sequence_logprobs(model, ro, 1.0)[0]
    m = ro.completion_mask
    assert torch.allclose(ro.logprobs[ro.prefix_mask], logp[ro.prefix_mask], atol=1e-5)
    assert torch.allclose(ro.logprobs[m], logp[m], atol=1e-4)  # T=1, no top-p: the sampler agrees too
    with pytest.raises(ValueError, match="per_group"):
        sample_with_prefix(model, TorchSampler(tok), prompts[:1], demo_ids[:1], params, None, 0, cfg.steps,
                           cfg.prefix_rft.model_copy(update={"per_group": 3}), cfg.group_size)


def test_prefix_rft_runs_in_the_demo_recipe(tmp_path, tiny_overrides):
    out = tmp_path / "run"
    assert main(["sft", "recipes/demo.yaml", "--out", str(out), *tiny_overrides]) == 0
    # the whole demonstration at step 1 (the hybrids are correct where the barely trained policy is not),
    # half at step 2, none at step 3
    assert main(["rl", "recipes/demo.yaml", "--out", str(out), *tiny_overrides, "rl.filter=none",
                 "rl.prefix_rft={per_group: 1, start: 1.0, end: 0.0, schedule: linear, entropy_top: 0.2}"]) == 0
    rows = [json.loads(x) for x in (out / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[0]["prefix/hybrid_reward"] > rows[0]["prefix/onpolicy_reward"]
    assert rows[0]["rows/trained"] > 0 and rows[0]["prefix/adv_mean"] > 0  # signal where pure RL has none
    assert 0 < rows[0]["prefix/kept_frac"] <= 0.25  # ⌈20%⌉ of the prefix tokens
    tokens = [r["prefix/tokens_mean"] for r in rows]
    assert tokens[0] > tokens[1] > tokens[2] == 0
    # two hybrids per group, dynamic refills (rounds concatenated), two epochs over minibatches: the prefix
    # tokens' ratios move away from 1 and meet their own clip range
    again = tmp_path / "again"
    assert main(["rl", "recipes/demo.yaml", "--out", str(again), *tiny_overrides, f"rl.init={out / 'sft'}",
                 "rl.filter=dynamic", "rl.advantage=dr_grpo", "rl.epochs=2", "rl.minibatch_size=8", "rl.steps=2",
                 "rl.prefix_rft={per_group: 2, start: 1.0, end: 1.0, eps_low: 0.1, eps_high: 0.1}"]) == 0
    rows = [json.loads(x) for x in (again / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["optimizer_steps"] >= 2 and r["prefix/hybrid_reward"] > 0 for r in rows)
