"""Copies of a row train once, counted as often as they occur: the loss and the update are those of all rows."""

from __future__ import annotations

import copy

import pytest
import torch

import coldstart.rl.update as rl_update
from coldstart.algorithms.losses import policy_loss
from coldstart.config import RLConfig
from coldstart.models import build_char_tokenizer, build_tiny_model
from coldstart.rl import UpdateSettings
from coldstart.rl.update import update
from coldstart.rollout import SamplingParams, TorchSampler
from coldstart.rollout_utils import unique_rows
from coldstart.types import Rollouts


@pytest.mark.parametrize("agg", ["token_mean", "seq_mean_token_mean", "constant"])
def test_weighted_rows_give_the_loss_and_gradient_of_repeated_rows(agg):
    gen = torch.Generator().manual_seed(0)
    logp = (-torch.rand(3, 5, generator=gen)).requires_grad_()
    old = logp.detach() + 0.1 * torch.randn(3, 5, generator=gen)
    adv = torch.randn(3, 5, generator=gen)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    entropy = torch.rand(3, 5, generator=gen).requires_grad_()
    rep = torch.tensor([0, 1, 1, 2, 2, 2])
    kw = {"agg": agg, "max_tokens": 5, "eps_high": 0.28, "entropy_coef": 0.01}
    full, full_m = policy_loss(logp[rep], old[rep], adv[rep], mask[rep], entropy=entropy[rep], **kw)
    once, once_m = policy_loss(logp, old, adv, mask, entropy=entropy, weights=torch.tensor([1, 2, 3]), **kw)
    assert torch.allclose(full, once, atol=1e-7)
    assert full_m.keys() == once_m.keys()
    assert all(full_m[k] == pytest.approx(once_m[k], abs=1e-6) for k in full_m)
    g_full = torch.autograd.grad(full, [logp, entropy])
    g_once = torch.autograd.grad(once, [logp, entropy])
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(g_full, g_once))


def _rollouts() -> Rollouts:
    ids = torch.tensor([[5, 6, 7, 2], [5, 6, 8, 2], [5, 6, 7, 2], [5, 6, 7, 2], [5, 6, 8, 2]])
    return Rollouts(prompt_ids=torch.tensor([[0, 3, 4]] * 5), prompt_mask=torch.tensor([[False, True, True]] * 5),
                    completion_ids=ids, completion_mask=torch.ones(5, 4, dtype=torch.bool),
                    logprobs=-torch.rand(5, 4), truncated=torch.zeros(5, dtype=torch.bool), texts=[""] * 5,
                    prefix_mask=torch.tensor([[False] * 4] * 4 + [[True, False, False, False]]))


def test_unique_rows_merges_only_true_copies():
    ro = _rollouts()
    adv = torch.tensor([[1.0] * 4, [-1.0] * 4, [1.0] * 4, [0.5] * 4, [-1.0] * 4])
    rows, counts = unique_rows(ro, torch.arange(5), ro.completion_mask, adv)
    # row 2 copies row 0; row 3 has other advantages; row 4 differs from row 1 in its prefix mask
    assert rows.tolist() == [0, 1, 3, 4] and counts.tolist() == [2, 1, 1, 1]
    rows, counts = unique_rows(ro, torch.tensor([3, 2, 0]), ro.completion_mask, adv)
    assert rows.tolist() == [3, 2] and counts.tolist() == [1, 2]  # the first of each set, in order of appearance


@pytest.mark.parametrize("agg", ["token_mean", "seq_mean_token_mean", "constant"])
def test_update_with_copies_equals_update_of_every_row(agg, monkeypatch):
    tok = build_char_tokenizer()
    torch.manual_seed(0)
    model = build_tiny_model(len(tok), hidden_size=16, layers=1, heads=2, max_len=64)
    prompts = [tok("1+2=").input_ids, tok("3+4=").input_ids]
    ro = TorchSampler(tok).sample(model, prompts, SamplingParams(n=4, max_new_tokens=6, seed=0))
    for r in (1, 2, 6):  # rows 1 and 2 copy row 0, row 6 copies row 5 (the sampler's log-probs too)
        src = 0 if r < 4 else 5
        ro.completion_ids[r], ro.completion_mask[r], ro.logprobs[r] = (
            ro.completion_ids[src], ro.completion_mask[src], ro.logprobs[src])
    adv = torch.tensor([1.0, 1.0, 1.0, -3.0, 0.5, -0.5, -0.5, 0.5])[:, None].expand_as(ro.logprobs).clone()
    settings = UpdateSettings.from_config(RLConfig(loss_agg=agg, micro_batch_size=2, max_new_tokens=6))
    results = []
    for dedup in (True, False):
        if not dedup:
            monkeypatch.setattr(rl_update, "unique_rows", lambda ro, rows, mask, adv: (rows, torch.ones_like(rows)))
        m = copy.deepcopy(model)
        # plain SGD with lr 1: the weights move by the (clipped) gradient itself (Adam would amplify the
        # rounding of near-zero gradients to ±lr)
        out = update(m, None, None, torch.optim.SGD(m.parameters(), lr=1.0), ro, adv, None, None, settings)
        results.append((m, out))
    (a, out_a), (b, out_b) = results
    assert out_a["rows/unique"] == 5 and out_b["rows/unique"] == 8
    assert out_a["optimizer_steps"] == out_b["optimizer_steps"] == 1
    assert max(float((p - q).detach().abs().max()) for p, q in zip(a.parameters(), b.parameters())) < 1e-6
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), model.parameters()))
    assert out_a["loss/policy"] == pytest.approx(out_b["loss/policy"], abs=1e-6)


@pytest.mark.parametrize("agg", ["token_mean", "seq_mean_token_mean"])
def test_rows_overlong_filter_empties_are_left_out_as_if_absent(agg):
    """seq_mean_token_mean leaves the rows overlong_filter empties out of its sequence count, as policy_loss
    and verl do: the update equals the one without those rows. They used to count, scaling the gradient by
    (non-empty rows) / N. (`constant` counts every row by design: Dr. GRPO's N.)"""
    from coldstart.rollout_utils import select_rows

    tok = build_char_tokenizer()
    torch.manual_seed(0)
    model = build_tiny_model(len(tok), hidden_size=16, layers=1, heads=2, max_len=64)
    prompts = [tok("1+2=").input_ids, tok("3+4=").input_ids]
    ro = TorchSampler(tok).sample(model, prompts, SamplingParams(n=4, max_new_tokens=6, seed=0))
    ro.truncated = torch.tensor([True, False, True, False, False, True, False, False])
    adv = torch.tensor([1.0, -1.0, 0.5, 2.0, -0.5, 1.5, -2.0, 0.7])[:, None].expand_as(ro.logprobs).clone()
    kept = (~ro.truncated).nonzero()[:, 0]
    short = select_rows(ro, kept)
    short.truncated = torch.zeros(len(kept), dtype=torch.bool)
    moved = []
    for batch, a in ((ro, adv), (short, adv[kept][:, : short.logprobs.shape[1]])):
        settings = UpdateSettings.from_config(RLConfig(loss_agg=agg, micro_batch_size=2, max_new_tokens=6,
                                                       overlong_filter=True))
        m = copy.deepcopy(model)
        update(m, None, None, torch.optim.SGD(m.parameters(), lr=1.0), batch, a, None, None, settings)
        moved.append(m)
    assert max(float((p - q).detach().abs().max()) for p, q in zip(*(m.parameters() for m in moved))) < 1e-6
