"""Several processes through accelerate: `accelerate launch --num_processes N -m coldstart <stage> RECIPE`.

coldstart does not run processes itself: `accelerate launch` (or `torchrun`) starts them and sets the
environment, `accelerate.Accelerator` builds the process group (gloo on CPU, NCCL on GPUs) and wraps the
model for the engine its config names (DDP by default; FSDP or DeepSpeed from `recipes/accelerate/*.yaml`).
What coldstart adds is the batch semantics, the same on 1 or N processes:

- SFT: `sft.batch_size` is the global batch. Every rank draws the same batch indices and trains on its
  share (`items[rank::world]`); the loss is normalised by the label tokens of the whole global batch, so
  the summed gradient equals the single-process one.
- RL: `rl.prompts_per_step` is the global prompt batch (a multiple of the process count). Rank r samples
  prompts r·B/N .. (r+1)·B/N−1 of the same global stream, all G completions of a prompt on one rank, so
  group statistics (GRPO, RLOO, filters) need no communication. Each prompt's sampling noise is seeded by
  its position in the stream, so the rollouts do not depend on the process count. Loss normalisers (tokens
  or sequences of a minibatch) are summed over ranks.
- rsft and dpo: each rank samples its contiguous share of the prompts (`Dist.split`, seeded per prompt), and
  the kept completions / pairs are gathered in rank order (`Dist.gather_lists`), so every rank holds the
  single-process data; their global batches are then split like SFT's (`strided_share`).
- Every rank runs the same number of forward/backward passes per optimizer step (DDP and FSDP need that):
  a rank with fewer rows runs zero-weight passes.
- Only rank 0 writes checkpoints, metrics and reports; every rank resumes from the same checkpoint.
  Validation runs on every rank (deterministic, identical weights), so early-stopping decisions agree.
"""

from __future__ import annotations

import contextlib
import os
from functools import cache

import torch


class Dist:
    """The process group of this run: one process (rank 0 of 1) unless launched by accelerate / torchrun."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.accelerator = None
        self.rank = 0
        if self.world > 1:
            from accelerate import Accelerator

            # accelerate picks gloo on CPU only when asked (its launcher's --cpu path wants MPI instead)
            self.accelerator = Accelerator(cpu=not torch.cuda.is_available())
            self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
            kind = str(self.accelerator.distributed_type).rsplit(".", 1)[-1]
            if kind in ("FSDP", "DEEPSPEED", "MEGATRON_LM"):
                raise ValueError(
                    f"accelerate config: distributed_type {kind} is not supported by coldstart yet (its sampler, "
                    "evaluation and rank-0 checkpoints need the whole model on every process; docs/scale-out.md). "
                    "Use DDP (recipes/accelerate/ddp.yaml), with model.lora for models whose optimizer does not fit")

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only one that writes files."""
        return self.rank == 0

    @property
    def device(self) -> torch.device | None:
        """The device accelerate assigned to this rank (None when not launched)."""
        return self.accelerator.device if self.accelerator is not None else None

    def prepare(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
        """Wrap model and optimizer for the configured engine (DDP / FSDP / DeepSpeed); unchanged alone."""
        if self.accelerator is None:
            return model, optimizer
        return self.accelerator.prepare(model, optimizer)

    def unwrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The plain model inside an engine wrapper (for sampling, evaluation and saving)."""
        return self.accelerator.unwrap_model(model) if self.accelerator is not None else model

    def no_sync(self, model: torch.nn.Module, sync: bool):
        """A context that skips the gradient all-reduce of this backward pass unless `sync`."""
        if self.accelerator is None or sync:
            return contextlib.nullcontext()
        return self.accelerator.no_sync(model)

    def clip_grad_norm_(self, params, max_norm: float) -> torch.Tensor:
        """Clip the gradients to a global norm; returns the norm before clipping (a 0-dim tensor)."""
        if self.accelerator is None:
            return torch.nn.utils.clip_grad_norm_(params, max_norm)
        return self.accelerator.clip_grad_norm_(params, max_norm)

    def sum(self, value: float) -> float:
        """The sum of a number over all ranks."""
        return self._reduce(value, torch.distributed.ReduceOp.SUM) if self.world > 1 else value

    def max(self, value: float) -> float:
        """The maximum of a number over all ranks."""
        return self._reduce(value, torch.distributed.ReduceOp.MAX) if self.world > 1 else value

    def _reduce(self, value: float, op) -> float:
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t, op=op)
        return float(t.item())

    def all_reduce_grads(self, params) -> None:
        """Average the gradients of parameters outside the engine's wrapper (e.g. the PPO value head)."""
        if self.world == 1:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            torch.distributed.all_reduce(p.grad)
            p.grad /= self.world

    def gather_objects(self, obj) -> list:
        """A picklable object from every rank, in rank order."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def gather_lists(self, items: list) -> list:
        """Every rank's list of picklable items, concatenated in rank order (the same list on every rank)."""
        return [x for part in self.gather_objects(list(items)) for x in part]

    def split(self, n: int) -> slice:
        """This rank's contiguous share of n items, which need not divide evenly (`contiguous_share`)."""
        return contiguous_share(n, self.rank, self.world)

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        if self.world > 1:
            torch.distributed.barrier()

    def shard(self, n: int, what: str) -> slice:
        """This rank's contiguous share of n items (n must divide evenly; `what` names the recipe key)."""
        if n % self.world:
            raise ValueError(f"{what}={n} must be a multiple of the number of processes ({self.world})")
        size = n // self.world
        return slice(self.rank * size, (self.rank + 1) * size)

    def check_in_sync(self, model: torch.nn.Module, step: int) -> float:
        """A float64 checksum of the trainable weights; raises when the ranks disagree (they never should)."""
        total = sum(float(p.detach().double().sum()) for p in model.parameters() if p.requires_grad)
        if self.world > 1:
            sums = self.gather_objects(total)
            if len(set(sums)) > 1:
                raise RuntimeError(f"step {step}: the ranks' weights diverged (checksums {sums})")
        return total


def contiguous_share(n: int, rank: int, world: int) -> slice:
    """Rank `rank`'s contiguous part of n items split as evenly as possible over `world` ranks (the first
    n % world ranks get one more); the parts in rank order cover 0 .. n-1 once, so results gathered in rank
    order come out in the single-process order.

    >>> [contiguous_share(5, r, 2) for r in range(2)], contiguous_share(1, 1, 2)
    ([slice(0, 3, None), slice(3, 5, None)], slice(1, 1, None))
    """
    size, extra = divmod(n, world)
    start = rank * size + min(rank, extra)
    return slice(start, start + size + (rank < extra))


def strided_share(batch: list, rank: int, world: int) -> tuple[list, float]:
    """This rank's items of a global batch, batch[rank::world], and their weight 1.0; a rank left without
    any gets the first item with weight 0.0 (a zero-weight pass: under DDP every rank must run the same
    forward / backward passes).

    >>> strided_share([7, 8, 9], 1, 2), strided_share([7], 1, 2)
    (([8], 1.0), ([7], 0.0))
    """
    mine = batch[rank::world]
    return (mine, 1.0) if mine else (batch[:1], 0.0)


SUMMED = ("rows/", "reward/errors", "optimizer_steps", "groups/duplicated", "tokens")


def merge_rows(rows: list[dict]) -> dict:
    """One metrics row from every rank's: counts (`SUMMED` prefixes) add up, `*/max` takes the maximum,
    other numbers are averaged over the ranks that have them; anything else comes from rank 0."""
    out = dict(rows[0])
    for key, value in rows[0].items():
        values = [r.get(key) for r in rows]
        if isinstance(value, bool) or not all(isinstance(v, int | float) for v in values):
            continue
        if key.startswith(SUMMED):
            out[key] = sum(values)
        elif key.endswith("/max"):
            out[key] = max(values)
        elif key not in ("step", "lr", "temperature") and not key.startswith(("time/", "eval/")):
            out[key] = sum(values) / len(values)
    return out


@cache
def current() -> Dist:
    """The process group, created once per process (the first call builds accelerate's state)."""
    return Dist()
