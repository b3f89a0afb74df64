"""HFSampler: the sampler contract through transformers' `model.generate`.

For parity tests against `TorchSampler` and as a fallback for models the fast loop cannot drive. It
builds a complete `GenerationConfig` (so no sampling default of the model's own config, such as
top_k=50, leaks in), asks for the processed scores, and takes each sampled token's logprob from the
log-softmax of those scores: after temperature / top-k / top-p, i.e. under the distribution actually
sampled from (greedy: plain logits). Eos and stop strings are enforced by `generate`
(`eos_token_id`, `stop_strings`); the mask and the text are rebuilt afterwards with the rules of
`coldstart.rollout.base`. Seeding: `generate` draws from torch's global RNG, so a seeded call runs
inside `torch.random.fork_rng` with the global RNG seeded from the generator (or params.seed).
"""

from __future__ import annotations

import torch
from transformers import GenerationConfig

from ..types import Rollouts
from .base import (
    SamplingParams,
    check_length,
    decode_texts,
    eager,
    generator_for,
    left_pad,
    model_vocab_size,
    pad_id_of,
    stop_token_index,
    validate,
)


class HFSampler:
    """Sampler through `model.generate(output_scores=True, return_dict_in_generate=True)`."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.pad_id = pad_id_of(tokenizer)

    @eager
    def sample(self, model, prompts: list[list[int]], params: SamplingParams,
               generator: torch.Generator | None = None, seeds: list[int] | None = None) -> Rollouts:
        """Sample params.n completions per prompt; returns Rollouts with N = len(prompts) × n rows.
        `seeds` (one per prompt) seed the whole call here: unlike TorchSampler, generate draws every row
        from one stream, so a prompt's samples depend on the batch it is in."""
        if seeds is not None and generator is None:
            generator = torch.Generator().manual_seed(hash(tuple(int(s) for s in seeds)) % (1 << 62))
        validate(prompts, params, model_vocab_size(model))
        device = next(model.parameters()).device
        prompt_ids, prompt_mask = left_pad(prompts, self.pad_id, device)
        check_length(model, prompt_mask, params.max_new_tokens)
        generator = generator_for(params, generator, device)
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode(), torch.random.fork_rng(devices=_cuda_devices(device)):
                if generator is not None:
                    torch.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
                # rows repeated up front (not num_return_sequences), which greedy generation refuses
                out = model.generate(input_ids=prompt_ids.repeat_interleave(params.n, 0),
                                     attention_mask=prompt_mask.long().repeat_interleave(params.n, 0),
                                     generation_config=self._config(params), tokenizer=self.tokenizer)
        finally:
            model.train(was_training)
        ids = out.sequences[:, prompt_ids.shape[1]:]
        # (N, T, V) processed scores → logprob of each sampled token
        logprobs = torch.stack(out.scores, 1).float().log_softmax(-1).gather(2, ids[..., None])[..., 0]
        lengths, ended = self._lengths(ids, params)
        mask = torch.arange(ids.shape[1], device=device) < lengths[:, None]
        return Rollouts(
            prompt_ids=prompt_ids.repeat_interleave(params.n, 0),
            prompt_mask=prompt_mask.repeat_interleave(params.n, 0),
            completion_ids=ids.masked_fill(~mask, self.pad_id), completion_mask=mask,
            logprobs=logprobs.masked_fill(~mask, 0.0), truncated=~ended,
            texts=decode_texts(self.tokenizer, ids, lengths, params.stop))

    def _config(self, params: SamplingParams) -> GenerationConfig:
        """A full GenerationConfig for `params`; `eos_token_id=[]` (not None) keeps the model's eos out."""
        greedy = params.temperature == 0
        return GenerationConfig(
            max_new_tokens=params.max_new_tokens, min_new_tokens=0, do_sample=not greedy,
            temperature=None if greedy else params.temperature, top_k=None if greedy else params.top_k,
            top_p=None if greedy else params.top_p, num_return_sequences=1, num_beams=1,
            eos_token_id=list(params.eos_ids), pad_token_id=self.pad_id, stop_strings=params.stop or None,
            output_scores=True, return_dict_in_generate=True, repetition_penalty=1.0)

    def _lengths(self, ids: torch.Tensor, params: SamplingParams) -> tuple[torch.Tensor, torch.Tensor]:
        """(N,) tokens kept per row (through the first eos or stop-completing token) and (N,) bool ended."""
        T = ids.shape[1]
        is_eos = torch.isin(ids, torch.tensor(list(params.eos_ids), dtype=torch.long, device=ids.device))
        first_eos = torch.where(is_eos.any(1), is_eos.long().argmax(1), T).tolist()
        decode = lambda row: self.tokenizer.decode(row, skip_special_tokens=True)  # noqa: E731
        lengths, ended = [], []
        for row, eos_at in zip(ids.tolist(), first_eos):
            stop_at = stop_token_index(decode, row[:eos_at], params.stop)
            end = min(eos_at, T if stop_at is None else stop_at)
            lengths.append(min(end + 1, T))
            ended.append(end < T)
        return (torch.tensor(lengths, dtype=torch.long, device=ids.device),
                torch.tensor(ended, dtype=torch.bool, device=ids.device))


def _cuda_devices(device: torch.device) -> list[int]:
    """The CUDA device whose RNG `fork_rng` must save, if the model lives on one."""
    return [device.index or 0] if device.type == "cuda" else []
