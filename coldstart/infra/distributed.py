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
- FSDP (accelerate's plugin, FSDP2; the sft and rl stages): weights, gradients and optimizer state are
  sharded, and every forward pass gathers weights from all ranks, so the sampler decodes until every rank
  is done (`all_done`), checkpoints hold the gathered full states rank 0 writes (`full_state`), and the
  optimizer state is loaded after sharding (`prepare`). What FSDP refuses: `fsdp_refusals`, docs/scale-out.md.
"""

from __future__ import annotations

import contextlib
import os
from functools import cache

import torch
from torch.distributed.tensor import DTensor


class Dist:
    """The process group of this run: one process (rank 0 of 1) unless launched by accelerate / torchrun.
    `sharded` is True under accelerate's FSDP plugin (FSDP2): each rank then holds a shard of every weight."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.accelerator = None
        self.rank = 0
        self.sharded = False
        if self.world > 1:
            from accelerate import Accelerator

            # accelerate picks gloo on CPU only when asked (its launcher's --cpu path wants MPI instead)
            self.accelerator = Accelerator(cpu=not torch.cuda.is_available())
            self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
            kind = str(self.accelerator.distributed_type).rsplit(".", 1)[-1]
            if kind == "MULTI_CPU" and _env_flag("ACCELERATE_USE_DEEPSPEED"):
                kind = "DEEPSPEED"  # accelerate drops DeepSpeed on CPU silently; say so instead of running DDP
            if kind == "MULTI_CPU" and _env_flag("ACCELERATE_USE_FSDP"):
                kind = _fsdp_on_cpu(self.accelerator)
            if kind in ("DEEPSPEED", "MEGATRON_LM"):
                raise ValueError(
                    f"accelerate config: distributed_type {kind} is not supported by coldstart (DeepSpeed is not "
                    "installed or tested here; its partitioned optimizer needs its own checkpoint calls; "
                    "docs/scale-out.md). Use FSDP (recipes/accelerate/fsdp.yaml) or DDP (recipes/accelerate/ddp.yaml)")
            if kind == "FSDP":
                check_fsdp_plugin(self.accelerator.state.fsdp_plugin)
                self.sharded = True

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only one that writes files."""
        return self.rank == 0

    @property
    def device(self) -> torch.device | None:
        """The device accelerate assigned to this rank (None when not launched)."""
        return self.accelerator.device if self.accelerator is not None else None

    def prepare(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, ckpt=None, recipe=None,
                stage: str = ""):
        """Wrap model and optimizer for the configured engine (DDP / FSDP); unchanged alone.

        Under FSDP the model is sharded in place (`model` itself then gathers its weights in every forward
        pass, so every rank must run the same passes), `stage` ("sft" or "rl") and `recipe` must be given and
        pass `fsdp_refusals`, and the optimizer state of checkpoint `ckpt` is loaded here, into the shards
        (accelerate swaps the optimizer's parameters for the sharded ones, dropping any state loaded before)."""
        if self.accelerator is None:
            return model, optimizer
        if not self.sharded:
            return self.accelerator.prepare(model, optimizer)
        refusals = fsdp_refusals(recipe, stage)
        if refusals:
            raise ValueError("under FSDP (accelerate's fsdp_config): " + "; ".join(refusals)
                             + ". Use DDP for these (recipes/accelerate/ddp.yaml; docs/scale-out.md)")
        from .runtime import console

        model, optimizer = self.accelerator.prepare(model, optimizer)
        console.print(f"{stage}: FSDP2 shards weights, gradients and optimizer state over {self.world} processes")
        _inner(optimizer).state.clear()  # state keyed by the unsharded parameters, if a checkpoint was loaded
        if ckpt is not None:
            from .checkpoint import read_optimizer_state

            saved = read_optimizer_state(ckpt)
            if saved is not None:
                self.load_full_optimizer_state(model, optimizer, saved)
        return model, optimizer

    def unwrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The plain model inside an engine wrapper (for sampling, evaluation and saving)."""
        return self.accelerator.unwrap_model(model) if self.accelerator is not None else model

    def no_sync(self, model: torch.nn.Module, sync: bool):
        """A context that skips the gradient all-reduce of this backward pass unless `sync`."""
        if self.accelerator is None or sync:
            return contextlib.nullcontext()
        return self.accelerator.no_sync(model)

    def clip_grad_norm_(self, params, max_norm: float) -> torch.Tensor:
        """Clip the gradients to a global norm; returns the norm before clipping (a 0-dim tensor; under FSDP
        the norm over every rank's gradient shards)."""
        if self.accelerator is None:
            return torch.nn.utils.clip_grad_norm_(params, max_norm)
        norm = self.accelerator.clip_grad_norm_(params, max_norm)
        return norm.full_tensor() if isinstance(norm, DTensor) else norm

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
        """A float64 checksum of the trainable weights; raises when the ranks disagree (they never should).
        Under FSDP each weight element lives on one rank: the checksum is the sum of the shards' sums over
        the ranks (the same number on every rank by construction), so only unsharded weights are compared."""
        params = [p for p in model.parameters() if p.requires_grad]
        shards = [p for p in params if isinstance(p, DTensor)]
        total = sum(float(p.detach().double().sum()) for p in params if not isinstance(p, DTensor))
        if self.world > 1:
            sums = self.gather_objects(total)
            if len(set(sums)) > 1:
                raise RuntimeError(f"step {step}: the ranks' weights diverged (checksums {sums})")
        if self.sharded:
            total += self.sum(sum(float(p.to_local().detach().double().sum()) for p in shards))
        return total

    def full_state(self, model: torch.nn.Module, optimizer=None) -> tuple[dict | None, dict | None]:
        """Under FSDP, gather the full weights {name: tensor} (on the CPU) and the optimizer state in
        `torch.optim.Optimizer.state_dict()`'s format (parameters by index, full tensors), so a checkpoint
        is the one a single process writes. Every rank must call it; rank 0 gets them, others (None, None)."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        weights = get_model_state_dict(model, options=options)
        # a tied weight (lm_head = embed_tokens) is saved once, under its first name, as save_pretrained does
        first = {name for name, _ in model.named_parameters()}
        for name, _ in model.named_parameters(remove_duplicate=False):
            if name not in first:
                weights.pop(name, None)
        optim = None
        if optimizer is not None:
            full = get_optimizer_state_dict(model, _inner(optimizer), options=options)
            optim = _by_index(full, model, _inner(optimizer)) if self.is_main else None
        return (weights, optim) if self.is_main else (None, None)

    def load_full_optimizer_state(self, model: torch.nn.Module, optimizer, saved: dict) -> None:
        """Load an optimizer state in `state_dict()` format (full tensors, as `full_state` or one process saves
        it) into the optimizer of an FSDP-sharded model: each rank keeps its shard. Every rank reads the file."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        inner = _inner(optimizer)
        names, order = _param_names(model, inner)
        by_name = {"state": {names[i]: saved["state"][i] for i in range(len(order)) if i in saved["state"]},
                   "param_groups": [{**{k: v for k, v in sg.items() if k != "params"},
                                     "params": [names[i] for i in sg["params"]]} for sg in saved["param_groups"]]}
        set_optimizer_state_dict(model, inner, by_name, options=StateDictOptions(full_state_dict=True))

    def all_done(self, done: bool, device=None) -> bool:
        """True when `done` holds on every rank (one all-reduce; used by the sampler under FSDP)."""
        flag = torch.tensor([0 if done else 1], dtype=torch.int32, device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return int(flag.item()) == 0


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() == "true"


def _fsdp_on_cpu(accelerator) -> str:
    """Turn accelerate's FSDP plugin on for CPU processes (gloo) and return "FSDP".

    accelerate enables FSDP only for accelerator devices and otherwise falls back to plain data parallel
    without a word, although its FSDP2 path (`fully_shard`) runs on CPU with gloo. coldstart sets the state
    the launcher asked for (`ACCELERATE_USE_FSDP` and the `FSDP_*` variables of the config file), so the
    CPU test exercises the same accelerate code as GPUs do."""
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    accelerator.state.fsdp_plugin = FullyShardedDataParallelPlugin()  # reads the FSDP_* environment
    accelerator.state.distributed_type = DistributedType.FSDP
    return "FSDP"


def check_fsdp_plugin(plugin) -> None:
    """Refuse FSDP settings coldstart does not support: FSDP1, and loading weights on rank 0 only."""
    if plugin.fsdp_version != 2:
        raise ValueError(f"accelerate config: fsdp_version {plugin.fsdp_version} is not supported by coldstart; "
                         "set fsdp_config.fsdp_version: 2 (FSDP2, fully_shard; recipes/accelerate/fsdp.yaml)")
    if plugin.cpu_ram_efficient_loading:
        raise ValueError("accelerate config: fsdp_cpu_ram_efficient_loading: true makes transformers load "
                         "empty weights on every rank but 0, which breaks the RL reference model and evaluation "
                         "(they load whole models on each rank); set it to false (recipes/accelerate/fsdp.yaml)")


def fsdp_refusals(recipe, stage: str) -> list[str]:
    """What a recipe asks for that coldstart cannot do with FSDP-sharded weights ([] when it can run)."""
    from ..config import TRAINING_STAGES

    if stage not in TRAINING_STAGES or not TRAINING_STAGES[stage].fsdp:
        supported = " and ".join(name for name, entry in TRAINING_STAGES.items() if entry.fsdp)
        return [f"the {stage or 'rsft / dpo'} stage is not supported ({supported} are)"]
    out = ["model.lora is not supported (adapters on sharded weights)"] if recipe.model.lora else []
    if stage == "rl":
        cfg = recipe.rl
        checks = [(cfg.env is not None, "rl.env (multi-turn rollouts end after different numbers of turns)"),
                  (cfg.prefix_rft is not None, "rl.prefix_rft is not supported"),
                  (_estimator(cfg).needs_values,
                   f"rl.advantage={cfg.advantage} is not supported (its value head is not sharded)"),
                  (cfg.sampler != "torch", f"rl.sampler={cfg.sampler} is not supported (use torch)")]
        out += [msg for bad, msg in checks if bad]
    return out


def _estimator(cfg):
    """The registry entry of `rl.advantage` (it says whether the estimator needs a value head)."""
    from ..algorithms import ADVANTAGES, Estimator, resolve

    return resolve(ADVANTAGES, cfg.advantage, Estimator, "rl.advantage")


def _inner(optimizer) -> torch.optim.Optimizer:
    """The torch optimizer inside accelerate's AcceleratedOptimizer."""
    return getattr(optimizer, "optimizer", optimizer)


def _param_names(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[list[str], list]:
    """The names of the optimizer's parameters in its index order (the order of `state_dict()`), and them."""
    by_id = {id(p): name for name, p in model.named_parameters()}
    order = [p for g in optimizer.param_groups for p in g["params"]]
    return [by_id[id(p)] for p in order], order


def _by_index(full: dict, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """A full optimizer state keyed by parameter name (torch.distributed.checkpoint) in `state_dict()`'s
    format: parameters by their index in the optimizer's groups."""
    names, _ = _param_names(model, optimizer)
    index = {name: i for i, name in enumerate(names)}
    return {"state": {index[n]: v for n, v in full["state"].items()},
            "param_groups": [{**{k: v for k, v in g.items() if k != "params"},
                              "params": [index[n] for n in g["params"]]} for g in full["param_groups"]]}


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
        elif key not in ("step", "lr", "temperature") and not key.startswith(("time/", "val/")):
            out[key] = sum(values) / len(values)
    return out


@cache
def current() -> Dist:
    """The process group, created once per process (the first call builds accelerate's state)."""
    return Dist()


def is_sharded(model: torch.nn.Module) -> bool:
    """True for a model FSDP2 sharded over the ranks: its forward passes gather weights from every rank, so
    every rank must run the same number of them."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)
