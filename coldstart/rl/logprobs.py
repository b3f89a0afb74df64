"""Trainer-side log-probs of sampled completions, with each distinct prompt run once (shared-prefix training).

An RL batch holds G completions of every prompt. Running the model on prompt + completion for every row
computes each prompt G times, with gradient. `sequence_logprobs` instead runs the U distinct prompts once
(one forward pass with a KV cache), expands that cache to the N rows (`index_select`, which autograd
differentiates), and runs only the completions on top of it; the backward pass sends every row's gradient
through the shared prompt activations, so the gradient is the one of the full forward pass (it only sums in
another order). With prompts about as long as completions and G = 8 this does ~45% fewer FLOPs per forward
and backward; the sampler does the same for its prefill. `bench/hotpath.py` measures it.

It is used when it applies and is checked: rows share a prompt, no value head (its hidden states are not
taken through the cache), the model is not inside an engine wrapper (DDP hooks and FSDP's collective forward
passes expect one forward per backward), its blocks are not torch.compile'd (`run.compile`: a cache object
through compiled blocks recompiles at every cache state; the compiled full pass is the faster one), and the
model gives the same log-probs both ways on a small probe, checked once per model (other architectures or
caches that do not support it fall back to the full pass).
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from ..algorithms import token_entropy, token_logprobs
from ..rollout.torch_sampler import cached_forward
from ..types import Rollouts

_PROBE_TOL = {torch.float32: 1e-3, torch.float64: 1e-6}  # other dtypes (bf16, fp16): 5e-2


def sequence_logprobs(model, ro: Rollouts, temperature: float, value_head=None, need_entropy: bool = False,
                      shared: bool | None = None):
    """Trainer-side log-probs of the completion tokens of `ro` (prompt_ids (N, P), completion_ids (N, T)).

    Returns logp (N, T), entropy (N, T) or None, values (N, T) or None (value head on the last hidden state).
    `shared` forces (True) or forbids (False) the shared-prefix pass; None decides (see the module docstring).
    """
    P, T = ro.prompt_ids.shape[1], ro.completion_ids.shape[1]
    groups = None
    if shared is not False and value_head is None and T > 1:
        groups = prompt_groups(ro.prompt_ids, ro.prompt_mask)
        if groups[0].shape[0] == ro.prompt_ids.shape[0] or (shared is None and not shared_prefix_ok(model)):
            groups = None
    if groups is not None:
        logits = _shared_prefix_logits(model, ro, *groups)
    else:
        ids = torch.cat([ro.prompt_ids, ro.completion_ids], 1)
        # Every completion position is attended: multi-turn observation tokens (completion_mask False) were
        # seen by the sampler; right padding comes after every real token, so causality already hides it.
        mask = torch.cat([ro.prompt_mask, torch.ones_like(ro.completion_mask)], 1).long()
        pos = (mask.cumsum(1) - 1).clamp(min=0)
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False,
                    output_hidden_states=value_head is not None)
        logits = out.logits[:, P - 1 : P + T - 1]
        if value_head is not None:
            values = value_head(out.hidden_states[-1][:, P - 1 : P + T - 1].float()).squeeze(-1)
    logits = logits.float() / max(temperature, 1e-5)
    logp = token_logprobs(logits, ro.completion_ids)
    ent = token_entropy(logits) if need_entropy else None
    return logp, ent, values if value_head is not None else None


def prompt_groups(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct prompts of a batch: (first row of each of the U distinct prompts (U,), the index of each
    row's prompt among them (N,)). Prompts are equal when their unpadded tokens are.

    >>> ids = torch.tensor([[0, 5, 6], [0, 5, 6], [7, 8, 9], [0, 5, 6]])
    >>> prompt_groups(ids, ids != 0)
    (tensor([0, 2]), tensor([0, 0, 1, 0]))
    """
    key = torch.where(prompt_mask.bool(), prompt_ids, -1)
    _, inverse = torch.unique(key, dim=0, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), key.shape[0], dtype=torch.long, device=key.device)
    first.scatter_reduce_(0, inverse, torch.arange(key.shape[0], device=key.device), reduce="amin")
    order = torch.argsort(first)  # number the groups by first appearance
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.shape[0], device=order.device)
    return first[order], rank[inverse]


def _shared_prefix_logits(model, ro: Rollouts, first: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """(N, T, V) logits of the completion positions: the U distinct prompts (rows `first`) run once, their
    cache expanded to the N rows by `inverse`, then the completions on top."""
    P, T = ro.prompt_ids.shape[1], ro.completion_ids.shape[1]
    p_ids, p_mask = ro.prompt_ids[first], ro.prompt_mask[first].long()
    p_pos = (p_mask.cumsum(1) - 1).clamp(min=0)
    cache = DynamicCache(config=getattr(model, "config", None))
    last = cached_forward(model, p_ids, p_mask, p_pos, cache, last_only=True)[:, -1:]
    cache.reorder_cache(inverse)
    mask = torch.cat([ro.prompt_mask, torch.ones_like(ro.completion_mask)], 1).long()
    pos = (mask.cumsum(1) - 1).clamp(min=0)[:, P : P + T - 1]
    rest = cached_forward(model, ro.completion_ids[:, : T - 1], mask[:, : P + T - 1], pos, cache, last_only=False)
    return torch.cat([last[inverse], rest], 1)


def shared_prefix_ok(model) -> bool:
    """Whether the shared-prefix pass applies to `model` and matches the full pass on a probe (2 prompts ×
    2 completions of random tokens, no gradient); checked once per model object and remembered on it."""
    from torch.nn.parallel import DistributedDataParallel

    from ..infra.distributed import is_sharded

    if isinstance(model, DistributedDataParallel) or is_sharded(model):
        return False
    if getattr(model, "coldstart_compiled", False):  # run.compile: the compiled full pass instead
        return False
    known = getattr(model, "_coldstart_shared_prefix", None)
    if known is not None:
        return known
    ok = False
    try:
        param = next(model.parameters())
        vocab = int(model.get_output_embeddings().weight.shape[0])
        gen = torch.Generator().manual_seed(0)
        prompts = torch.randint(1, vocab, (2, 5), generator=gen).to(param.device)
        pm = torch.ones_like(prompts, dtype=torch.bool)
        pm[1, :2] = False  # one left-padded prompt
        comp = torch.randint(1, vocab, (4, 4), generator=gen).to(param.device)
        ro = Rollouts(prompt_ids=prompts.repeat_interleave(2, 0), prompt_mask=pm.repeat_interleave(2, 0),
                      completion_ids=comp, completion_mask=torch.ones_like(comp, dtype=torch.bool),
                      logprobs=torch.zeros(comp.shape, device=param.device),
                      truncated=torch.zeros(4, dtype=torch.bool, device=param.device), texts=[""] * 4)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                full = sequence_logprobs(model, ro, 1.0, shared=False)[0]
                part = sequence_logprobs(model, ro, 1.0, shared=True)[0]
        finally:
            model.train(was_training)
        ok = bool((full - part).abs().max() <= _PROBE_TOL.get(param.dtype, 5e-2))
    except Exception:  # any model or cache that cannot run it takes the full pass  # noqa: BLE001
        ok = False
    try:
        model._coldstart_shared_prefix = ok
    except AttributeError:
        pass
    return ok
