"""Policy / value losses and the log-prob helpers against values computed by hand (algorithms/losses.py)."""

import math

import pytest
import torch

from coldstart.algorithms.losses import (
    AGGREGATIONS,
    kl_penalty,
    policy_loss,
    token_entropy,
    token_logprobs,
    value_loss,
)

# Row 0: advantage +1 on 3 tokens with ratios 1.5, 1.1, 1.25. Row 1: advantage −1 on 2 tokens with
# ratios 0.5, 1.0, then a padding token (ratio 100, must not count).
RATIOS = torch.tensor([[1.5, 1.1, 1.25], [0.5, 1.0, 100.0]])
OLD = torch.tensor([[-1.0, -2.0, -0.5], [-1.5, -0.7, -3.0]])
ADV = torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]])
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)


def _logp(requires_grad: bool = False) -> torch.Tensor:
    return (OLD + RATIOS.log()).clone().requires_grad_(requires_grad)


# With ε = 0.2 the per-token losses are max(−A·ρ, −A·clip(ρ, 0.8, 1.2)):
#   row 0: max(−1.5, −1.2) = −1.2 ; −1.1 ; max(−1.25, −1.2) = −1.2      (sum −3.5 over 3 tokens)
#   row 1: max(0.5, 0.8) = 0.8 ; 1.0                                   (sum  1.8 over 2 tokens)
def test_ppo_clip_token_mean_and_metrics():
    loss, m = policy_loss(_logp(), OLD, ADV, MASK)
    assert loss.item() == pytest.approx((-3.5 + 1.8) / 5)
    assert m["loss/policy"] == pytest.approx(-0.34)
    assert m["clip/high_frac"] == pytest.approx(2 / 5)  # ρ = 1.5 and 1.25 with A > 0
    assert m["clip/low_frac"] == pytest.approx(1 / 5)  # ρ = 0.5 with A < 0
    assert m["ratio/mean"] == pytest.approx((1.5 + 1.1 + 1.25 + 0.5 + 1.0) / 5)
    assert "kl" not in m and "entropy" not in m


def test_each_aggregation():
    seq, _ = policy_loss(_logp(), OLD, ADV, MASK, agg="seq_mean_token_mean")
    assert seq.item() == pytest.approx((-3.5 / 3 + 1.8 / 2) / 2)
    const, _ = policy_loss(_logp(), OLD, ADV, MASK, agg="constant", max_tokens=4)
    assert const.item() == pytest.approx(-1.7 / (4 * 2))
    # an empty row leaves seq_mean_token_mean's mean over rows alone, but counts in constant's N
    loss3 = torch.tensor([[1.0, 3.0], [5.0, 0.0], [7.0, 7.0]])
    mask3 = torch.tensor([[1, 1], [1, 0], [0, 0]]).float()
    assert AGGREGATIONS["seq_mean_token_mean"](loss3, mask3).item() == pytest.approx((2.0 + 5.0) / 2)
    assert AGGREGATIONS["token_mean"](loss3, mask3).item() == pytest.approx(9.0 / 3)
    assert AGGREGATIONS["constant"](loss3, mask3, max_tokens=2).item() == pytest.approx(9.0 / 6)


def test_clip_higher():
    # ε_high = 0.28: row 0 becomes max(−1.5, −1.28) = −1.28 ; −1.1 ; −1.25 (1.25 < 1.28, no clip)
    loss, m = policy_loss(_logp(), OLD, ADV, MASK, eps_high=0.28)
    assert loss.item() == pytest.approx((-1.28 - 1.1 - 1.25 + 1.8) / 5)
    assert m["clip/high_frac"] == pytest.approx(1 / 5)
    assert m["clip/low_frac"] == pytest.approx(1 / 5)


def test_gradient_is_zero_on_clipped_tokens():
    logp = _logp(requires_grad=True)
    loss, _ = policy_loss(logp, OLD, ADV, MASK)
    loss.backward()
    # d(−A·ρ)/d logp = −A·ρ, over 5 tokens; clipped tokens and padding give 0
    expected = torch.tensor([[0.0, -1.1 / 5, 0.0], [0.0, 1.0 / 5, 0.0]])
    torch.testing.assert_close(logp.grad, expected)


def test_dual_clip():
    # A = −1, ρ = 5: PPO gives max(5, 1.2) = 5, dual-clip caps it at c·|A| = 3; ρ = 2 stays 2;
    # A = +1, ρ = 5: max(−5, −1.2) = −1.2, untouched by dual-clip.
    old = torch.zeros(1, 3)
    logp = torch.tensor([[5.0, 2.0, 5.0]]).log()
    adv = torch.tensor([[-1.0, -1.0, 1.0]])
    mask = torch.ones(1, 3)
    plain, _ = policy_loss(logp, old, adv, mask)
    dual, m = policy_loss(logp, old, adv, mask, dual_clip=3.0)
    assert plain.item() == pytest.approx((5.0 + 2.0 - 1.2) / 3)
    assert dual.item() == pytest.approx((3.0 + 2.0 - 1.2) / 3)
    assert m["clip/dual_frac"] == pytest.approx(1 / 3)


def test_kl_estimators_by_hand():
    logp = torch.tensor([[math.log(0.5), math.log(0.25)]])
    ref = torch.tensor([[math.log(0.25), math.log(0.5)]])
    # δ = ref − logp = [−ln2, +ln2]
    ln2 = math.log(2)
    torch.testing.assert_close(kl_penalty(logp, ref, "k1"), torch.tensor([[ln2, -ln2]]))
    torch.testing.assert_close(kl_penalty(logp, ref, "k2"), torch.tensor([[0.5 * ln2**2, 0.5 * ln2**2]]))
    # k3 = e^δ − δ − 1: 0.5 + ln2 − 1 = 0.193147 ; 2 − ln2 − 1 = 0.306853
    torch.testing.assert_close(kl_penalty(logp, ref, "k3"), torch.tensor([[0.193147, 0.306853]]))
    torch.testing.assert_close(kl_penalty(ref, ref, "k3"), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="kl kind"):
        kl_penalty(logp, ref, "k4")


def test_kl_and_entropy_terms_in_loss():
    logp = torch.tensor([[math.log(0.5), math.log(0.25)]])
    ref = torch.tensor([[math.log(0.25), math.log(0.5)]])
    zero_adv, mask = torch.zeros(1, 2), torch.ones(1, 2)
    loss, m = policy_loss(logp, logp, zero_adv, mask, ref_logp=ref, kl_coef=0.1)
    assert loss.item() == pytest.approx(0.1 * (0.193147 + 0.306853) / 2, abs=1e-6)
    # the kl metric is reported even when it is not in the loss
    loss0, m0 = policy_loss(logp, logp, zero_adv, mask, ref_logp=ref)
    assert loss0.item() == 0.0 and m0["kl"] == pytest.approx(0.25, abs=1e-6) and m["kl"] == m0["kl"]
    ent = torch.tensor([[1.0, 2.0]])
    loss_e, m_e = policy_loss(logp, logp, zero_adv, mask, entropy=ent, entropy_coef=0.01)
    assert loss_e.item() == pytest.approx(-0.01 * 1.5)
    assert m_e["entropy"] == pytest.approx(1.5)


def test_policy_loss_bad_inputs():
    with pytest.raises(ValueError, match="max_tokens"):
        policy_loss(_logp(), OLD, ADV, MASK, agg="constant")
    with pytest.raises(ValueError, match="unknown agg"):
        policy_loss(_logp(), OLD, ADV, MASK, agg="seq_mean")
    with pytest.raises(ValueError, match="dual_clip"):
        policy_loss(_logp(), OLD, ADV, MASK, dual_clip=0.9)
    with pytest.raises(ValueError, match="ref_logp"):
        policy_loss(_logp(), OLD, ADV, MASK, kl_coef=0.1)
    with pytest.raises(ValueError, match="entropy"):
        policy_loss(_logp(), OLD, ADV, MASK, entropy_coef=0.1)
    with pytest.raises(ValueError, match=r"\(N, T\)"):
        policy_loss(_logp(), OLD[:, :2], ADV, MASK)


def test_value_loss_clipped():
    values = torch.tensor([[1.0, 2.0, 0.0, 100.0]])
    old = torch.tensor([[0.5, 2.5, 0.0, 0.0]])
    returns = torch.tensor([[2.0, 2.0, 1.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    # token 0: (1−2)² = 1 vs clipped V 0.7: 1.69 → 1.69 ; token 1: 0 vs clipped 2.3: 0.09 → 0.09 ;
    # token 2: 1 vs 1 → 1 ; token 3 is padding
    loss, m = value_loss(values, old, returns, mask, clip=0.2)
    assert loss.item() == pytest.approx(0.5 * (1.69 + 0.09 + 1.0) / 3)
    assert m["value/clip_frac"] == pytest.approx(2 / 3)
    unclipped, _ = value_loss(values, old, returns, mask, clip=None)
    assert unclipped.item() == pytest.approx(0.5 * (1.0 + 0.0 + 1.0) / 3)


def test_token_entropy():
    torch.testing.assert_close(token_entropy(torch.zeros(2, 3, 7)), torch.full((2, 3), math.log(7)))
    # p = (0.25, 0.75): H = −(0.25 ln 0.25 + 0.75 ln 0.75) = 0.562335
    two = torch.tensor([[[0.0, math.log(3)]]])
    torch.testing.assert_close(token_entropy(two), torch.tensor([[0.562335]]))
    # a masked vocabulary (−inf logits) is a certain token: 0, not NaN
    certain = torch.tensor([[[0.0, float("-inf"), float("-inf")]]])
    torch.testing.assert_close(token_entropy(certain), torch.zeros(1, 1))


def test_token_logprobs():
    two = torch.tensor([[[0.0, math.log(3)], [0.0, math.log(3)]]])
    torch.testing.assert_close(
        token_logprobs(two, torch.tensor([[1, 0]])), torch.tensor([[math.log(0.75), math.log(0.25)]])
    )
    g = torch.Generator().manual_seed(0)
    logits, ids = torch.randn(3, 4, 11, generator=g), torch.randint(0, 11, (3, 4), generator=g)
    expected = torch.log_softmax(logits, -1).gather(-1, ids[..., None]).squeeze(-1)
    torch.testing.assert_close(token_logprobs(logits, ids), expected)
    out = token_logprobs(logits.bfloat16(), ids)
    assert out.dtype == torch.float32
    with pytest.raises(ValueError, match="ids"):
        token_logprobs(logits, ids[:, :2])
