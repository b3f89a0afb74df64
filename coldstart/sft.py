"""The SFT cold start: supervised fine-tuning on chain-of-thought traces, loss on completion tokens only.

Each trace is rendered as the chat prompt (prompts.render_prompt) followed by the target
`<think>{solution}</think><answer>{answer}</answer>` and eos (prompts.render_target); labels are -100 on
every prompt token. A trace budget (`sft.traces`) takes a count or a fraction of the training pool: the
Vanishing Gradients paper (docs/algorithms.md §5) finds a short SFT on ~1% of inputs can suffice before RL.

A batch is packed (its sequences concatenated into one row, position ids restarting at 0 for each, which
transformers turns into a block-diagonal causal mask) or padded, whichever costs fewer FLOPs (`pack_is_cheaper`):
with a flash-attention kernel packing always wins (variable-length attention, no padding); with sdpa or eager
attention the packed row's mask is dense, so its attention grows with the square of the whole batch's length and
padding wins unless the lengths differ a lot. `sft.pack: false` always pads; a model that does not honour
packed position ids (checked once at start) always pads. The loss computes logits only at positions whose next
token carries a label (`logits_to_keep`, where the model's forward takes an index tensor).
The batch order is a pure function of (seed, epoch), so `--resume` after a kill replays exactly.

    coldstart sft recipes/demo.yaml --out runs/demo
"""

from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import Recipe
from .evaluate import evaluate_greedy
from .infra.books import VAL_ACCURACY, StageRun, StageState
from .infra.distributed import current, is_sharded, strided_share
from .infra.runtime import build_optimizer, build_scheduler, console, progress
from .infra.stage import open_stage
from .prompts import ChatFormat, chat_format
from .types import Example


@dataclass
class Encoded:
    """One tokenised trace: ids (L,) and the number of leading prompt tokens that carry no loss."""

    ids: list[int]
    n_prompt: int


def encode_trace(fmt: ChatFormat, example) -> Encoded:
    """Tokenise prompt + target + eos (the target laid out for the chat template: ChatFormat.target); the
    prompt part is excluded from the loss."""
    prompt = fmt.prompt_ids(example)
    target = fmt.tokenizer(fmt.target(example), add_special_tokens=False).input_ids
    return Encoded(prompt + target + [fmt.tokenizer.eos_token_id], len(prompt))


def collate(batch: list[Encoded], pack: bool, pad_id: int) -> dict[str, torch.Tensor]:
    """Model inputs for a batch.

    pack=True:  input_ids, labels, position_ids of shape (1, ΣL): one row, positions restart per sequence.
    pack=False: input_ids, labels, attention_mask of shape (B, max L), right-padded.
    labels are the input ids with -100 on prompt and padding tokens (the model shifts them itself).
    """
    labels = [[-100] * e.n_prompt + e.ids[e.n_prompt :] for e in batch]
    if pack:
        return {
            "input_ids": torch.tensor([[t for e in batch for t in e.ids]]),
            "labels": torch.tensor([[t for lab in labels for t in lab]]),
            "position_ids": torch.tensor([[p for e in batch for p in range(len(e.ids))]]),
        }
    width = max(len(e.ids) for e in batch)
    return {
        "input_ids": torch.tensor([e.ids + [pad_id] * (width - len(e.ids)) for e in batch]),
        "labels": torch.tensor([lab + [-100] * (width - len(lab)) for lab in labels]),
        "attention_mask": torch.tensor([[1] * len(e.ids) + [0] * (width - len(e.ids)) for e in batch]),
    }


def masked_lm_loss(model, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy over label tokens, and their count. Packed rows never predict across a boundary
    because the first token of each sequence is a prompt token (label -100).

    inputs: input_ids / labels (B, L) and attention_mask or position_ids (B, L). Logits (B, K, V) are computed
    only at the K positions where some row's next token is a label, and upcast to fp32 for the loss.
    """
    target = inputs["labels"][:, 1:]
    labelled = target != -100
    # both host reads happen before the forward pass is queued: a read after it would wait for the forward
    n, keep = int(labelled.sum()), labelled.any(0).nonzero().squeeze(1)  # keep: (K,) positions before a label
    model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
    if keeps_logit_positions(model):
        logits = model(**model_inputs, use_cache=False, logits_to_keep=keep).logits
    else:
        logits = model(**model_inputs, use_cache=False).logits[:, keep]
    target = target[:, keep]
    ce = _compiled_ce() if getattr(_inner(model)[1], "coldstart_compiled", False) else label_ce
    return ce(logits, target) / max(n, 1), n


def label_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of logits (B, K, V), upcast to fp32, against target (B, K) (-100: no label)."""
    return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), target.flatten(), ignore_index=-100,
                                             reduction="sum")


@functools.cache
def _compiled_ce():
    """`label_ce` through torch.compile (run.compile): the fp32 upcast fuses into the softmax instead of
    writing a B × K × V fp32 copy. Dynamic shapes: K changes with every batch."""
    return torch.compile(label_ce, dynamic=True)


_KEEPS: dict[tuple[type, type], bool] = {}


def _inner(model):
    """(the model without a DDP wrapper, the plain transformers model under a peft wrapper)."""
    from torch.nn.parallel import DistributedDataParallel

    outer = model.module if isinstance(model, DistributedDataParallel) else model
    return outer, outer.get_base_model() if hasattr(outer, "get_base_model") else outer


def keeps_logit_positions(model) -> bool:
    """Whether `model(..., logits_to_keep=<index tensor (K,)>)` returns exactly those positions' logits
    (transformers' generated causal LMs do; remote code may not). Checked once per model class on a 6-token
    probe in eval mode (through a peft wrapper, beside a DDP one); False for FSDP-sharded models, which take
    the full-logits path."""
    outer, base = _inner(model)
    if is_sharded(outer) or "logits_to_keep" not in inspect.signature(base.forward).parameters:
        return False
    kind = (type(outer), type(base))
    if kind not in _KEEPS:
        device = next(base.parameters()).device
        keep = torch.tensor([1, 4], device=device)
        was_training = outer.training
        outer.eval()
        try:
            ids = (torch.arange(3, 9, device=device) % base.get_output_embeddings().weight.shape[0])[None]
            with torch.no_grad():
                full = outer(input_ids=ids, use_cache=False).logits[:, keep]
                kept = outer(input_ids=ids, use_cache=False, logits_to_keep=keep).logits
            _KEEPS[kind] = kept.shape == full.shape and torch.allclose(kept, full, atol=1e-4)
        except (TypeError, IndexError, RuntimeError, AttributeError):
            _KEEPS[kind] = False
        finally:
            outer.train(was_training)
    return _KEEPS[kind]


DENSE_MASK_ATTENTION_COST = 4.0  # FLOP of attention through a dense mask, in FLOP of the linear layers (below)


def pack_is_cheaper(model, lengths: list[int]) -> bool:
    """Whether one packed row of `lengths` costs less than padded rows (B × max length).

    Linear layers cost 2 × (Linear weights) FLOPs per token either way, so padding wastes them on pad tokens.
    Causal attention costs 4 × layers × hidden FLOPs per (query, key) pair, and a packed row under sdpa or
    eager attention attends through one dense causal mask over ΣL positions, against B causal rows of max(L)
    padded. Attention through a mask runs far below the linear layers' FLOP rate, so its FLOPs count
    DENSE_MASK_ATTENTION_COST times: fitted on an H200 (bench/gpu/mfu.py, 8 random lengths in [256, 2048]:
    padded 241 ms, packed 330 ms, i.e. ~65 against ~270 TFLOP/s) and consistent with the CPU, where the demo's
    packed SFT step took 1.75× the padded one. With a flash-attention kernel (variable-length,
    `_attn_implementation` names flash) packing attends only within each sequence: always cheaper.
    """
    cfg = _inner(model)[1].config
    if not lengths:
        return False
    if "flash" in str(getattr(cfg, "_attn_implementation", "") or ""):
        return True
    n, total, width = len(lengths), sum(lengths), max(lengths)
    per_token = 2 * sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    per_pair = DENSE_MASK_ATTENTION_COST * 4 * getattr(cfg, "num_hidden_layers", 1) * getattr(cfg, "hidden_size", 1)
    packed = total * per_token + per_pair * total * (total + 1) / 2
    padded = n * width * per_token + per_pair * n * width * (width + 1) / 2
    return packed <= padded


def packing_supported(model, device) -> bool:
    """Whether this model's attention honours packed position ids (block-diagonal mask)."""
    vocab = model.config.vocab_size
    a, b = torch.arange(3, 3 + 6) % vocab, torch.arange(5, 5 + 4) % vocab
    with torch.no_grad():
        sep = model(b[None].to(device), use_cache=False).logits
        packed = model(torch.cat([a, b])[None].to(device), position_ids=torch.tensor(
            [list(range(6)) + list(range(4))], device=device), use_cache=False).logits
    return torch.allclose(sep[0], packed[0, 6:], atol=1e-3)


def select_traces(pool: list[Example], budget: int | float) -> list[Example]:
    """The first `budget` examples with a trace (a solution, or a verbatim target: TRL's completion / messages):
    a count, or a fraction in (0, 1] of those available."""
    with_trace = [ex for ex in pool if ex.solution or ex.target]
    if not with_trace:
        raise ValueError("sft: the task's training examples have no traces: give the file task a solution column "
                         "(task.options.fields.solution), or TRL's completion or messages column")
    if isinstance(budget, float) and budget <= 1.0:
        if budget <= 0:
            raise ValueError(f"sft.traces: a fraction must be in (0, 1], got {budget}")
        n = max(1, round(budget * len(with_trace)))
    else:
        n = int(budget)
        if n < 1:
            raise ValueError(f"sft.traces: need at least 1 trace, got {budget}")
        if n > len(with_trace):
            raise ValueError(f"sft.traces: asked for {n} traces but the training pool has {len(with_trace)} "
                             "with a trace (raise task.train_size or lower sft.traces)")
    return with_trace[:n]


def batch_for_step(n_items: int, step: int, batch_size: int, seed: int) -> list[int]:
    """Indices of the items in optimizer step `step`: a fresh seeded permutation each epoch."""
    per_epoch = math.ceil(n_items / batch_size)
    epoch, i = divmod(step, per_epoch)
    perm = torch.randperm(n_items, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()
    return perm[i * batch_size : (i + 1) * batch_size]


def validation_loss(model, seqs: list[Encoded], pack: bool, pad_id: int, device, batch_size: int = 32) -> float:
    """Mean per-token loss of the model on encoded traces."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(seqs), batch_size):
            chunk = seqs[i : i + batch_size]
            packed = pack and pack_is_cheaper(model, [len(e.ids) for e in chunk])
            inputs = {k: v.to(device) for k, v in collate(chunk, packed, pad_id).items()}
            loss, n = masked_lm_loss(model, inputs)
            total, count = total + float(loss) * n, count + n
    model.train(was_training)
    return total / max(count, 1)


def train(recipe: Recipe, out: Path, resume: bool = False) -> Path:
    """Run the SFT stage into `out/sft`; return that folder (a Hugging Face model folder)."""
    cfg, run, dist = recipe.sft, recipe.run, current()
    st = open_stage(recipe, out, "sft", cfg.init, resume)
    device, task, tokenizer, model = st.device, st.task, st.tokenizer, st.model
    data = _data(recipe, st)
    pack = cfg.pack and packing_supported(model, device)
    if cfg.pack and not pack:
        console.print("sft: this model ignores packed position ids; using padded batches", style="yellow")
    per_epoch = math.ceil(len(data.train) / cfg.batch_size)
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * per_epoch))
    opt = build_optimizer(model.parameters(), cfg.lr, cfg.weight_decay)
    sched = build_scheduler(opt, cfg.schedule, total, cfg.warmup, cfg.min_lr_ratio)
    books = StageRun("sft", st, StageState(counters={"traces": len(data.train)}), optimizer=opt, scheduler=sched,
                     keep_best=cfg.keep_best, save_every=cfg.save_every, max_nonfinite=run.max_nonfinite_steps,
                     lora=recipe.model.lora is not None)
    # the engine's wrapper (DDP / FSDP) when launched on several ranks; FSDP loads the optimizer state here
    trained, books.optimizer = dist.prepare(model, opt, st.ckpt, recipe, "sft")
    console.print(f"sft: {len(data.train)} traces, {total} steps of {cfg.batch_size}, packing "
                  f"{'when cheaper' if pack else 'off'}, device={device}"
                  + (f", {dist.world} processes" if dist.world > 1 else ""))
    state = books.state
    books.start_clock()
    with progress(run.quiet) as bar:
        task_id = bar.add_task("sft", total=total, completed=state.step, info="")
        while state.step < total:
            batch = [data.train[i] for i in batch_for_step(len(data.train), state.step, cfg.batch_size, run.seed)]
            loss, n_tok, grad_norm = train_step(trained, books.optimizer, batch, pack, tokenizer.pad_token_id,
                                                 device, cfg.grad_clip, dist)
            if not books.skip_step(grad_norm is not None):
                books.optimizer.step()
            books.optimizer.zero_grad(set_to_none=True)
            sched.step()
            books.advance()
            row = {"step": state.step, "loss": loss, "grad_norm": grad_norm, "tokens": n_tok,
                   "lr": sched.get_last_lr()[0], "epoch": state.step / per_epoch, "time/elapsed_s": state.elapsed,
                   "nonfinite_steps": books.nonfinite_total}
            stop = False
            if cfg.eval_every and data.val and (state.step % cfg.eval_every == 0 or state.step == total):
                stop = _evaluate(model, tokenizer, task, data, recipe, pack, device, books, row)
            books.write(row)
            bar.update(task_id, completed=state.step, info=f"loss {row['loss'] or float('nan'):.3f}")
            if dist.world > 1:
                dist.check_in_sync(model, state.step)
            if stop or (cfg.max_seconds is not None and state.elapsed >= cfg.max_seconds):
                break
            books.save_if_due(total)
    return books.finish({"traces": len(data.train)})


@dataclass
class TraceData:
    """The stage's encoded data: training traces, the val examples (greedy accuracy) and their traces (loss)."""

    train: list[Encoded]
    val: list[Example]
    val_traces: list[Encoded]


def _data(recipe: Recipe, st) -> TraceData:
    """The `sft.traces` budget of the training pool, and the val split, encoded with the recipe's prompt."""
    run, fmt = recipe.run, chat_format(st.tokenizer, recipe.prompt)
    traces = select_traces(st.task.examples("train", recipe.task.train_size, run.seed), recipe.sft.traces)
    val = st.task.examples("val", recipe.task.val_size, run.seed)
    return TraceData([encode_trace(fmt, ex) for ex in traces], val,
                     [encode_trace(fmt, ex) for ex in val if ex.solution is not None or ex.target is not None])


def train_step(model, opt, batch: list[Encoded], pack: bool, pad_id: int, device, grad_clip: float,
                dist) -> tuple[float, int, float | None]:
    """Forward + backward of this rank's share of the global batch, then gradient clipping.

    The loss is normalised by the label tokens of the whole global batch (and scaled by the process count,
    since the engine averages gradients over ranks), so the gradient is the single-process one. A rank
    whose share is empty runs a zero-weight pass (every rank must make the same passes). Returns the global
    mean loss, the global label-token count and the gradient norm (None when the loss or gradient is not
    finite on any rank: the caller skips the optimizer step).
    """
    total = sum(len(e.ids) - e.n_prompt for e in batch)  # label tokens of the global batch
    mine, weight = strided_share(batch, dist.rank, dist.world)
    packed = pack and pack_is_cheaper(model, [len(e.ids) for e in mine])
    inputs = {k: v.to(device) for k, v in collate(mine, packed, pad_id).items()}
    loss, n = masked_lm_loss(model, inputs)
    scale = n / total * dist.world * weight
    (loss * scale).backward()
    local = float(loss.detach()) * n * weight
    grad_norm = float(dist.clip_grad_norm_(model.parameters(), grad_clip))
    finite = math.isfinite(local) and math.isfinite(grad_norm)
    if dist.world > 1:
        local = dist.sum(local if finite else 0.0)
        finite = dist.max(0.0 if finite else 1.0) == 0.0
    return (local / max(total, 1) if finite else None), total, grad_norm if finite else None


def _evaluate(model, tokenizer, task, data: TraceData, recipe: Recipe, pack: bool, device, books: StageRun,
              row: dict) -> bool:
    """Validation loss and greedy accuracy into `row`; keep the best model; True when patience ran out."""
    cfg, state = recipe.sft, books.state
    row["val/loss"] = (validation_loss(model, data.val_traces, pack, tokenizer.pad_token_id, device)
                       if data.val_traces else None)
    row[VAL_ACCURACY] = evaluate_greedy(model, tokenizer, task, data.val, recipe.prompt, cfg.max_new_tokens,
                                        recipe.eval.batch_size)["accuracy"]
    if books.track_best(row[VAL_ACCURACY]):
        state.bad_evals = 0
        return False
    state.bad_evals += 1
    return bool(cfg.patience) and state.bad_evals >= cfg.patience
