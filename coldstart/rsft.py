"""Rejection-sampling fine-tuning (RFT / expert iteration) and Hint-RFT, as the stage `rsft`.

Each round r = 1 .. rsft.rounds, with the model left by round r-1 (round 1: the stage's start model):

    sample    prompts_per_round prompts × k = samples_per_prompt completions, answer-only prompts as in RL
              (evaluate.encode_prompts); with `rsft.hints` each completion is cut at its first reflection
              point, a library hint is appended and the model continues from there (coldstart.hints)
    verify    the rsft.rewards (default: the task's verifier) score each completion; keep score ≥ min_reward
    select    per prompt, the first keep_per_prompt distinct kept completions (whitespace-normalised text)
    train     SFT on prompt + the model's own completion + eos, loss on the completion only
              (coldstart.sft's training step), `epochs` passes of batch_size sequences
    evaluate  greedy accuracy on the val split; one metrics row per round; a checkpoint per round

Papers: WebSailor's RFT cold start (docs/algorithms.md §1: keep only successful trajectories, SFT on them),
START's Hint-RFT (§9: hinted trajectories, correctness-filtered, become SFT data; then rejection sampling
with the tuned model), ReFT's SFT warm-up + sampling (§23), OpenRFT's synthesis of missing CoT (§14).
Our readings, where the sources leave it open:
- the samples come from the current policy, not a stronger expert (WebSailor) or a teacher (OpenRFT);
- "diverse" (START) is read as distinct text per prompt, capped at keep_per_prompt; no length filter or
  editing of the kept trajectories;
- with hints on, only the hinted continuations are SFT data (completions without a `</think>` get none);
- one AdamW optimizer, constant lr, carries over all rounds (saved in each round's checkpoint).

`--resume` restarts at the last finished round (its checkpoint holds the round, the prompt cursor and the
optimizer). Each prompt's sampling noise (and hint draws) is seeded by its position in the prompt stream, so a
resumed run samples the same, and so does any number of processes.

Several processes (`accelerate launch`, docs/scale-out.md): `prompts_per_round` stays global; rank r samples,
scores and selects its contiguous share of the round's prompts, the selections are gathered in rank order
(every rank then holds the single-process SFT set), and `batch_size` is the global SFT batch, split over
the ranks with the loss normalised over its label tokens (coldstart.sft). Only rank 0 writes files.

    coldstart run recipes/demo.yaml run.stages=[sft,rsft,rl,eval] rsft.rounds=2
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import Recipe
from .evaluate import encode_prompts, evaluate_greedy, sample_texts
from .hints import DEFAULT_HINTS, hinted_prefixes
from .infra.books import VAL_ACCURACY, StageRun, StageState
from .infra.distributed import current
from .infra.runtime import build_optimizer, console, progress
from .infra.stage import open_stage
from .models import eos_ids
from .prompts import chat_format
from .rewards import build_reward
from .rewards.combine import RewardState, score_rows, stop_if_failed
from .rl import prompt_batch, prompt_seed
from .rollout import SamplingParams
from .sft import Encoded, batch_for_step, packing_supported, train_step
from .types import Example


@dataclass
class Selection:
    """The completions kept from one round's N = B×k samples.

    kept:       (prompt index, completion text) pairs, prompt-major, at most keep_per_prompt per prompt
    correct:    samples with score ≥ min_reward
    duplicates: correct samples dropped because the same (whitespace-normalised) text was already kept
    solved:     prompts with at least one correct sample
    """

    kept: list[tuple[int, str]]
    correct: int
    duplicates: int
    solved: int


def select_completions(texts: list[str | None], scores: list[float], k: int, keep_per_prompt: int,
                       min_reward: float) -> Selection:
    """Keep, per prompt (rows i*k .. i*k+k-1), the first `keep_per_prompt` distinct completions scoring
    ≥ min_reward. texts (N,) may hold None (no completion to keep: scored as failed); scores (N,).

    >>> s = select_completions(["a", "a ", "b", "c", None, "d"], [1, 1, 0, 1, 1, 0.5], k=3, keep_per_prompt=1,
    ...                        min_reward=1)
    >>> s.kept, s.correct, s.duplicates, s.solved
    ([(0, 'a'), (1, 'c')], 3, 1, 2)
    """
    if len(texts) != len(scores) or len(texts) % k:
        raise ValueError(f"select_completions: {len(texts)} texts, {len(scores)} scores, k={k}")
    kept, correct, duplicates, solved = [], 0, 0, 0
    for i in range(len(texts) // k):
        seen: set[str] = set()
        hits = [t for t, s in zip(texts[i * k : (i + 1) * k], scores[i * k : (i + 1) * k])
                if t is not None and s >= min_reward]
        correct += len(hits)
        solved += bool(hits)
        for t in hits:
            key = " ".join(t.split())
            if key in seen:
                duplicates += 1
            elif len(seen) < keep_per_prompt:
                seen.add(key)
                kept.append((i, t))
    return Selection(kept, correct, duplicates, solved)



def merge_selections(parts: list[tuple[int, Selection]]) -> Selection:
    """One round's Selection from each rank's (index of its first prompt in the round, its Selection),
    in rank order: prompt indices are shifted to the round's and the counts add up, so the result is the
    single-process selection.

    >>> merge_selections([(0, Selection([(1, "a")], 2, 1, 1)), (3, Selection([(0, "b")], 1, 0, 1))])
    Selection(kept=[(1, 'a'), (3, 'b')], correct=3, duplicates=1, solved=2)
    """
    return Selection([(start + i, t) for start, sel in parts for i, t in sel.kept],
                     sum(sel.correct for _, sel in parts), sum(sel.duplicates for _, sel in parts),
                     sum(sel.solved for _, sel in parts))


def sample_round(model, tokenizer, examples: list[Example], recipe: Recipe, seeds: list[int]
                 ) -> tuple[list[str | None], int]:
    """Completions (B×k, prompt-major; with hints, None where Hint-infer found no hint point or the prefix
    left no room to continue) and the number of completions that got a hint. `seeds` (B,) seed each
    prompt's samples, hint draws and continuations, so they do not depend on the other prompts sampled."""
    cfg, k = recipe.rsft, recipe.rsft.samples_per_prompt
    prompts = encode_prompts(tokenizer, examples, recipe.prompt)
    eos = eos_ids(tokenizer, model)
    params = SamplingParams(n=k, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, eos_ids=eos)
    texts, _ = sample_texts(model, tokenizer, prompts, params, recipe.eval.batch_size, seeds=seeds)
    if not cfg.hints:
        return list(texts), 0
    library = cfg.hint_library or DEFAULT_HINTS
    prefixes = [p for i, s in enumerate(seeds) for p in hinted_prefixes(
        texts[i * k : (i + 1) * k], library, torch.Generator().manual_seed(prompt_seed(s, 1)))]
    out: list[str | None] = [None] * len(texts)
    # The hinted completion (prefix + continuation) stays within max_new_tokens: the continuation budget is
    # what the prefix leaves, rounded down to a multiple of 16 so that rows share a few sampling calls.
    by_budget: dict[int, list[tuple[int, list[int]]]] = {}
    for i, p in enumerate(prefixes):
        if p is not None:
            ids = tokenizer(p, add_special_tokens=False).input_ids
            budget = (cfg.max_new_tokens - len(ids)) // 16 * 16
            if budget > 0:
                by_budget.setdefault(budget, []).append((i, prompts[i // k] + ids))
    for budget, rows in sorted(by_budget.items()):
        cont, _ = sample_texts(model, tokenizer, [ids for _, ids in rows], SamplingParams(
            n=1, max_new_tokens=budget, temperature=cfg.temperature, eos_ids=eos), recipe.eval.batch_size,
            seeds=[prompt_seed(seeds[i // k], 2 + i % k) for i, _ in rows])
        for (i, _), c in zip(rows, cont):
            out[i] = prefixes[i] + c
    return out, sum(t is not None for t in out)


def score_texts(reward_fn, examples: list[Example], texts: list[str | None], k: int, tokenizer, prefix: str = "",
                state=None) -> tuple[list[float], Any]:
    """(N,) total reward of each completion (rows i*k.. belong to examples[i]), rewards called as the RL loop
    calls them (coldstart.rewards.reward_inputs), -inf where the text is None or no reward part applies; and
    the RewardResult."""
    rows = [ex for ex in examples for _ in range(k)]
    filled = [t or "" for t in texts]
    ids = tokenizer(filled, add_special_tokens=False).input_ids
    result = score_rows(reward_fn, rows, filled, completion_ids=ids, trainer_state=state, prefix=prefix)
    return [s if t is not None and not math.isnan(s) else -math.inf for s, t in zip(result.total, texts)], result



def train_round(model, opt, seqs: list[Encoded], epochs: float, batch_size: int, grad_clip: float, pack: bool,
                pad_id: int, seed: int, device, skip) -> tuple[float | None, int]:
    """SFT passes over one round's kept sequences (the same list on every rank; `batch_size` is the global
    batch, trained by coldstart.sft's step); returns the mean loss over the finite steps (None if none) and the
    number of optimizer steps. `skip(finite)` says whether a step is skipped (StageRun.skip_step: a NaN / inf
    loss or gradient is skipped and counted, too many in a row raise FloatingPointError)."""
    if not seqs:
        return None, 0
    steps = max(1, math.ceil(epochs * math.ceil(len(seqs) / batch_size)))
    losses = []
    model.train()
    for step in range(steps):
        batch = [seqs[i] for i in batch_for_step(len(seqs), step, batch_size, seed)]
        loss, _, grad_norm = train_step(model, opt, batch, pack, pad_id, device, grad_clip, current())
        if not skip(loss is not None and grad_norm is not None):
            opt.step()
            losses.append(loss)
        opt.zero_grad(set_to_none=True)
    return (sum(losses) / len(losses) if losses else None), len(losses)


def train(recipe: Recipe, out: Path, resume: bool = False) -> Path:
    """Run the rsft stage into `out/rsft` (start: rsft.init, `auto` = the last finished stage before it in
    run.stages, else the base model); return that folder. A step is a round."""
    cfg, run, dist = recipe.rsft, recipe.run, current()
    st = open_stage(recipe, out, "rsft", cfg.init, resume)
    reward_fn = build_reward([s.model_dump() for s in cfg.rewards], task=st.task, search=recipe.folders,
                             stop_on_failure=False)
    pool = st.task.examples("train", recipe.task.train_size, run.seed)
    val = st.task.examples("val", recipe.task.val_size, run.seed)
    pack = cfg.pack and packing_supported(st.model, st.device)
    opt = build_optimizer(st.model.parameters(), cfg.lr, cfg.weight_decay)
    books = StageRun("rsft", st, StageState(counters={"cursor": 0, "kept_total": 0}), optimizer=opt,
                     keep_best=cfg.keep_best, max_nonfinite=run.max_nonfinite_steps,
                     lora=recipe.model.lora is not None)
    trained, books.optimizer = dist.prepare(st.model, opt)  # DDP's wrapper on several ranks; `model` samples, is saved
    console.print(f"rsft: from {st.start}, {cfg.rounds} rounds of {cfg.prompts_per_round}×{cfg.samples_per_prompt} "
                  f"samples, hints={cfg.hints}, device={st.device}"
                  + (f", {dist.world} processes" if dist.world > 1 else ""))
    state = books.state
    books.start_clock()
    with progress(run.quiet) as bar:
        bar_id = bar.add_task("rsft", total=cfg.rounds, completed=state.step, info="")
        while state.step < cfg.rounds:
            r = state.step + 1
            row = {"step": r, **_round(st, trained, books, reward_fn, pool, val, recipe, pack, r)}
            books.advance()
            row["time/elapsed_s"] = state.elapsed
            row["nonfinite_steps"] = books.nonfinite_total
            if dist.world > 1:
                row["dist/param_checksum"] = dist.check_in_sync(st.model, r)
            books.track_best(row[VAL_ACCURACY])
            books.write(row)
            books.save()  # every round: a round is long, and resume restarts at a round's start
            bar.update(bar_id, completed=r, info=f"kept {row['rsft/kept']} val {row[VAL_ACCURACY]:.3f}")
    return books.finish({"rounds": state.step, "kept_total": state.counters["kept_total"]})


def _round(st, trained, books: StageRun, reward_fn, pool, val, recipe: Recipe, pack: bool, r: int) -> dict[str, Any]:
    """One expert-iteration round (sample → verify → select → train → evaluate); returns its metrics row.
    Each rank samples, scores and selects its share of the round's prompts; the gathered selection is the
    single-process one. `st.model` samples and evaluates, `trained` (its DDP wrapper, or itself) trains. The
    kept completions are written to `stage/data/round-{r:03d}.jsonl` (prompt, answer, completion)."""
    cfg, seed, dist, counters = recipe.rsft, recipe.run.seed, current(), books.state.counters
    model, tokenizer, task = st.model, st.tokenizer, st.task
    k, B, cursor = cfg.samples_per_prompt, cfg.prompts_per_round, counters["cursor"]
    examples = prompt_batch(pool, cursor, B, seed + 101)
    seeds = [prompt_seed(seed + 101, c) for c in range(cursor, cursor + B)]
    counters["cursor"] += B
    part = dist.split(B)  # this rank's prompts of the round
    t0 = time.perf_counter()
    sel, hinted, result = Selection([], 0, 0, 0), 0, None
    if part.stop > part.start:
        texts, hinted = sample_round(model, tokenizer, examples[part], recipe, seeds[part])
        prefix = chat_format(tokenizer, recipe.prompt).prefix
        scores, result = score_texts(reward_fn, examples[part], texts, k, tokenizer, prefix,
                             RewardState(global_step=r - 1, max_steps=cfg.rounds, stage="rsft"))
        sel = select_completions(texts, scores, k, cfg.keep_per_prompt, cfg.min_reward)
    stop_if_failed(result, dist)  # on every rank alike (the reward was built with stop_on_failure=False)
    parts = dist.gather_objects((part.start, sel, hinted))
    sel, hinted = merge_selections([(start, s) for start, s, _ in parts]), sum(h for _, _, h in parts)
    t1 = time.perf_counter()
    if dist.is_main:
        _write_data(st.dir / "data" / f"round-{r:03d}.jsonl", examples, sel)
    prompts, eos = encode_prompts(tokenizer, examples, recipe.prompt), tokenizer.eos_token_id
    seqs = [Encoded(prompts[i] + tokenizer(t, add_special_tokens=False).input_ids + [eos], len(prompts[i]))
            for i, t in sel.kept]
    loss, steps = train_round(trained, books.optimizer, seqs, cfg.epochs, cfg.batch_size, cfg.grad_clip, pack,
                              tokenizer.pad_token_id, seed * 1009 + r, st.device, books.skip_step)
    if not seqs:
        console.print(f"rsft: round {r} kept no completion (none scored ≥ {cfg.min_reward}); no update",
                      style="yellow")
    t2 = time.perf_counter()
    acc = evaluate_greedy(model, tokenizer, task, val, recipe.prompt, cfg.max_new_tokens,
                          recipe.eval.batch_size)["accuracy"] if val else None
    counters["kept_total"] += len(seqs)
    return {"rsft/kept": len(seqs), "rsft/pass_rate": sel.correct / (B * k), "rsft/duplicates": sel.duplicates,
            "rsft/solved_frac": sel.solved / B, "rsft/hinted": hinted, "loss": loss, "steps": steps,
            VAL_ACCURACY: acc if acc is not None else 0.0, "time/sample_s": t1 - t0, "time/train_s": t2 - t1,
            "time/eval_s": time.perf_counter() - t2}


def _write_data(path: Path, examples: list[Example], sel: Selection) -> None:
    """The round's SFT data as JSON lines, for inspection."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for i, text in sel.kept:
            ex = examples[i]
            f.write(json.dumps({"prompt": ex.prompt, "answer": ex.answer, "completion": text}) + "\n")
