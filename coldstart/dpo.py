"""The preference-optimisation stage: DPO or SimPO on (prompt, chosen, rejected) pairs (docs/algorithms.md §10, §22).

    pairs      `dpo.pairs`: rollouts (k samples per training prompt from the stage's start model, the first
               verified-correct one chosen, the first wrong one rejected; prompts with no such mix are skipped),
               task (the task's gold trace chosen, the first wrong sample rejected), or a JSONL file of
               {prompt, chosen, rejected} (prompt = the bare question, rendered with the recipe's prompt
               strategy; chosen / rejected = completion texts). Built once, saved as DIR/dpo/pairs.jsonl.
    reference  the stage's starting model, frozen (with LoRA: the same model with its adapter switched off).
               Its sequence log-probs are computed once, before training (DPO only; SimPO has no reference).
    loss       coldstart.algorithms.preference: `dpo` (β, sigmoid) | `simpo` (β, γ margin, length-normalised).
    budget     `dpo.budget` N with `dpo.sft_fraction` f (Balancing the Budget, Raghavendra et al. 2025):
               round(f·N) SFT traces (config.py sets sft.traces), N − round(f·N) pairs, built from the prompts
               that follow the SFT traces in the training pool, so the two never share a prompt.

Every completion ends with eos, as the SFT targets do; the log-prob of a completion is the sum over its tokens
(eos included). Batches are `dpo.batch_size` pairs in a seeded order per epoch, so `--resume` replays exactly.
Each prompt's samples are seeded by its position in the pool, so the pairs do not depend on the chunking.

Several processes (`accelerate launch`, docs/scale-out.md): rollout pairs are sampled by every rank for its
contiguous share of each chunk of prompts and gathered in rank order (the single-process pairs); each rank
computes the reference log-probs of its share of the pairs, then all are gathered. `dpo.batch_size` is the
global batch: rank r trains pairs r, r+N, … of it, its mean loss weighted by its share, so the gradient is
the single-process one. Only rank 0 writes files.

    coldstart run recipes/dpo.yaml --out runs/dpo            (sft → dpo → eval)
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .algorithms.preference import NEEDS_REFERENCE, PREFERENCE_LOSSES
from .config import PromptConfig, Recipe
from .evaluate import encode_prompts, evaluate_greedy
from .infra.books import VAL_ACCURACY, StageRun, StageState
from .infra.distributed import current, strided_share
from .infra.runtime import build_optimizer, build_scheduler, console, progress
from .infra.stage import open_stage
from .models import eos_ids, is_lora, load_model
from .prompts import chat_format, render_target
from .rl import prompt_seed
from .rollout import SamplingParams, build_sampler
from .sft import batch_for_step
from .types import Example


@dataclass
class Pair:
    """One preference pair: the bare question, and the preferred and dispreferred completion texts."""

    prompt: str
    chosen: str
    rejected: str


def read_pairs(path: str | Path) -> list[Pair]:
    """Pairs from a JSONL file of {prompt, chosen, rejected} objects; ValueError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dpo.pairs: {path}: no such file (rollouts, task, or a JSONL file of pairs)")
    pairs = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not valid JSON: {e.msg}") from None
        if not isinstance(item, dict):
            raise ValueError(f"{path}:{n}: expected an object with prompt, chosen, rejected")
        missing = [k for k in ("prompt", "chosen", "rejected") if not isinstance(item.get(k), str)]
        if missing:
            raise ValueError(f"{path}:{n}: missing or non-string field(s) {', '.join(missing)}")
        pairs.append(Pair(item["prompt"], item["chosen"], item["rejected"]))
    if not pairs:
        raise ValueError(f"{path}: no pairs")
    return pairs


def write_pairs(pairs: list[Pair], path: Path) -> None:
    """Write pairs as JSONL (the format `read_pairs` reads)."""
    path.write_text("".join(json.dumps(asdict(p)) + "\n" for p in pairs))


def pairs_from_samples(examples: list[Example], texts: list[str], k: int, verify, gold: bool,
                       target=render_target) -> list[Pair]:
    """Pairs from k sampled texts per example (prompt-major). gold=False: first correct vs first wrong sample;
    gold=True: the example's gold trace (`target(example)`, the SFT target) vs the first wrong sample.
    Examples without both are skipped."""
    pairs = []
    for i, ex in enumerate(examples):
        group = texts[i * k : (i + 1) * k]
        ok = [verify(ex, t) >= 1.0 for t in group]
        wrong = next((t for t, c in zip(group, ok) if not c), None)
        chosen = target(ex) if gold else next((t for t, c in zip(group, ok) if c), None)
        if wrong is not None and chosen is not None:
            pairs.append(Pair(ex.prompt, chosen, wrong))
    return pairs


def build_pairs(model, tokenizer, task, pool: list[Example], recipe: Recipe, limit: int | None) -> list[Pair]:
    """Sample `dpo.samples` completions per prompt of `pool` from `model` and pair them (`dpo.pairs` is
    rollouts or task), chunk by chunk, until `limit` pairs (None: every prompt of the pool). Prompt i's
    samples are seeded by i alone; each rank samples its share of a chunk and every rank gets all pairs."""
    cfg, dist = recipe.dpo, current()
    sampler = build_sampler("torch", tokenizer)
    params = SamplingParams(n=cfg.samples, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                            eos_ids=eos_ids(tokenizer, model))
    per_chunk = max(1, recipe.eval.batch_size // cfg.samples) * dist.world  # prompts per sampling call × ranks
    pairs: list[Pair] = []
    with progress(recipe.run.quiet or not dist.is_main) as bar:
        bar_id = bar.add_task("dpo pairs", total=len(pool), info=f"{cfg.samples} samples per prompt")
        for i in range(0, len(pool), per_chunk):
            pairs += _chunk_pairs(model, tokenizer, sampler, task, pool[i : i + per_chunk], i, params, recipe)
            bar.update(bar_id, completed=min(len(pool), i + per_chunk), info=f"{len(pairs)} pairs")
            if limit is not None and len(pairs) >= limit:
                break
    return pairs[:limit]


def _chunk_pairs(model, tokenizer, sampler, task, chunk: list[Example], i: int, params, recipe: Recipe
                 ) -> list[Pair]:
    """The pairs of one chunk of prompts (starting at pool index i), every rank's share gathered in prompt
    order, as one process finds them (so pairs[:limit] is the same)."""
    cfg, dist = recipe.dpo, current()
    part = dist.split(len(chunk))
    mine: list[Pair] = []
    if part.stop > part.start:
        seeds = [prompt_seed(recipe.run.seed + 17, i + j) for j in range(part.start, part.stop)]
        ro = sampler.sample(model, encode_prompts(tokenizer, chunk[part], recipe.prompt), params, seeds=seeds)
        mine = pairs_from_samples(chunk[part], ro.texts, cfg.samples, task.verify, cfg.pairs == "task",
                                  chat_format(tokenizer, recipe.prompt).target)
    return dist.gather_lists(mine)


def encode_pairs(tokenizer, pairs: list[Pair], prompt: PromptConfig) -> list[tuple[list[int], ...]]:
    """Token ids per pair: (prompt ids, chosen ids + eos, rejected ids + eos)."""
    fmt = chat_format(tokenizer, prompt)
    enc = lambda texts: tokenizer(texts, add_special_tokens=False).input_ids  # noqa: E731
    eos = [tokenizer.eos_token_id]
    return [(p, c + eos, r + eos) for p, c, r in zip([fmt.prompt_ids(p.prompt) for p in pairs],
                                                     enc([p.chosen for p in pairs]),
                                                    enc([p.rejected for p in pairs]))]


def completion_logps(model, prompts: list[list[int]], completions: list[list[int]], pad_id: int, device
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs (R,) of each completion given its prompt, and completion lengths (R,) long.
    Rows are prompt + completion, right-padded; only completion positions are counted."""
    rows = [p + c for p, c in zip(prompts, completions)]
    width = max(map(len, rows))
    ids = torch.tensor([r + [pad_id] * (width - len(r)) for r in rows], device=device)
    attn = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
    target = torch.zeros_like(ids, dtype=torch.bool)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        target[i, len(p) : len(p) + len(c)] = True
    logits = model(input_ids=ids, attention_mask=attn, use_cache=False).logits[:, :-1].float()
    logp = logits.log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    m = target[:, 1:].float()
    return (logp * m).sum(1), m.sum(1).long()


def pair_logps(model, batch: list[tuple[list[int], ...]], pad_id: int, device) -> tuple[torch.Tensor, ...]:
    """One forward over chosen and rejected rows: chosen_logp, rejected_logp, chosen_len, rejected_len, each (B,)."""
    B = len(batch)
    prompts = [b[0] for b in batch] * 2
    logp, lengths = completion_logps(model, prompts, [b[1] for b in batch] + [b[2] for b in batch], pad_id, device)
    return logp[:B], logp[B:], lengths[:B], lengths[B:]


def reference_logps(ref, encoded, pad_id: int, device, batch_size: int) -> torch.Tensor:
    """(n_pairs, 2) float: the frozen reference's chosen and rejected log-probs, computed once; each rank
    computes its contiguous share of the pairs and every rank gets the whole table."""
    dist = current()
    mine = encoded[dist.split(len(encoded))]
    out = [torch.zeros((0, 2))]
    with torch.no_grad():
        for i in range(0, len(mine), batch_size):
            c, r, _, _ = pair_logps(ref, mine[i : i + batch_size], pad_id, device)
            out.append(torch.stack([c, r], 1).cpu())
    return torch.cat(dist.gather_objects(torch.cat(out)))


def _load_pairs(recipe: Recipe, stage: Path, task, model, tokenizer, resume_ckpt) -> list[Pair]:
    """The stage's pairs: reread from DIR/dpo/pairs.jsonl on resume, else read or built, then saved there."""
    cfg, saved = recipe.dpo, stage / "pairs.jsonl"
    if resume_ckpt is not None and saved.is_file():
        return read_pairs(saved)
    if cfg.pairs in ("rollouts", "task"):
        pool = task.examples("train", recipe.task.train_size, recipe.run.seed)
        offset = recipe.sft.traces if cfg.budget is not None and "sft" in recipe.run.stages else 0
        pool = pool[int(offset) :][: cfg.max_prompts]  # prompts the SFT traces did not use
        pairs = build_pairs(model, tokenizer, task, pool, recipe, cfg.max_pairs)
        if not pairs:
            raise ValueError(f"dpo: {len(pool)} prompts × {cfg.samples} samples gave no pair: the start model "
                             f"never had both a correct and a wrong completion (dpo.pairs={cfg.pairs}). This "
                             "is the cold-start problem: start from an SFT model, or use dpo.pairs: task")
    else:
        pairs = read_pairs(cfg.pairs)[: cfg.max_pairs]
    if current().is_main:
        write_pairs(pairs, saved)
    return pairs


def train(recipe: Recipe, out: Path, resume: bool = False) -> Path:
    """Run the preference stage into `out/dpo` from `dpo.init` (default: the last finished earlier stage)."""
    cfg, run, dist = recipe.dpo, recipe.run, current()
    st = open_stage(recipe, out, "dpo", cfg.init, resume)
    device, task, tokenizer, model = st.device, st.task, st.tokenizer, st.model
    pairs = _load_pairs(recipe, st.dir, task, model, tokenizer, st.ckpt)
    encoded = encode_pairs(tokenizer, pairs, recipe.prompt)
    ref_logps = _reference(recipe, st, encoded) if NEEDS_REFERENCE[cfg.loss] else None
    val = task.examples("val", recipe.task.val_size, run.seed)
    per_epoch = math.ceil(len(encoded) / cfg.batch_size)
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * per_epoch))
    opt = build_optimizer([p for p in model.parameters() if p.requires_grad], cfg.lr, cfg.weight_decay)
    sched = build_scheduler(opt, cfg.schedule, total, cfg.warmup, cfg.min_lr_ratio)
    books = StageRun("dpo", st, StageState(counters={"pairs": len(pairs)}), optimizer=opt, scheduler=sched,
                     keep_best=cfg.keep_best, save_every=cfg.save_every, max_nonfinite=run.max_nonfinite_steps,
                     lora=recipe.model.lora is not None)
    trained, books.optimizer = dist.prepare(model, opt)  # DDP's wrapper on several ranks; `model` evaluates, is saved
    console.print(f"dpo: {len(pairs)} pairs ({cfg.pairs}), loss={cfg.loss}, {total} steps of {cfg.batch_size}, "
                  f"from {st.start}, device={device}" + (f", {dist.world} processes" if dist.world > 1 else ""))
    state = books.state
    books.start_clock()
    with progress(run.quiet) as bar:
        bar_id = bar.add_task("dpo", total=total, completed=state.step, info="")
        while state.step < total:
            idx = batch_for_step(len(encoded), state.step, cfg.batch_size, run.seed)
            loss, metrics, grad_norm = preference_step(trained, encoded, ref_logps, idx, cfg, tokenizer.pad_token_id,
                                                       device)
            if not books.skip_step(loss is not None):
                books.optimizer.step()
            books.optimizer.zero_grad(set_to_none=True)
            sched.step()
            books.advance()
            row = {"step": state.step, "loss": loss, **metrics, "grad_norm": grad_norm, "lr": sched.get_last_lr()[0],
                   "epoch": state.step / per_epoch, "time/elapsed_s": state.elapsed,
                   "nonfinite_steps": books.nonfinite_total}
            if dist.world > 1:
                row["dist/param_checksum"] = dist.check_in_sync(model, state.step)
            if cfg.eval_every and val and (state.step % cfg.eval_every == 0 or state.step == total):
                row[VAL_ACCURACY] = evaluate_greedy(model, tokenizer, task, val, recipe.prompt, cfg.max_new_tokens,
                                                    recipe.eval.batch_size)["accuracy"]
                books.track_best(row[VAL_ACCURACY])
            books.write(row)
            bar.update(bar_id, completed=state.step, info=f"loss {row['loss'] or float('nan'):.3f}")
            books.save_if_due(total)
    return books.finish({"pairs": len(pairs)})


def _reference(recipe: Recipe, st, encoded) -> torch.Tensor:
    """The frozen start model's sequence log-probs (n_pairs, 2) of (chosen, rejected), computed once: with
    LoRA the policy with its adapter off, else a second copy of the start model, freed afterwards."""
    pad_id, bs = st.tokenizer.pad_token_id, recipe.dpo.batch_size
    if is_lora(st.model):
        with st.model.disable_adapter():
            return reference_logps(st.model, encoded, pad_id, st.device, bs)
    ref = load_model(st.start, recipe.run.dtype, st.device).eval()
    return reference_logps(ref, encoded, pad_id, st.device, bs)


def preference_step(model, encoded, ref_logps: torch.Tensor | None, idx: list[int], cfg, pad_id: int, device
                    ) -> tuple[float | None, dict[str, float], float | None]:
    """Forward + backward of this rank's share of the global batch `idx` (pairs idx[rank::world]), then
    gradient clipping; the caller steps the optimizer. ref_logps: (n_pairs, 2) or None (SimPO).

    The loss functions average over pairs, so this rank's mean is weighted by its share of the global batch
    (times the process count: DDP averages gradients over ranks) and the gradient is the single-process
    one. The logged loss and metrics are the loss function's on the whole batch, from every rank's detached
    log-probs. Returns (loss, metrics, grad norm); loss and norm are None when either is not finite.
    """
    dist, loss_fn = current(), PREFERENCE_LOSSES[cfg.loss]
    mine, weight = strided_share(idx, dist.rank, dist.world)
    chosen, rejected, c_len, r_len = pair_logps(model, [encoded[i] for i in mine], pad_id, device)
    ref = ref_logps[mine].to(device) if ref_logps is not None else None

    def loss_of(c, r, cl, rl, rf):
        return loss_fn(c, r, cl, rl, beta=cfg.beta, gamma=cfg.gamma, ref_chosen_logp=None if rf is None else rf[:, 0],
                       ref_rejected_logp=None if rf is None else rf[:, 1])

    loss, _ = loss_of(chosen, rejected, c_len, r_len, ref)
    (loss * (len(mine) / len(idx) * dist.world * weight)).backward()
    grad_norm = float(dist.clip_grad_norm_(model.parameters(), cfg.grad_clip))
    local = [t.detach().cpu() for t in (chosen, rejected, c_len, r_len)] + [None if ref is None else ref.cpu()]
    parts = [p for p in dist.gather_objects(local if weight else None) if p is not None]
    columns = [None if p[0] is None else torch.cat(list(p)) for p in zip(*parts)]
    batch_loss, metrics = loss_of(*columns)
    finite = math.isfinite(float(batch_loss)) and math.isfinite(grad_norm)
    if dist.world > 1:
        finite = dist.max(0.0 if finite else 1.0) == 0.0
    return (float(batch_loss), metrics, grad_norm) if finite else (None, metrics, None)
