"""The sampler contract: settings, the Sampler protocol, and the helpers both samplers share.

A sampler turns B prompts (token ids) into N = B×n completions (`coldstart.types.Rollouts`), rows
prompt-major: the n samples of prompt i are rows i*n .. i*n+n-1.

Semantics shared by every sampler (see DESIGN.md, "Contracts worth keeping"):
- temperature 0 is greedy (argmax); its logprobs are then the plain temperature-1 log-softmax of the
  logits, since the "distribution sampled from" is a point mass whose log-probs (0) say nothing.
- temperature > 0: logits / temperature, then top-k (0 = off), then top-p (1 = off), in transformers'
  order and with its tie rules; logprobs are those of the renormalised filtered distribution.
- A row ends at its first eos token (kept, masked in) or at the token that completes a stop string
  (masked in; the text is cut right after the stop string, which stays in the text, so a closing tag
  like `</answer>` used as a stop survives for answer extraction). `eos_ids=[]` means no eos stop.
- `truncated` is True where neither happened within max_new_tokens.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch

from ..types import Rollouts


@dataclass
class SamplingParams:
    """How to sample. n: samples per prompt; top_k 0 and top_p 1 disable those filters; seed is used
    when no generator is passed to `Sampler.sample`."""

    n: int = 1
    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop: list[str] = field(default_factory=list)
    eos_ids: list[int] = field(default_factory=list)
    seed: int | None = None


@runtime_checkable
class Sampler(Protocol):
    """Samples completions; `tokenizer` is the one given to its factory."""

    tokenizer: object

    def sample(self, model, prompts: list[list[int]], params: SamplingParams,
               generator: torch.Generator | None = None, seeds: list[int] | None = None) -> Rollouts: ...


def validate(prompts: Sequence[Sequence[int]], params: SamplingParams, vocab_size: int) -> None:
    """Raise ValueError naming the first bad field of `params` or prompt."""
    checks = [
        (params.n >= 1, f"SamplingParams.n must be >= 1, got {params.n}"),
        (params.max_new_tokens >= 1, f"SamplingParams.max_new_tokens must be >= 1, got {params.max_new_tokens}"),
        (params.temperature >= 0, f"SamplingParams.temperature must be >= 0, got {params.temperature}"),
        (0 < params.top_p <= 1, f"SamplingParams.top_p must be in (0, 1], got {params.top_p}"),
        (params.top_k >= 0, f"SamplingParams.top_k must be >= 0, got {params.top_k}"),
        (all(isinstance(s, str) and s for s in params.stop),
         f"SamplingParams.stop must hold non-empty strings, got {params.stop!r}"),
        (all(0 <= i < vocab_size for i in params.eos_ids),
         f"SamplingParams.eos_ids must be token ids in [0, {vocab_size}), got {params.eos_ids}"),
        (len(prompts) > 0, "prompts: empty batch"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompts[{i}] is empty")
        if min(p) < 0 or max(p) >= vocab_size:
            raise ValueError(f"prompts[{i}] holds token ids outside [0, {vocab_size})")


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token id lists: returns ids (B, P) long and mask (B, P) bool (True on real tokens)."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.bool)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
        mask[i, width - len(p):] = True
    return ids.to(device), mask.to(device)


def pad_id_of(tokenizer) -> int:
    """The tokenizer's pad id, else its eos id, else 0."""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """Cut `text` right after the earliest-ending stop string; returns (text, whether one was found).

    >>> cut_at_stop("a</answer>junk", ["</answer>"])
    ('a</answer>', True)
    >>> cut_at_stop("abc", ["x"])
    ('abc', False)
    """
    ends = [text.find(s) + len(s) for s in stops if s in text]
    return (text[: min(ends)], True) if ends else (text, False)


def stop_token_index(decode: Callable[[list[int]], str], ids: list[int], stops: Sequence[str]) -> int | None:
    """Index of the token that completes the first stop string in `ids`, or None (binary search on
    prefix decodes, which only gain text as tokens are added)."""
    if not stops or not cut_at_stop(decode(ids), stops)[1]:
        return None
    lo, hi = 1, len(ids)  # invariant: the prefix ids[:hi] holds a stop string
    while lo < hi:
        mid = (lo + hi) // 2
        if cut_at_stop(decode(ids[:mid]), stops)[1]:
            hi = mid
        else:
            lo = mid + 1
    return hi - 1


def decode_texts(tokenizer, completion_ids: torch.Tensor, lengths: torch.Tensor, stops: Sequence[str]) -> list[str]:
    """Decode each row's first `lengths[i]` tokens (special tokens skipped), cut at a stop string."""
    rows = [ids[:n] for ids, n in zip(completion_ids.tolist(), lengths.tolist())]
    texts = tokenizer.batch_decode(rows, skip_special_tokens=True)
    return [cut_at_stop(t, stops)[0] for t in texts]


def generator_for(params: SamplingParams, generator: torch.Generator | None, device=None) -> torch.Generator | None:
    """The CPU generator to draw from: the one passed, else one seeded with params.seed, else None (global
    RNG). Samplers draw their noise on the CPU and move it, so results do not depend on the device."""
    if generator is not None or params.seed is None:
        return generator
    return torch.Generator().manual_seed(params.seed)


def model_vocab_size(model) -> int:
    """Number of logits the model emits (its output embedding rows)."""
    return int(model.get_output_embeddings().weight.shape[0])


def max_positions(model) -> int | None:
    """The model's position limit from its config, or None when it does not state one."""
    config = model.config
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


def check_length(model, prompt_mask: torch.Tensor, max_new_tokens: int) -> None:
    """Raise ValueError when the longest prompt plus max_new_tokens passes the model's position limit."""
    limit = max_positions(model)
    longest = int(prompt_mask.sum(-1).max())
    if limit is not None and longest + max_new_tokens > limit:
        raise ValueError(f"SamplingParams.max_new_tokens={max_new_tokens} plus the longest prompt ({longest} tokens) "
                         f"exceeds the model's {limit} positions")


def eager(sample: Callable) -> Callable:
    """Run a sampler's `sample` with torch.compile'd modules executing eagerly (`run.compile` compiles the
    decoder blocks for the training passes; decoding through a growing cache would recompile at every new
    shape). A no-op on torch < 2.6, which has no compile stances."""

    @functools.wraps(sample)
    def wrapper(*args, **kwargs):
        stance = getattr(torch.compiler, "set_stance", None)
        with stance("force_eager") if stance is not None else contextlib.nullcontext():
            return sample(*args, **kwargs)

    return wrapper
