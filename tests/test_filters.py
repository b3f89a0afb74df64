"""Group filters (coldstart/algorithms/filters.py)."""

import pytest
import torch

from coldstart.algorithms.filters import FILTERS, expand_group_mask, group_std

# G=2: [1, 0] mixed, [1, 1] all right, [0, 0] all wrong, [0.5, 1] mixed partial credit
SCORES = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.5, 1.0])


def test_dynamic_keeps_groups_with_spread():
    keep, m = FILTERS["dynamic"](SCORES, 2)
    assert keep.tolist() == [True, False, False, True]
    assert m["groups/zero_std_frac"] == 0.5
    assert m["groups/kept"] == 2.0
    assert m["groups/kept_frac"] == 0.5
    assert m["groups/std_mean"] == pytest.approx((0.5 + 0.0 + 0.0 + 0.25) / 4)


def test_dynamic_min_std_and_equal_floats():
    # population stds 0.05 and 0.5
    keep, _ = FILTERS["dynamic"](torch.tensor([0.0, 0.1, 0.0, 1.0]), 2, min_std=0.1)
    assert keep.tolist() == [False, True]
    keep, m = FILTERS["dynamic"](torch.tensor([0.1, 0.1, 0.1, 0.7, 0.7, 0.7]), 3)
    assert keep.tolist() == [False, False] and m["groups/zero_std_frac"] == 1.0


def test_none_keeps_all():
    keep, m = FILTERS["none"](SCORES, 2)
    assert keep.tolist() == [True] * 4
    assert m["groups/kept"] == 4.0 and m["groups/zero_std_frac"] == 0.5


def test_group_std_and_expand():
    torch.testing.assert_close(group_std(torch.tensor([1.0, 0.0, 0.0, 0.0]), 2), torch.tensor([0.5, 0.0]))
    torch.testing.assert_close(group_std(torch.tensor([3.0, 4.0]), 1), torch.zeros(2))
    rows = expand_group_mask(torch.tensor([True, False]), 3)
    assert rows.tolist() == [True, True, True, False, False, False]
    assert SCORES[expand_group_mask(FILTERS["dynamic"](SCORES, 2)[0], 2)].tolist() == [1.0, 0.0, 0.5, 1.0]


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
