"""Group filters (coldstart/algorithms/filters.py)."""

import pytest
import torch

from coldstart.algorithms.filters import FILTERS, expand_group_mask, expand_groups, group_std, pad_select

# G=2: [1, 0] mixed, [1, 1] all right, [0, 0] all wrong, [0.5, 1] mixed partial credit
SCORES = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.5, 1.0])


def test_dynamic_keeps_groups_with_spread():
    keep, m = FILTERS["dynamic"](SCORES, 2)
    assert keep.tolist() == [0, 3]
    assert m["groups/zero_std_frac"] == 0.5
    assert m["groups/kept"] == 2.0
    assert m["groups/kept_frac"] == 0.5
    assert m["groups/std_mean"] == pytest.approx((0.5 + 0.0 + 0.0 + 0.25) / 4)


def test_dynamic_min_std_and_equal_floats():
    # population stds 0.05 and 0.5
    keep, _ = FILTERS["dynamic"](torch.tensor([0.0, 0.1, 0.0, 1.0]), 2, min_std=0.1)
    assert keep.tolist() == [1]
    keep, m = FILTERS["dynamic"](torch.tensor([0.1, 0.1, 0.1, 0.7, 0.7, 0.7]), 3)
    assert keep.tolist() == [] and m["groups/zero_std_frac"] == 1.0


def test_none_keeps_all():
    keep, m = FILTERS["none"](SCORES, 2)
    assert keep.tolist() == [0, 1, 2, 3]
    assert m["groups/kept"] == 4.0 and m["groups/zero_std_frac"] == 0.5


def test_group_std_and_expand():
    torch.testing.assert_close(group_std(torch.tensor([1.0, 0.0, 0.0, 0.0]), 2), torch.tensor([0.5, 0.0]))
    torch.testing.assert_close(group_std(torch.tensor([3.0, 4.0]), 1), torch.zeros(2))
    rows = expand_group_mask(torch.tensor([True, False]), 3)
    assert rows.tolist() == [True, True, True, False, False, False]
    assert SCORES[expand_groups(FILTERS["dynamic"](SCORES, 2)[0], 2)].tolist() == [1.0, 0.0, 0.5, 1.0]
    assert expand_groups(torch.tensor([2, 0, 2]), 2).tolist() == [4, 5, 0, 1, 4, 5]


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="group_size"):
        FILTERS["dynamic"](SCORES, 3)
    with pytest.raises(ValueError, match="unknown options"):
        FILTERS["dynamic"](SCORES, 2, tau=1.0)
    with pytest.raises(ValueError, match="unknown options"):
        FILTERS["none"](SCORES, 2, tau=1.0)
    with pytest.raises(ValueError, match="group_size >= 2"):
        FILTERS["dynamic"](SCORES, 1)
    with pytest.raises(ValueError, match="min_std"):
        FILTERS["dynamic"](SCORES, 2, min_std=-1.0)


def test_dupo_fills_the_batch_with_duplicates_of_informative_groups():
    gen = torch.Generator().manual_seed(0)
    groups, m = FILTERS["dupo"](SCORES, 2, generator=gen)
    assert groups.tolist()[:2] == [0, 3] and len(groups) == 4  # B groups, the informative ones first
    assert set(groups.tolist()[2:]) <= {0, 3}  # the fill is drawn from the informative groups only
    assert m["groups/duplicated"] == 2.0 and m["groups/zero_std_frac"] == 0.5
    draws = torch.cat([FILTERS["dupo"](SCORES, 2, generator=gen)[0][2:] for _ in range(2000)])
    assert abs((draws == 0).float().mean().item() - 0.5) < 0.05  # uniform over the informative groups
    flat, m = FILTERS["dupo"](torch.tensor([1.0, 1.0, 0.0, 0.0]), 2)
    assert flat.tolist() == [] and m["groups/duplicated"] == 0.0


def test_pad_keeps_the_band_and_prioritises_large_advantages():
    adv = torch.tensor([0.0, 0.5, -2.0, 1.0, 0.0, 3.0])
    rows, m = pad_select(adv, t_low=0.1, t_high=2.5, rho=1.0, tau=1.0)
    assert rows.tolist() == [1, 2, 3]  # |adv| in [0.1, 2.5]; rho=1 keeps all of E, in row order
    assert m["pad/effective_frac"] == 0.5 and m["pad/kept"] == 3.0
    # k' = round(0.5 * 6) = 3 of E = {1, 2, 3, 5}; P ∝ exp(|a| / τ): with a small τ the largest |a| win
    rows, _ = pad_select(adv, t_low=0.1, rho=0.5, tau=0.1, generator=torch.Generator().manual_seed(1))
    assert rows.tolist() == [2, 3, 5]
    # sampling frequencies follow softmax(|a| / τ): one draw from E = {1 (0.5), 3 (1.0)}, τ = 1
    gen = torch.Generator().manual_seed(0)
    picks = [pad_select(torch.tensor([0.5, 1.0]), rho=0.5, generator=gen)[0].item() for _ in range(4000)]
    p1 = torch.softmax(torch.tensor([0.5, 1.0]), 0)[1].item()
    assert abs(sum(picks) / len(picks) - p1) < 0.03
    with pytest.raises(ValueError, match="rho"):
        pad_select(adv, rho=0.0)
