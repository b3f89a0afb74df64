"""Rollout samplers: logprob parity with a full forward pass, greedy parity with `generate`, filters,
eos / stop strings / truncation, seeding, row order, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from coldstart.models import build_char_tokenizer, build_tiny_model
from coldstart.rollout import SAMPLERS, HFSampler, SamplingParams, TorchSampler, build_sampler
from coldstart.rollout.base import cut_at_stop, stop_token_index
from coldstart.rollout.torch_sampler import filter_logits, sample_tokens

TOK = build_char_tokenizer()
EOS = TOK.eos_token_id  # <|end|>, a special token: dropped from texts
TEXTS = ["What is 12+7?", "abc", "hello there, world", "q"]
SAMPLERS_UNDER_TEST = {
    "static": lambda: TorchSampler(TOK, cache="static"),
    "dynamic": lambda: TorchSampler(TOK, cache="dynamic"),
    "static-shrink-always": lambda: TorchSampler(TOK, cache="static", shrink=1.0),
    "dynamic-never-shrink": lambda: TorchSampler(TOK, cache="dynamic", shrink=0.0),
    "hf": lambda: HFSampler(TOK),
}


def tiny_model(arch: str = "qwen2"):
    """A random 2-layer GQA model whose weights are scaled up so greedy text varies (the default init
    gives near-uniform next-token distributions and one repeated character)."""
    model = build_tiny_model(len(TOK), arch=arch, hidden_size=64, layers=2, heads=4, kv_heads=2, max_len=128)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(30**0.5)
    return model


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def dec(ids: list[int]) -> str:
    return TOK.decode(ids, skip_special_tokens=True)


def prompts() -> list[list[int]]:
    return [TOK.encode(t) for t in TEXTS]


def full_forward_logits(model, ro) -> torch.Tensor:
    """(N, T, V) logits of a single forward pass over prompt + completion (no cache)."""
    ids = torch.cat([ro.prompt_ids, ro.completion_ids], 1)
    mask = torch.cat([ro.prompt_mask, ro.completion_mask], 1).long()
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    P = ro.prompt_ids.shape[1]
    return logits[:, P - 1 : -1].float()


def greedy_ids(model, max_new: int) -> list[list[int]]:
    """Greedy completions from transformers `generate` (no eos), one per prompt."""
    ids = prompts()
    width = max(map(len, ids))
    input_ids = torch.tensor([[0] * (width - len(p)) + p for p in ids])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in ids])
    out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False,
                         eos_token_id=[], pad_token_id=0)
    return out[:, width:].tolist()


@pytest.mark.parametrize("name", list(SAMPLERS_UNDER_TEST))
def test_logprobs_equal_full_forward_pass(model, name):
    # a frequent token as eos makes rows end at different steps (and the shrink path drop them)
    params = SamplingParams(n=2, max_new_tokens=12, temperature=1.0, eos_ids=[TOK.convert_tokens_to_ids("e")],
                            seed=3)
    ro = SAMPLERS_UNDER_TEST[name]().sample(model, prompts(), params)
    expected = full_forward_logits(model, ro).log_softmax(-1).gather(2, ro.completion_ids[..., None])[..., 0]
    m = ro.completion_mask
    assert m[:, 0].all() and (ro.prompt_mask.sum(1) == torch.tensor([13, 13, 3, 3, 18, 18, 1, 1])).all()
    assert torch.allclose(ro.logprobs[m], expected[m], atol=1e-4)
    assert (ro.logprobs[~m] == 0).all() and (ro.completion_ids[~m] == TOK.pad_token_id).all()
    # plain tensors, not inference-mode ones: the trainer saves them for backward
    fields = (ro.prompt_ids, ro.prompt_mask, ro.completion_ids, ro.completion_mask, ro.logprobs, ro.truncated)
    assert not any(t.is_inference() for t in fields)


@pytest.mark.parametrize("name", ["static", "dynamic", "hf"])
@pytest.mark.parametrize("arch", ["qwen2", "llama", "gpt2"])
def test_greedy_equals_generate(name, arch):
    if arch == "gpt2":
        config = GPT2Config(vocab_size=len(TOK), n_embd=32, n_layer=2, n_head=2, n_positions=64, bos_token_id=2,
                            eos_token_id=EOS, pad_token_id=0)
        torch.manual_seed(0)
        model = GPT2LMHeadModel(config).eval()
    else:
        model = tiny_model(arch).eval()
    ro = SAMPLERS_UNDER_TEST[name]().sample(model, prompts(), SamplingParams(max_new_tokens=10, temperature=0))
    assert ro.completion_ids.tolist() == greedy_ids(model, 10)
    assert ro.truncated.all() and (ro.lengths == 10).all()
    # greedy logprobs: the plain temperature-1 log-softmax
    expected = full_forward_logits(model, ro).log_softmax(-1).gather(2, ro.completion_ids[..., None])[..., 0]
    assert torch.allclose(ro.logprobs, expected, atol=1e-4)


def test_top_k_1_is_greedy_with_logprob_0(model):
    greedy = TorchSampler(TOK).sample(model, prompts(), SamplingParams(max_new_tokens=8, temperature=0))
    top1 = TorchSampler(TOK).sample(model, prompts(), SamplingParams(max_new_tokens=8, temperature=1.0, top_k=1))
    assert torch.equal(top1.completion_ids, greedy.completion_ids)
    assert (top1.logprobs == 0).all()


@pytest.mark.parametrize("name", ["static", "hf"])
def test_top_k_2_logprobs_renormalised_over_the_two_best(model, name):
    ro = SAMPLERS_UNDER_TEST[name]().sample(model, prompts(), SamplingParams(n=3, max_new_tokens=8, top_k=2, seed=0))
    logits = full_forward_logits(model, ro)
    top2 = logits.topk(2, -1)
    assert (top2.indices == ro.completion_ids[..., None]).any(-1).all()
    chosen = logits.gather(2, ro.completion_ids[..., None])[..., 0]
    assert torch.allclose(ro.logprobs, chosen - top2.values.logsumexp(-1), atol=1e-4)


@pytest.mark.parametrize("name", ["static", "hf"])
def test_top_p_and_temperature_logprobs_follow_the_filter(model, name):
    params = SamplingParams(n=3, max_new_tokens=8, temperature=0.7, top_p=0.8, seed=0)
    ro = SAMPLERS_UNDER_TEST[name]().sample(model, prompts(), params)
    N, T, V = (*ro.completion_ids.shape, len(TOK))
    filtered = filter_logits(full_forward_logits(model, ro).reshape(N * T, V), 0.7, 0, 0.8).log_softmax(-1)
    expected = filtered.gather(1, ro.completion_ids.reshape(-1, 1)).reshape(N, T)
    assert torch.allclose(ro.logprobs, expected, atol=1e-4)
    assert (expected > -math.inf).all()  # every sampled token survived the filter


def test_top_p_and_temperature_by_hand():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    # ascending cumulative mass 0.05, 0.2, 0.5, 1.0: top_p=0.7 drops the tokens whose mass is <= 0.3
    kept = filter_logits(logits, 1.0, 0, 0.7).softmax(-1)
    assert torch.allclose(kept, torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
    # top_k=3 then temperature 0.5: probabilities ∝ p², renormalised over the three best
    sharp = filter_logits(logits, 0.5, 3, 1.0).softmax(-1)
    assert torch.allclose(sharp, torch.tensor([[0.25, 0.09, 0.0225, 0.0]]) / 0.3625)


def test_sampled_frequencies_follow_the_filtered_distribution():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log().expand(40000, 4)
    gen = torch.Generator().manual_seed(0)
    tokens, logprobs = sample_tokens(logits, SamplingParams(top_p=0.7), gen)
    freq = torch.bincount(tokens, minlength=4).float() / tokens.numel()
    assert torch.allclose(freq, torch.tensor([0.625, 0.375, 0.0, 0.0]), atol=0.01)
    assert torch.allclose(logprobs, torch.tensor([0.625, 0.375])[tokens].log())


def eos_model(model, token: int):
    """`model` with the (tied) embedding of eos made equal to that of `token`: eos then ties with `token`
    for the argmax and, having the lower id, wins; everything else is unchanged."""
    crafted = tiny_model()
    crafted.load_state_dict(model.state_dict())
    with torch.no_grad():
        crafted.get_input_embeddings().weight[EOS] = crafted.get_input_embeddings().weight[token]
    return crafted


@pytest.mark.parametrize("name", ["static", "dynamic", "static-shrink-always", "dynamic-never-shrink", "hf"])
def test_eos_ends_rows_with_pad_after(model, name):
    plain = greedy_ids(model, 16)
    token = plain[0][3]  # row 0 emits it at step 3 at the latest
    crafted = eos_model(model, token)
    ro = SAMPLERS_UNDER_TEST[name]().sample(crafted, prompts(), SamplingParams(max_new_tokens=16, temperature=0,
                                                                               eos_ids=[EOS]))
    for i, row in enumerate(plain):
        if token in row:
            end = row.index(token)
            pads = [TOK.pad_token_id] * (ro.completion_ids.shape[1] - end - 1)
            assert ro.completion_ids[i].tolist() == [*row[:end], EOS, *pads]
            assert ro.lengths[i] == end + 1 and not ro.truncated[i]
            assert ro.texts[i] == dec(row[:end])  # eos is special: not in the text
        else:
            assert ro.completion_ids[i].tolist() == row and ro.truncated[i] and ro.lengths[i] == 16
    assert ro.lengths[0] <= 4
    assert (ro.logprobs[~ro.completion_mask] == 0).all()


@pytest.mark.parametrize("name", ["static", "dynamic", "hf"])
def test_stop_strings_cut_text_and_mask(model, name):
    plain = greedy_ids(model, 20)
    text0 = dec(plain[0])
    stops = [text0[4:7], "\x00never"]  # a 3-character stop that row 0 completes at its 7th character
    ro = SAMPLERS_UNDER_TEST[name]().sample(model, prompts(), SamplingParams(max_new_tokens=20, temperature=0,
                                                                             stop=stops))
    for i, row in enumerate(plain):
        # linear scan: the first token after which the decoded prefix holds a stop string
        end = next((k for k in range(1, 21) if any(s in dec(row[:k]) for s in stops)), None)
        if end is None:
            assert ro.truncated[i] and ro.lengths[i] == 20 and ro.texts[i] == dec(row)
        else:
            text = dec(row[:end])
            assert not ro.truncated[i] and ro.lengths[i] == end
            assert ro.texts[i] == text[: min(text.find(s) + len(s) for s in stops if s in text)]
            assert ro.completion_ids[i, end:].eq(TOK.pad_token_id).all()
    assert ro.texts[0].endswith(stops[0]) and len(ro.texts[0]) <= 7


def test_cut_at_stop_and_stop_token_index():
    assert cut_at_stop("xx<b>yy<a>", ["<a>", "<b>"]) == ("xx<b>", True)
    ids = TOK.encode("ab</answer>cd")
    assert stop_token_index(TOK.decode, ids, ["</answer>"]) == 2  # </answer> is one token
    assert stop_token_index(TOK.decode, ids, ["r>c"]) == 3  # ends inside the text of token 3, "c"
    assert stop_token_index(TOK.decode, ids, ["zz"]) is None
    assert stop_token_index(TOK.decode, TOK.encode("abcd"), ["bc"]) == 2


def test_stop_table_marks_tokens_that_can_end_a_stop():
    table = TorchSampler(TOK)._stop_table(["<an", "xy"], len(TOK), "cpu")
    ids = TOK.convert_tokens_to_ids(["<answer>", "n", "y", "a", "x", "<code>"])
    assert table[ids].tolist() == [True, True, True, False, False, False]


@pytest.mark.parametrize("name", ["static", "hf"])
def test_same_seed_same_output_and_generator_equals_seed(model, name):
    sampler = SAMPLERS_UNDER_TEST[name]()
    a = sampler.sample(model, prompts(), SamplingParams(n=2, max_new_tokens=10, seed=7))
    b = sampler.sample(model, prompts(), SamplingParams(n=2, max_new_tokens=10, seed=7))
    c = sampler.sample(model, prompts(), SamplingParams(n=2, max_new_tokens=10), torch.Generator().manual_seed(7))
    d = sampler.sample(model, prompts(), SamplingParams(n=2, max_new_tokens=10, seed=8))
    assert torch.equal(a.completion_ids, b.completion_ids) and torch.equal(a.logprobs, b.logprobs)
    assert torch.equal(a.completion_ids, c.completion_ids)
    assert not torch.equal(a.completion_ids, d.completion_ids)


def test_n_samples_are_prompt_major(model):
    ro = TorchSampler(TOK).sample(model, prompts(), SamplingParams(n=3, max_new_tokens=6, seed=0))
    assert ro.completion_ids.shape == (12, 6)
    for i, p in enumerate(prompts()):
        for j in range(3):
            row = ro.prompt_ids[i * 3 + j][ro.prompt_mask[i * 3 + j]].tolist()
            assert row == p
    # the three samples of one prompt are drawn independently
    assert len({tuple(r) for r in ro.completion_ids[:3].tolist()}) > 1


def test_training_mode_restored(model):
    model.train()
    TorchSampler(TOK).sample(model, prompts(), SamplingParams(max_new_tokens=2))
    HFSampler(TOK).sample(model, prompts(), SamplingParams(max_new_tokens=2))
    assert model.training
    model.eval()
    TorchSampler(TOK).sample(model, prompts(), SamplingParams(max_new_tokens=2))
    assert not model.training


@pytest.mark.parametrize("params, field", [
    (SamplingParams(n=0), "n"), (SamplingParams(max_new_tokens=0), "max_new_tokens"),
    (SamplingParams(temperature=-1), "temperature"), (SamplingParams(top_p=0.0), "top_p"),
    (SamplingParams(top_k=-1), "top_k"), (SamplingParams(stop=[""]), "stop"),
    (SamplingParams(eos_ids=[999]), "eos_ids"), (SamplingParams(max_new_tokens=200), "max_new_tokens"),
])
def test_bad_params_raise_naming_the_field(model, params, field):
    with pytest.raises(ValueError, match=field):
        TorchSampler(TOK).sample(model, prompts(), params)


def test_bad_prompts_and_names_raise(model):
    with pytest.raises(ValueError, match=r"prompts\[1\]"):
        TorchSampler(TOK).sample(model, [[5], []], SamplingParams())
    with pytest.raises(ValueError, match="prompts"):
        TorchSampler(TOK).sample(model, [[5, 500]], SamplingParams())
    with pytest.raises(ValueError, match="sampler"):
        build_sampler("vllm", TOK)
    with pytest.raises(ValueError, match="cache"):
        TorchSampler(TOK, cache="paged")
    assert set(SAMPLERS) == {"torch", "hf"} and isinstance(build_sampler("torch", TOK), TorchSampler)



@pytest.mark.parametrize("name", ["static", "dynamic"])
def test_per_prompt_seeds_make_samples_independent_of_the_batch(model, name):
    """With seeds, a prompt's samples are the same whether it is sampled alone or with others (what lets
    several processes each sample a shard of the batch and get the single-process rollouts)."""
    sampler, params = SAMPLERS_UNDER_TEST[name](), SamplingParams(n=3, max_new_tokens=12)
    together = sampler.sample(model, prompts(), params, seeds=[11, 12, 13, 14])
    for i, p in enumerate(prompts()):
        alone = sampler.sample(model, [p], params, seeds=[11 + i])
        rows = slice(3 * i, 3 * i + 3)
        width = alone.completion_ids.shape[1]
        assert torch.equal(together.completion_ids[rows, :width], alone.completion_ids)
        assert together.texts[rows] == alone.texts
        torch.testing.assert_close(together.logprobs[rows, :width], alone.logprobs, atol=1e-4, rtol=0)
    other = sampler.sample(model, prompts(), params, seeds=[21, 12, 13, 14])
    assert not torch.equal(other.completion_ids[:3], together.completion_ids[:3])
    assert torch.equal(other.completion_ids[3:6], together.completion_ids[3:6])
    with pytest.raises(ValueError, match="one per prompt"):
        sampler.sample(model, prompts(), params, seeds=[1])


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_rows_with_equal_prefixes_share_a_cache_row_and_sample_as_if_alone(cache):
    from coldstart.rollout.torch_sampler import uniform_table

    model = tiny_model().eval()
    prompts = [TOK(t).input_ids for t in TEXTS[:2]]
    sampler = TorchSampler(TOK, cache=cache)
    batches = []
    model.register_forward_hook(lambda m, args, kwargs, out: batches.append(kwargs["input_ids"].shape[0]),
                                with_kwargs=True)
    # temperature 0.05 on this sharp model: a group's samples agree for a few tokens, then fork
    params = SamplingParams(n=4, max_new_tokens=12, temperature=0.05, eos_ids=[EOS])
    noise = uniform_table(2, 4, 12, [1, 2], None, "cpu")
    grouped = sampler._generate(model, *left_pad_of(prompts), params, noise)
    decode = batches[1:]
    assert decode[0] == 2 and min(decode) < 8, decode  # the 8 rows start as 2 cache rows, fewer than 8 often
    # every row alone: 8 single-sample prompts with the same uniforms give the same completions
    alone = sampler._generate(model, *left_pad_of([p for p in prompts for _ in range(4)]),
                              SamplingParams(n=1, max_new_tokens=12, temperature=0.05, eos_ids=[EOS]), noise)
    assert torch.equal(grouped[0], alone[0]) and torch.equal(grouped[2], alone[2])
    assert torch.allclose(grouped[1], alone[1], atol=1e-5)
    assert len({tuple(r) for r in grouped[0][:4].tolist()}) > 1  # the first group did fork


def left_pad_of(prompts):
    from coldstart.rollout.base import left_pad

    return left_pad(prompts, TOK.pad_token_id, "cpu")
