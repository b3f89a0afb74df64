"""Row selection and concatenation of `Rollouts` batches (sampled in several rounds, trained in slices)."""

from __future__ import annotations

import torch

from .types import Rollouts


def select_rows(ro: Rollouts, rows: torch.Tensor) -> Rollouts:
    """The rollouts at `rows` ((K,) long indices or (N,) bool mask), trimmed to the widest row kept."""
    if rows.dtype == torch.bool:
        rows = rows.nonzero().flatten()
    idx = rows.tolist()
    pm, cm = ro.prompt_mask[rows], ro.completion_mask[rows]
    # Drop columns that are padding in every kept row: prompts are left-padded, completions right-padded.
    p_keep = int(pm.any(0).long().argmax()) if pm.any() else pm.shape[1]
    t_keep = int(cm.any(0).nonzero().max()) + 1 if cm.any() else 0
    return Rollouts(
        prompt_ids=ro.prompt_ids[rows][:, p_keep:], prompt_mask=pm[:, p_keep:],
        completion_ids=ro.completion_ids[rows][:, :t_keep], completion_mask=cm[:, :t_keep],
        logprobs=ro.logprobs[rows][:, :t_keep], truncated=ro.truncated[rows], texts=[ro.texts[i] for i in idx],
        prefix_mask=None if ro.prefix_mask is None else ro.prefix_mask[rows][:, :t_keep],
    )


def cat_rollouts(parts: list[Rollouts], pad_id: int) -> Rollouts:
    """Stack batches row-wise, re-padding prompts on the left and completions on the right."""
    P = max(r.prompt_ids.shape[1] for r in parts)
    T = max(r.completion_ids.shape[1] for r in parts)

    def left(x, fill):
        return torch.nn.functional.pad(x, (P - x.shape[1], 0), value=fill)

    def right(x, fill):
        return torch.nn.functional.pad(x, (0, T - x.shape[1]), value=fill)

    return Rollouts(
        prompt_ids=torch.cat([left(r.prompt_ids, pad_id) for r in parts]),
        prompt_mask=torch.cat([left(r.prompt_mask, False) for r in parts]),
        completion_ids=torch.cat([right(r.completion_ids, pad_id) for r in parts]),
        completion_mask=torch.cat([right(r.completion_mask, False) for r in parts]),
        logprobs=torch.cat([right(r.logprobs, 0.0) for r in parts]),
        truncated=torch.cat([r.truncated for r in parts]),
        texts=[t for r in parts for t in r.texts],
        prefix_mask=(None if all(r.prefix_mask is None for r in parts) else torch.cat(
            [right(torch.zeros_like(r.completion_mask) if r.prefix_mask is None else r.prefix_mask, False)
             for r in parts])),
    )
