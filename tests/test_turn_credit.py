import math

import pytest
import torch

from coldstart.algorithms.turn_credit import spread_advantage, trajectory_scores, turn_credits

R = torch.tensor([[0.0, 0.5, 1.0], [1.0, 0.0, 0.0]])
M = torch.tensor([[True, True, True], [True, False, False]])


def test_trajectory_scores_sum_and_r2g():
    assert trajectory_scores(R, M, "sum").tolist() == [1.5, 1.0]
    # r2g from the start: 0 + 0.5·0.5 + 0.25·1 = 0.5; second row has one turn (the 0.0 past it is masked)
    assert trajectory_scores(R, M, "r2g", 0.5).tolist() == pytest.approx([0.5, 1.0])
    with pytest.raises(ValueError, match="trajectory_score"):
        trajectory_scores(R, M, "mean")


def test_turn_credits_hand_computed():
    assert turn_credits(R, M, "equalized").tolist() == [[1, 1, 1], [1, 0, 0]]
    # r2g with γ = 0.5: c3 = 1, c2 = 0.5 + 0.5 = 1, c1 = 0 + 0.5 = 0.5
    assert turn_credits(R, M, "r2g", 0.5).flatten().tolist() == pytest.approx([0.5, 1.0, 1.0, 1.0, 0.0, 0.0])
    em = turn_credits(R, M, "em")
    half = 0.5 + 0.5 * (1 - math.exp(-1)) / (1 - math.exp(-2))
    assert em.flatten().tolist() == pytest.approx([0.5, half, 1.0, 1.0, 0.0, 0.0])


def test_spread_advantage_keeps_the_mean_and_skips_observations():
    adv = torch.tensor([[2.0, 2.0, 0.0, 2.0, 2.0, 2.0], [-1.0, -1.0, 0.0, 0.0, 0.0, 0.0]])
    # row 0: turn 0 = tokens 0-1, an observation token (−1), turn 1 = tokens 3-5; row 1: one turn then padding
    tt = torch.tensor([[0, 0, -1, 1, 1, 1], [0, 0, -1, -1, -1, -1]])
    credits = torch.tensor([[1.0, 3.0], [0.5, 0.0]])
    out, m = spread_advantage(adv, credits, tt)
    # row 0: n = 5, Σc = 1+1+3+3+3 = 11 → weights 5/11 on turn 0 and 15/11 on turn 1
    assert out[0].tolist() == pytest.approx([10 / 11, 10 / 11, 0.0, 30 / 11, 30 / 11, 30 / 11])
    assert float(out[0, tt[0] >= 0].mean()) == pytest.approx(2.0)
    assert out[1].tolist() == pytest.approx([-1.0, -1.0, 0, 0, 0, 0])
    assert m["turns/credit_fallback"] == 0.0


def test_spread_advantage_zero_credit_sum_falls_back_to_equalized():
    adv = torch.tensor([[1.5, 1.5, 1.5]])
    out, m = spread_advantage(adv, torch.tensor([[0.0, 0.0]]), torch.tensor([[0, -1, 1]]))
    assert out.tolist() == [[1.5, 0.0, 1.5]] and m["turns/credit_fallback"] == 1.0
