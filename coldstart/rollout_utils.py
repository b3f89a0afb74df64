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


def unique_rows(ro: Rollouts, rows: torch.Tensor, mask: torch.Tensor, adv: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of `rows` (K,) that are copies of each other, merged: returns (rows (U,), counts (U,)), the first
    row of each set in order of first appearance and how many rows it stands for.

    Rows are copies when prompt, completion (with its mask and every token the model saw), loss mask (N, T),
    advantages (N, T) and Prefix-RFT prefix mask are equal; the trainer's log-probs, KL and entropy then are
    equal too, so a loss that counts the kept row `counts` times (`policy_loss(weights=...)`) is the loss of
    the K rows. The sampler's log-probs of copies may differ by float rounding (~1e-6: the rows sat at other
    batch positions); the first row's are used. A group whose samples agree (a confident policy) trains once.
    """
    def bits(x: torch.Tensor) -> torch.Tensor:  # exact equality of floats, as integers
        kinds = {2: torch.int16, 4: torch.int32, 8: torch.int64}
        return x.contiguous().view(kinds[x.element_size()]).long()

    parts = [ro.prompt_ids[rows] * ro.prompt_mask[rows], ro.prompt_mask[rows].long(), ro.completion_ids[rows],
             ro.completion_mask[rows].long(), mask[rows].long(), bits(adv[rows])]
    if ro.prefix_mask is not None:
        parts.append(ro.prefix_mask[rows].long())
    _, inverse, counts = torch.unique(torch.cat(parts, 1).cpu(), dim=0, return_inverse=True, return_counts=True)
    first = torch.full((counts.numel(),), len(rows), dtype=torch.long).scatter_reduce(
        0, inverse, torch.arange(len(rows)), "amin")
    order = first.argsort()
    return rows[first[order].to(rows.device)], counts[order]


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
