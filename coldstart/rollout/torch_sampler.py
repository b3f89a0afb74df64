"""TorchSampler: batched autoregressive sampling with the model's own KV cache, in plain torch.

The RL hot path. It runs any Hugging Face causal LM (Qwen2, Llama, GPT-2, ...) through its forward
pass and a transformers cache, and differs from `model.generate` in what it skips:

1. Prefill once per prompt: the B distinct prompts are prefilled (left-padded, with an attention mask
   and position ids counted from each prompt's first real token), then the cache is repeated to the
   N = B×n rows (`Cache.reorder_cache`), so a group of n samples costs one prefill, not n.
2. One token per step for every live row, through preallocated buffers; no logits processors,
   stopping-criteria objects or per-step score tuples.
3. Rows whose tokens so far are equal share one cache row: a group of n samples starts as its prompt's
   one cache row and forks (`Cache.reorder_cache` copies the row) only where its samples draw different
   tokens, so a confident policy, whose samples agree, decodes a group about once. Each row still samples
   from its cache row's logits with its own uniform: the completions are those of decoding it alone.
   Finished rows stop costing compute: their cache rows are dropped at the next fork, or once at most
   `shrink` of the cache rows are live. The loop exits when every row has finished.
4. Sampling draws one uniform per row and inverts the CDF of the filtered distribution, which has the
   same law as `torch.multinomial` but costs N random numbers instead of N×V.
5. Stop strings are only checked on rows whose new token could end one (its text holds the last
   character of a stop string), by decoding that row; eos is a table lookup.

The cache is a `DynamicCache` by default (grows by concatenation, so attention and copies scale with
the tokens actually generated) or a `StaticCache` (`cache="static"`: preallocated for prompt +
max_new_tokens and written in place, but every step attends over the whole preallocation).
`bench/sampler.py` measures both against `generate` (tiny model, 2 CPU threads, batch 128, 64 new
tokens, quiet machine): when every row runs the full budget the model's own forward pass is ~90% of
`generate`'s time too, so the loop gains only ~1.1× (dynamic) to ~1.2× (static), short of the 2×
we aimed at; on an RL-like load (16 prompts × 8 samples, eos ending rows at varied lengths) the
shared prefill and the shrinking batch give ~2.2-2.8× (dynamic) and ~2.0-2.3× (static).
Sampling semantics (temperature 0 = greedy, top-k/top-p order and ties, stop strings, logprobs) are
those documented in `coldstart.rollout.base`. The model is put in eval mode and inference mode for
the call and its training flag restored afterwards.

A model sharded by FSDP2 (`coldstart.infra.distributed.is_sharded`) gathers its weights from every rank in each
forward pass, so every rank must make the same passes while each rank's rows end at their own lengths.
For such a model the loop goes on until every rank's rows have ended (one all-reduce of a "done" flag per
step; a rank whose rows have all ended keeps decoding them and discards the tokens) and runs under
`no_grad` (FSDP2 cannot reuse weights gathered under inference mode for training). The outputs are those
of the unsharded loop; other models take exactly the unsharded path.
"""

from __future__ import annotations

import inspect

import torch
from transformers import DynamicCache, StaticCache

from ..infra.distributed import current, is_sharded
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
    validate,
)

CACHES = ("dynamic", "static")


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Temperature, then top-k, then top-p on (A, V) float logits; filtered entries become -inf.

    Same rules as transformers' warpers: top-k keeps every token tied with the k-th, top-p keeps the
    smallest top set whose mass exceeds 1 - top_p counted from the bottom, and always one token.
    """
    if temperature != 1.0:
        logits = logits / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1)  # ascending
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cum <= 1 - top_p
        drop_sorted[:, -1] = False
        logits = logits.masked_fill(drop_sorted.scatter(1, order, drop_sorted), float("-inf"))
    return logits


def sample_tokens(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None,
                  u: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row from (A, V) logits; returns tokens (A,) long and their logprobs (A,) float
    under the filtered, renormalised distribution (greedy: argmax, plain log-softmax). `u` (A,) holds the
    rows' uniform draws in [0, 1); without it they come from `generator`."""
    logits = logits.float()
    if params.temperature == 0:
        tokens = logits.argmax(-1)
        return tokens, logits.log_softmax(-1).gather(1, tokens[:, None])[:, 0]
    probs = filter_logits(logits, params.temperature, params.top_k, params.top_p).softmax(-1)
    cdf = probs.cumsum(-1)
    # u < total mass, so the search never runs off the end; a zero-probability token has cdf equal to
    # its predecessor's and can never be the first entry above u.
    if u is None:
        u = torch.rand(cdf.shape[0], generator=generator, device=cdf.device)
    u = u[:, None] * cdf[:, -1:]
    tokens = torch.searchsorted(cdf, u, right=True)[:, 0].clamp_(max=cdf.shape[1] - 1)
    # log of the sampled token's probability: never tiny enough to lose float32 precision in practice
    return tokens, probs.gather(1, tokens[:, None])[:, 0].log()


class TorchSampler:
    """Fast batched sampler (see module doc). `cache`: "dynamic" or "static"; `shrink`: drop finished rows
    from the batch once the live fraction falls to this value or below (0 never drops; 0.9 measured
    best on the bench's RL-like workload, 0.5-1.0 all within ~20%; never dropping was ~2x slower)."""

    def __init__(self, tokenizer, cache: str = "dynamic", shrink: float = 0.9):
        if cache not in CACHES:
            raise ValueError(f"TorchSampler cache: unknown {cache!r}; choose from {CACHES}")
        if not 0 <= shrink <= 1:
            raise ValueError(f"TorchSampler shrink must be in [0, 1], got {shrink}")
        self.tokenizer, self.cache, self.shrink = tokenizer, cache, shrink
        self.pad_id = pad_id_of(tokenizer)
        self._stop_tables: dict[tuple[tuple[str, ...], int], torch.Tensor] = {}

    @eager
    def sample(self, model, prompts: list[list[int]], params: SamplingParams,
               generator: torch.Generator | None = None, seeds: list[int] | None = None) -> Rollouts:
        """Sample params.n completions per prompt; returns Rollouts with N = len(prompts) × n rows.

        The randomness is a (N, max_new_tokens) table of uniforms drawn up front: from `seeds` (one per
        prompt, so a prompt's samples do not depend on which other prompts share the batch, the batch size
        or the process that samples it), else from `generator` / params.seed / the global RNG."""
        vocab = model_vocab_size(model)
        validate(prompts, params, vocab)
        device = next(model.parameters()).device
        prompt_ids, prompt_mask = left_pad(prompts, self.pad_id, device)
        check_length(model, prompt_mask, params.max_new_tokens)
        noise = uniform_table(len(prompts), params.n, params.max_new_tokens, seeds,
                              generator_for(params, generator, device), device)
        was_training = model.training
        model.eval()
        sharded = is_sharded(model)
        try:
            with torch.no_grad() if sharded else torch.inference_mode():
                ids, logprobs, lengths, ended = self._generate(model, prompt_ids, prompt_mask, params, noise,
                                                               sharded)
        finally:
            model.train(was_training)
        # clones leave inference mode: the trainer may save these for backward or edit them in place
        ids, logprobs, lengths, ended = (t.clone() for t in (ids, logprobs, lengths, ended))
        n = params.n
        return Rollouts(
            prompt_ids=prompt_ids.repeat_interleave(n, 0), prompt_mask=prompt_mask.repeat_interleave(n, 0),
            completion_ids=ids, completion_mask=torch.arange(ids.shape[1], device=device) < lengths[:, None],
            logprobs=logprobs, truncated=~ended, texts=decode_texts(self.tokenizer, ids, lengths, params.stop))

    def _generate(self, model, prompt_ids, prompt_mask, params, noise, sharded: bool = False):
        """Prefill, decode, assemble; noise (N, T) holds each row's uniform draws. Returns completion ids
        (N, T), logprobs (N, T), lengths (N,) and ended (N,) bool (eos or stop produced), with pad / 0 past
        each row's length. `sharded`: the model is FSDP-sharded, decode until every rank is done.

        Rows whose tokens so far are equal share one cache row (a "slot"): the B prompts are prefilled
        into B slots, and after each step the live rows' (slot, token) pairs name the next step's slots.
        Rows that drew different tokens fork their slot (the cache row is copied, `reorder_cache`); rows
        that drew the same one go on sharing it, so a group whose samples agree is decoded once. Each row
        still samples from its slot's logits with its own uniform: the outputs are those of decoding every
        row alone. A slot whose rows have all ended is dropped at the next fork, or once at most `shrink`
        of the slots are live; until then it is fed padding and its logits are ignored."""
        n, T = params.n, params.max_new_tokens
        B, P = prompt_ids.shape
        N, device = B * n, prompt_ids.device
        cache = self._new_cache(model, P + T)
        pos = (prompt_mask.long().cumsum(-1) - 1).clamp_(min=0)
        logits = cached_forward(model, prompt_ids, prompt_mask.long(), pos, cache, last_only=True)[:, -1]
        vocab = logits.shape[-1]
        mask = torch.cat([prompt_mask.long(), torch.ones((B, T), dtype=torch.long, device=device)], 1)
        first_pos = pos[:, -1:] + 1  # (B, 1) position of each prompt's first new token
        slot_prompt = torch.arange(B, device=device)  # (S,) the prompt of each cache row
        row_slot = torch.arange(B, device=device).repeat_interleave(n)  # (N,) the cache row of each row
        live = torch.arange(N, device=device)  # rows still decoding
        ids = torch.full((N, T), self.pad_id, dtype=torch.long, device=device)
        logprobs = torch.zeros((N, T), device=device)
        lengths = torch.full((N,), T, dtype=torch.long, device=device)
        ended = torch.zeros(N, dtype=torch.bool, device=device)
        is_eos = torch.zeros(model_vocab_size(model), dtype=torch.bool, device=device)
        is_eos[list(params.eos_ids)] = True
        may_stop = self._stop_table(params.stop, is_eos.shape[0], device) if params.stop else None
        steps = T
        for t in range(T):
            tokens = live.new_empty(0)
            if live.numel():
                tokens, lp = sample_tokens(logits[row_slot[live]], params, None, noise[live, t])
                ids[live, t], logprobs[live, t] = tokens, lp
                finished = self._finished(ids, live, tokens, t, is_eos, may_stop, params.stop)
                if finished.any():
                    lengths[live[finished]] = t + 1
                    ended[live[finished]] = True
                    live, tokens = live[~finished], tokens[~finished]
            if not live.numel():
                steps = min(steps, t + 1)  # the columns any row wrote
                if not sharded:  # sharded: decode the slots (tokens discarded) until every rank is done
                    break
            if t == T - 1 or (sharded and current().all_done(not live.numel(), device)):
                break
            if live.numel():
                feed, parents = self._next_slots(cache, live, tokens, row_slot, slot_prompt.numel(), vocab)
            else:  # sharded, every row ended: keep the slots in step with the other ranks
                feed, parents = torch.full_like(slot_prompt, self.pad_id), None
            if parents is not None:  # the cache was reordered
                slot_prompt = slot_prompt[parents]
            mask_now = mask[slot_prompt] if self.cache == "static" else mask[slot_prompt, : P + t + 1]
            logits = cached_forward(model, feed[:, None], mask_now, first_pos[slot_prompt] + t, cache,
                                    last_only=False)[:, -1]
        ids, logprobs = ids[:, :steps], logprobs[:, :steps]
        lengths = lengths.clamp(max=steps)
        keep = torch.arange(steps, device=device) < lengths[:, None]
        return ids.masked_fill(~keep, self.pad_id), logprobs.masked_fill(~keep, 0.0), lengths, ended

    def _next_slots(self, cache, live, tokens, row_slot, slots: int, vocab: int
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(the token to feed each cache row next (S',), the old slot of each new one (S',) or None when the
        cache kept its rows). Reorders the cache, and `row_slot` of the live rows, when a slot forks or
        enough slots have ended."""
        key = row_slot[live] * vocab + tokens
        pairs, inverse = torch.unique(key, return_inverse=True)  # sorted: pairs of one slot are adjacent
        parents, feed = pairs // vocab, pairs % vocab
        forks = bool((parents[1:] == parents[:-1]).any()) if parents.numel() > 1 else False
        identity = not forks and parents.numel() == slots
        if not identity and (forks or parents.numel() <= self.shrink * slots):
            cache.reorder_cache(parents)
            row_slot[live] = inverse
            return feed, parents
        full = torch.full((slots,), self.pad_id, dtype=torch.long, device=feed.device)
        full[parents] = feed  # every live slot goes on unforked; ended ones are fed padding
        return full, None

    def _finished(self, ids, live, tokens, t: int, is_eos, may_stop, stops) -> torch.Tensor:
        """(A,) bool: which live rows end at step t (their first eos, or a completed stop string)."""
        finished = is_eos[tokens]
        if may_stop is not None:
            candidates = (may_stop[tokens] & ~finished).nonzero()[:, 0].tolist()
            if candidates:
                rows = live[candidates]
                texts = self.tokenizer.batch_decode(ids[rows, : t + 1].tolist(), skip_special_tokens=True)
                for row, text in zip(candidates, texts):
                    finished[row] = any(s in text for s in stops)
        return finished

    def _new_cache(self, model, max_len: int):
        """A fresh transformers cache for this model: StaticCache of max_len tokens, or DynamicCache."""
        if self.cache == "static":
            return StaticCache(config=model.config, max_cache_len=max_len)
        return DynamicCache(config=model.config)

    def _stop_table(self, stops: list[str], vocab: int, device) -> torch.Tensor:
        """(V,) bool: tokens whose text could end a stop string (holds a stop's last character, or decodes to
        a partial character). Computed once per stop list and vocabulary size."""
        key = (tuple(stops), vocab)
        if key not in self._stop_tables:
            size = min(vocab, len(self.tokenizer))
            pieces = self.tokenizer.batch_decode([[i] for i in range(size)], skip_special_tokens=True)
            lasts = {s[-1] for s in stops}
            table = torch.zeros(vocab, dtype=torch.bool)
            table[:size] = torch.tensor([any(c in p for c in lasts) or "\ufffd" in p for p in pieces])
            self._stop_tables[key] = table
        return self._stop_tables[key].to(device)


def uniform_table(B: int, n: int, T: int, seeds: list[int] | None, generator: torch.Generator | None,
                  device) -> torch.Tensor:
    """(B·n, T) uniforms in [0, 1), rows prompt-major: with `seeds` (B,) prompt i's n rows come from a
    generator seeded with seeds[i]; else the whole table comes from `generator` (None: the global RNG)."""
    if seeds is None:
        return torch.rand((B * n, T), generator=generator).to(device)
    if len(seeds) != B:
        raise ValueError(f"seeds: need one per prompt ({B}), got {len(seeds)}")
    gens = [torch.Generator().manual_seed(int(s) % (1 << 63)) for s in seeds]
    return torch.cat([torch.rand((n, T), generator=g) for g in gens]).to(device)


_FORWARD_KW: dict[type, tuple[str, bool]] = {}


def cached_forward(model, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, cache,
                   last_only: bool) -> torch.Tensor:
    """One forward pass through `cache`: ids (A, S), mask (A, L), pos (A, S) → logits (A, S', V), S' = 1
    when last_only and the model supports `logits_to_keep`, else S. Also the trainer's shared-prefix pass
    (coldstart.rl.logprobs), which keeps the autograd graph through the cache."""
    kind = type(model)
    if kind not in _FORWARD_KW:
        names = inspect.signature(model.forward).parameters
        # transformers 5 renames past_key_values to cache; accept both.
        _FORWARD_KW[kind] = ("cache" if "cache" in names else "past_key_values", "logits_to_keep" in names)
    cache_kw, keep_kw = _FORWARD_KW[kind]
    extra = {"logits_to_keep": 1} if last_only and keep_kw else {}
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **{cache_kw: cache}, **extra)
    return out.logits
