"""Advantage estimators against values computed by hand (coldstart/algorithms/advantages.py)."""

import math

import pytest
import torch

from coldstart.algorithms.advantages import (
    ADVANTAGES,
    gae,
    masked_whiten,
    outcome_token_rewards,
    returns_to_go,
)

# Two groups of G=3: [1, 0, 0] and [1, 1, 1]; lengths 3, 2, 1 | 3, 1, 0 (the last row is empty).
SCORES = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
MASK = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)


def _rows(per_row: list[float]) -> torch.Tensor:
    """Broadcast one value per row onto MASK."""
    return torch.tensor(per_row)[:, None] * MASK.float()


def test_grpo_uses_unbiased_std_per_group():
    adv, m = ADVANTAGES["grpo"](SCORES, MASK, 3)
    # group 1: mean 1/3, unbiased var ((2/3)² + 2·(1/3)²)/2 = 1/3, std 0.57735
    std = math.sqrt(1 / 3)
    expected = _rows([(2 / 3) / std, (-1 / 3) / std, (-1 / 3) / std, 0.0, 0.0, 0.0])
    torch.testing.assert_close(adv, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(adv[0, 0], torch.tensor(1.1547), atol=1e-4, rtol=0)
    assert m["groups/zero_std_frac"] == 0.5
    assert m["rows/empty"] == 1.0
    assert m["adv/max"] == pytest.approx(1.1547, abs=1e-4)


def test_grpo_two_of_two():
    # G=2, scores [1, 0]: mean 0.5, unbiased std √0.5 → ±0.7071
    adv, _ = ADVANTAGES["grpo"](torch.tensor([1.0, 0.0]), torch.ones(2, 2, dtype=torch.bool), 2)
    torch.testing.assert_close(
        adv, torch.tensor([[0.70711, 0.70711], [-0.70711, -0.70711]]), atol=1e-4, rtol=0
    )


def test_dr_grpo_subtracts_group_mean_only():
    adv, m = ADVANTAGES["dr_grpo"](SCORES, MASK, 3)
    torch.testing.assert_close(adv, _rows([2 / 3, -1 / 3, -1 / 3, 0.0, 0.0, 0.0]))
    # masked tokens: 3·(2/3) + 2·(−1/3) + 1·(−1/3) + 4·0 over 10 tokens
    assert m["adv/mean"] == pytest.approx((2 - 1) / 10)
    assert m["adv/abs_mean"] == pytest.approx((2 + 2 / 3 + 1 / 3) / 10)


def test_rloo_leave_one_out_baseline():
    adv, _ = ADVANTAGES["rloo"](SCORES, MASK, 3)
    # 1 − mean(0, 0) = 1 ; 0 − mean(1, 0) = −0.5 ; all-equal group → 0
    torch.testing.assert_close(adv, _rows([1.0, -0.5, -0.5, 0.0, 0.0, 0.0]))
    adv2, _ = ADVANTAGES["rloo"](torch.tensor([3.0, 1.0]), torch.ones(2, 1, dtype=torch.bool), 2)
    torch.testing.assert_close(adv2, torch.tensor([[2.0], [-2.0]]))


def test_outcome_token_rewards_last_valid_token_and_holes():
    mask = torch.tensor([[1, 1, 0, 1, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    kl = torch.full((3, 5), -0.1)
    r = outcome_token_rewards(torch.tensor([2.0, 3.0, 4.0]), mask, kl)
    expected = torch.tensor(
        [[-0.1, -0.1, 0.0, 1.9, 0.0], [2.9, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]]
    )
    torch.testing.assert_close(r, expected)


REINFORCE_MASK = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
REINFORCE_KL = torch.tensor([[-0.1, 0.0, -0.1], [0.0, -0.2, 5.0]])  # 5.0 sits on padding: ignored


def test_returns_to_go_discounted():
    rewards = outcome_token_rewards(torch.tensor([1.0, 0.0]), REINFORCE_MASK, REINFORCE_KL)
    # row 0 rewards [−0.1, 0, 0.9]: γ=1 → [0.8, 0.9, 0.9]; γ=0.5 → [−0.1 + 0.5·0.45, 0 + 0.5·0.9, 0.9]
    torch.testing.assert_close(
        returns_to_go(rewards, REINFORCE_MASK, 1.0), torch.tensor([[0.8, 0.9, 0.9], [-0.2, -0.2, 0.0]])
    )
    torch.testing.assert_close(
        returns_to_go(rewards, REINFORCE_MASK, 0.5)[0], torch.tensor([0.125, 0.45, 0.9])
    )


def test_reinforce_pp_global_whitening():
    adv, m = ADVANTAGES["reinforce_pp"](
        torch.tensor([1.0, 0.0]), REINFORCE_MASK, 1, token_rewards=REINFORCE_KL
    )
    # returns 0.8 0.9 0.9 | −0.2 −0.2 : mean 0.44, unbiased var 1.372 / 4 = 0.343
    expected = torch.tensor([[0.36, 0.46, 0.46], [-0.64, -0.64, 0.0]]) / math.sqrt(0.343 + 1e-6)
    torch.testing.assert_close(adv, expected, atol=1e-5, rtol=0)
    assert m["adv/mean"] == pytest.approx(0.0, abs=1e-6)


def test_gae_by_hand():
    # one row, γ=1, λ=0.5: δ1 = 1 + 0 − 0.8 = 0.2 = A1; δ0 = 0 + 0.8 − 0.5 = 0.3, A0 = 0.3 + 0.5·0.2 = 0.4
    adv, ret = gae(torch.tensor([[0.0, 1.0]]), torch.tensor([[0.5, 0.8]]), torch.ones(1, 2), 1.0, 0.5)
    torch.testing.assert_close(adv, torch.tensor([[0.4, 0.2]]))
    torch.testing.assert_close(ret, torch.tensor([[0.9, 1.0]]))
    # a masked-out middle token (e.g. tool output) is skipped: its reward and value play no part
    adv_h, ret_h = gae(
        torch.tensor([[0.0, 7.0, 1.0]]), torch.tensor([[0.5, 9.0, 0.8]]), torch.tensor([[1, 0, 1]]), 1.0, 0.5
    )
    torch.testing.assert_close(adv_h, torch.tensor([[0.4, 0.0, 0.2]]))
    torch.testing.assert_close(ret_h, torch.tensor([[0.9, 0.0, 1.0]]))


def _gae_loop(rewards, values, lengths, gamma, lam):
    """Textbook GAE on right-padded rows, one python float at a time."""
    out = torch.zeros_like(rewards)
    for i, n in enumerate(lengths):
        a = 0.0
        for t in reversed(range(n)):
            v_next = values[i, t + 1].item() if t + 1 < n else 0.0
            delta = rewards[i, t].item() + gamma * v_next - values[i, t].item()
            a = delta + gamma * lam * a
            out[i, t] = a
    return out


def test_gae_matches_loop_and_registry_whitens():
    g = torch.Generator().manual_seed(0)
    rewards, values = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    lengths = [6, 4, 1, 3]
    mask = torch.arange(6)[None, :] < torch.tensor(lengths)[:, None]
    adv, ret = gae(rewards, values, mask, 0.9, 0.8)
    torch.testing.assert_close(adv, _gae_loop(rewards, values, lengths, 0.9, 0.8) * mask)
    torch.testing.assert_close(ret, (adv + values) * mask)

    scores, kl = torch.tensor([1.0, 0.0, 1.0, 0.1]), -0.05 * torch.rand(4, 6, generator=g)
    reg, _ = ADVANTAGES["gae"](scores, mask, 2, token_rewards=kl, values=values, gamma=0.9, lam=0.8)
    raw, _ = gae(outcome_token_rewards(scores, mask, kl), values, mask, 0.9, 0.8)
    torch.testing.assert_close(reg, masked_whiten(raw, mask.float()))
    assert reg[mask].mean().item() == pytest.approx(0.0, abs=1e-5)
    assert reg[mask].std().item() == pytest.approx(1.0, abs=1e-3)


def test_zero_outside_mask_for_every_estimator():
    values = torch.randn(6, 3)
    for name, fn in ADVANTAGES.items():
        adv, m = fn(SCORES, MASK, 3, values=values if name == "gae" else None)
        assert adv.shape == MASK.shape, name
        assert (adv[~MASK] == 0).all(), name
        assert {"adv/mean", "adv/abs_mean", "groups/zero_std_frac"} <= m.keys(), name


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="group_size"):
        ADVANTAGES["grpo"](SCORES, MASK, 4)
    with pytest.raises(ValueError, match="needs values"):
        ADVANTAGES["gae"](SCORES, MASK, 3)
    with pytest.raises(ValueError, match="token_rewards"):
        ADVANTAGES["grpo"](SCORES, MASK, 3, token_rewards=torch.zeros(6, 3))
    with pytest.raises(ValueError, match="group_size >= 2"):
        ADVANTAGES["grpo"](SCORES, MASK, 1)
    with pytest.raises(ValueError, match="mask"):
        ADVANTAGES["dr_grpo"](SCORES, MASK[:5], 3)
    with pytest.raises(ValueError, match="NaN"):
        ADVANTAGES["dr_grpo"](torch.tensor([1.0, float("nan")]), MASK[:2], 2)


def test_reinforce_pp_baseline_centres_per_group_then_whitens_over_the_batch():
    # verl's compute_rf_baseline_outcome_advantage: scores − group mean on every token, then masked_whiten
    adv, m = ADVANTAGES["reinforce_pp_baseline"](SCORES, MASK, 3)
    centred = _rows([2 / 3, -1 / 3, -1 / 3, 0.0, 0.0, 0.0])
    n = MASK.sum()  # 11 masked tokens: 3×(2/3), 3×(−1/3), 5×0
    mean = (centred * MASK).sum() / n
    var = (((centred - mean) ** 2) * MASK).sum() / (n - 1)
    expected = (centred - mean) / math.sqrt(var + 1e-6) * MASK
    assert torch.allclose(adv, expected, atol=1e-6)
    assert adv[0, 0] > 0 > adv[1, 0] and adv[3, 0] == pytest.approx(float(-mean / math.sqrt(var + 1e-6)), abs=1e-6)
    assert m["groups/zero_std_frac"] == 0.5
    assert ADVANTAGES["reinforce_pp_baseline"].batch_normalised  # refused under several processes


@pytest.mark.parametrize("value", [0.9, 0.1, 0.7, 1 / 3])
def test_a_flat_group_gets_zero_advantage_whatever_its_value(value):
    """0.9 is not exactly representable: the float32 group mean was one ulp off, and divided by std + 1e-6
    that gave every row about -0.056 (#20). Weighted rewards (0.1·format + 0.9·answer) make such values."""
    from coldstart.algorithms.advantages import dr_grpo, grpo

    scores = torch.cat([torch.full((8,), value), torch.tensor([0.0, 1.0] * 4)])
    for fn in (grpo, dr_grpo):
        adv, _ = fn(scores, torch.ones(16, 3), 8)
        assert torch.equal(adv[:8], torch.zeros(8, 3)), fn.__name__
        assert adv[8:].abs().min() > 0
