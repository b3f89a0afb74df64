import pytest
import torch

from coldstart.models import build_char_tokenizer, build_tiny_model
from coldstart.rl.logprobs import prompt_groups, sequence_logprobs, shared_prefix_ok
from coldstart.rollout import SamplingParams, build_sampler


def _batch(arch: str, kv_heads: int | None = None):
    """A tiny model and a sampled RL batch: 3 prompts of different lengths (left-padded) × 4 completions."""
    tok = build_char_tokenizer()
    model = build_tiny_model(len(tok), arch=arch, hidden_size=32, layers=2, heads=4, kv_heads=kv_heads,
                             pad_id=tok.pad_token_id, bos_id=tok.bos_token_id, eos_id=tok.eos_token_id, seed=1)
    prompts = [tok(t, add_special_tokens=False).input_ids for t in ("12+7=", "What is 345+678? ", "9*9")]
    params = SamplingParams(n=4, max_new_tokens=10, temperature=1.0, eos_ids=[tok.eos_token_id])
    ro = build_sampler("torch", tok).sample(model, prompts, params, torch.Generator().manual_seed(3))
    return model, ro


@pytest.mark.parametrize("arch,kv_heads", [("qwen2", None), ("llama", 2)])
def test_shared_prefix_pass_equals_the_full_pass_in_value_and_gradient(arch, kv_heads):
    model, ro = _batch(arch, kv_heads)
    assert ro.completion_ids.shape[1] > 1 and not ro.completion_mask.all()  # some rows ended early
    weights = torch.randn(ro.completion_ids.shape, generator=torch.Generator().manual_seed(0))
    results = []
    for shared in (False, True):
        model.zero_grad()
        logp, ent, _ = sequence_logprobs(model, ro, 0.7, need_entropy=True, shared=shared)
        ((logp + 0.1 * ent) * weights * ro.completion_mask).sum().backward()
        results.append((logp.detach(), ent.detach(), [p.grad.clone() for p in model.parameters()]))
    (lf, ef, gf), (ls, es, gs) = results
    m = ro.completion_mask
    assert (lf - ls)[m].abs().max() < 1e-5 and (ef - es)[m].abs().max() < 1e-5
    assert max(float((a - b).abs().max()) for a, b in zip(gf, gs)) < 1e-5
    assert max(float(g.abs().max()) for g in gs) > 1e-3  # the gradient is not trivially zero


def test_shared_prefix_matches_sampler_logprobs_and_is_chosen_automatically():
    model, ro = _batch("qwen2")
    assert shared_prefix_ok(model) and model._coldstart_shared_prefix is True
    with torch.no_grad():
        auto = sequence_logprobs(model, ro, 1.0)[0]
        full = sequence_logprobs(model, ro, 1.0, shared=False)[0]
    m = ro.completion_mask
    assert (auto - ro.logprobs)[m].abs().max() < 1e-4  # the sampler's log-probs of the tokens it drew
    assert (auto - full)[m].abs().max() < 1e-5


def test_rows_without_shared_prompts_and_value_heads_take_the_full_pass():
    model, ro = _batch("qwen2")
    first, inverse = prompt_groups(ro.prompt_ids, ro.prompt_mask)
    assert first.tolist() == [0, 4, 8] and inverse.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    head = torch.nn.Linear(model.config.hidden_size, 1)
    with torch.no_grad():
        logp, _, values = sequence_logprobs(model, ro, 1.0, value_head=head)
        alone = sequence_logprobs(model, ro, 1.0, shared=False)[0]
    assert values.shape == logp.shape and torch.equal(logp, alone)


def test_a_model_that_fails_the_probe_falls_back():
    model, ro = _batch("qwen2")

    class NoCache(torch.nn.Module):  # a model whose forward ignores the cache: the probe must catch it
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, **kw):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask[:, -input_ids.shape[1]:],
                              position_ids=position_ids, use_cache=False)

        def get_output_embeddings(self):
            return self.inner.get_output_embeddings()

    wrapped = NoCache(model)
    assert not shared_prefix_ok(wrapped)
    with torch.no_grad():
        assert torch.equal(sequence_logprobs(wrapped, ro, 1.0)[0], sequence_logprobs(model, ro, 1.0, shared=False)[0])
