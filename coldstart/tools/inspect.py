"""Look before you train: what RL would see from its starting model, and whether the recipe's parts agree.

`coldstart inspect RECIPE --out DIR` loads the model the RL stage would start from (infra.stage.stage_start:
DIR/sft when finished, else the base model, or `rl.init`), samples k completions (default `rl.group_size`)
for the first N prompts RL would draw (rl.prompt_batch), and reports

- the pass-rate histogram, and the share of all-0 / all-1 groups and of reward-std-0 groups: the groups
  that carry no policy gradient under GRPO-style advantages;
- gold answers the pipeline cannot score: the task's verifier or the reward parts on the SFT target
  `render_target(example)` (which holds the gold answer), the answer extractor, math-verify's parse
  (when an `accuracy` reward is used);
- prompt, SFT target and response lengths in tokens (p50 / p90 / p99 / max) against `model.max_len` and
  `rl.max_new_tokens`, and the share of truncated responses;
- whether the SFT target format, the RL prompt (chat template + generation prompt) and the format reward
  agree: a template that already opens `<think>` makes a strict format reward unreachable, a format reward
  for another tag than the strategy's scores the SFT targets 0;

then a verdict with the concrete fix for each problem, and writes everything to `DIR/inspect.json`.

    coldstart inspect recipes/demo.yaml --out runs/demo --prompts 32 --k 8
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from ..config import Recipe
from ..evaluate import encode_prompts
from ..prompts import chat_format, format_ok, get_strategy
from ..rewards import GoldAnswerError, build_reward, extract_answer
from ..rewards.combine import score_rows
from ..types import Example

BEST_IS_ONE = ("task", "accuracy", "exact", "format")  # reward parts whose score on a gold SFT target must be 1


def percentiles(xs: list[int | float]) -> dict[str, float]:
    """p50 / p90 / p99 / max / mean of `xs` (nearest-rank percentiles); zeros for an empty list.

    >>> percentiles([1, 2, 3, 4, 100])
    {'p50': 3, 'p90': 100, 'p99': 100, 'max': 100, 'mean': 22.0}
    """
    if not xs:
        return {"p50": 0, "p90": 0, "p99": 0, "max": 0, "mean": 0.0}
    s = sorted(xs)
    rank = lambda q: s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]
    return {"p50": rank(0.5), "p90": rank(0.9), "p99": rank(0.99), "max": s[-1], "mean": sum(s) / len(s)}


def group_stats(correct: list[list[bool]], totals: list[list[float]]) -> dict[str, Any]:
    """Pass-rate histogram (number of correct samples per group → groups) and flat-group shares.

    >>> g = group_stats([[False, False], [True, False], [True, True]], [[0, 0], [1, 0], [1, 1]])
    >>> g["histogram"], g["all0_frac"], g["all1_frac"], g["zero_std_frac"]
    ({'0': 1, '1': 1, '2': 1}, 0.3333333333333333, 0.3333333333333333, 0.6666666666666666)
    """
    k = max((len(c) for c in correct), default=0)
    hist = {str(j): 0 for j in range(k + 1)}
    for c in correct:
        hist[str(sum(c))] += 1
    n = max(1, len(correct))
    return {"groups": len(correct), "k": k, "histogram": hist,
            "pass_rate_mean": sum(sum(c) / max(1, len(c)) for c in correct) / n,
            "all0_frac": sum(not any(c) for c in correct) / n,
            "all1_frac": sum(all(c) for c in correct) / n,
            "zero_std_frac": sum(max(t) == min(t) for t in totals) / n}


def _reward_rows(reward_fn, examples: list[Example], texts: list[str], truncated: list[bool], tokenizer,
                 prefix: str = ""):
    """The RewardResult of `texts` (one per example), called as the RL loop calls rewards (rl.score)."""
    ids = tokenizer(texts, add_special_tokens=False).input_ids if texts else []
    return score_rows(reward_fn, examples, texts, completion_ids=ids, truncated=truncated, prefix=prefix)


def gold_checks(task, examples: list[Example], recipe: Recipe, reward_fn, tokenizer) -> dict[str, Any]:
    """Can the pipeline score the gold answers? Verifier, reward parts and extractor on the SFT targets,
    and math-verify's parse of each gold when an `accuracy` reward is used."""
    from ..rewards.accuracy import parse_gold

    fmt = chat_format(tokenizer, recipe.prompt)
    targets = [fmt.target(ex) for ex in examples]  # as the model continues the prompt; rewards get fmt.prefix
    lengths = [len(tokenizer(t, add_special_tokens=False).input_ids) for t in targets]
    result = _reward_rows(reward_fn, examples, targets, [False] * len(targets), tokenizer, fmt.prefix)
    targets = [fmt.prefix + t for t in targets]  # the model's whole turn
    verifier_fail = [ex.answer for ex, t in zip(examples, targets) if task.verify(ex, t) < 1.0]
    extract_fail = [ex.answer for ex, t in zip(examples, targets) if (extract_answer(t) or "") != ex.answer.strip()]
    parse_fail: list[str] = []
    if any(s.name == "accuracy" for s in recipe.rl.rewards):
        for ex in examples:
            try:
                parse_gold(ex.answer)
            except GoldAnswerError:
                parse_fail.append(ex.answer)
    n = max(1, len(examples))
    return {"n": len(examples),
            "verifier_fail": verifier_fail[:10], "verifier_fail_frac": len(verifier_fail) / n,
            "extract_fail": extract_fail[:10],
            "parse_fail": parse_fail[:10], "parse_fail_frac": len(parse_fail) / n,
            "reward_on_targets": {name: sum(v) / n for name, v in result.parts.items()},
            "reward_errors": result.error_messages, "target_tokens": percentiles(lengths),
            "with_solution_frac": sum(ex.solution is not None for ex in examples) / n}


def template_checks(tokenizer, example: Example, recipe: Recipe, reward_fn) -> dict[str, Any]:
    """Does the RL prompt already open the strategy's tag (so the model never writes it), and does each
    format-like reward part accept the SFT target as the model would continue that prompt?"""
    tag = get_strategy(recipe.prompt.strategy).tag
    fmt = chat_format(tokenizer, recipe.prompt)
    continuation = fmt.target(example)
    parts = _reward_rows(reward_fn, [example], [continuation], [False], tokenizer, fmt.prefix).parts
    whole = _reward_rows(reward_fn, [example], [fmt.prefix + continuation], [False], tokenizer).parts
    prompt = fmt.text(example)
    return {"tag": tag, "generation_prompt": prompt[-len(fmt.prefix) - 40:], "template_opens_tag": bool(fmt.prefix),
            "completion_prefix": fmt.prefix, "think_layout": fmt.think_layout, "bos_added": fmt.bos is not None,
            "chat_template": bool(getattr(tokenizer, "chat_template", None)), "sft_continuation": continuation,
            "reward_on_continuation": {k: v[0] for k, v in parts.items()},
            "reward_on_whole_turn": {k: v[0] for k, v in whole.items()}}


def sample_groups(model, tokenizer, examples: list[Example], recipe: Recipe, k: int, batch_size: int):
    """k completions per example with the RL sampling settings (max_new_tokens cut to what the model's context
    leaves): prompt ids (B lists), texts (B·k,), lengths (B·k,), truncated (B·k,)."""
    from ..infra.runtime import progress
    from ..models import eos_ids
    from ..rollout import SamplingParams, build_sampler
    from ..rollout.base import max_positions

    cfg = recipe.rl
    ids = encode_prompts(tokenizer, examples, recipe.prompt)
    # A context too short for prompt + max_new_tokens is reported by the verdict; sample what fits meanwhile.
    positions = max_positions(model) or 1 << 30
    budget = max(1, min(cfg.max_new_tokens, positions - max(map(len, ids))))
    params = SamplingParams(n=k, max_new_tokens=budget, temperature=cfg.temperature, top_p=cfg.top_p,
                            top_k=cfg.top_k, stop=cfg.stop, eos_ids=eos_ids(tokenizer, model))
    sampler = build_sampler(cfg.sampler, tokenizer)
    gen = torch.Generator().manual_seed(recipe.run.seed)
    per_chunk = max(1, batch_size // k)
    texts, lengths, truncated = [], [], []
    with progress(recipe.run.quiet) as bar:
        task_id = bar.add_task("inspect", total=len(ids), info="")
        for i in range(0, len(ids), per_chunk):
            ro = sampler.sample(model, ids[i : i + per_chunk], params, gen)
            texts += ro.texts
            lengths += ro.lengths.tolist()
            truncated += ro.truncated.tolist()
            bar.update(task_id, completed=min(len(ids), i + per_chunk))
    return ids, texts, lengths, truncated


def inspect_recipe(recipe: Recipe, out: Path, prompts: int = 32, k: int | None = None) -> dict[str, Any]:
    """Sample k completions for `prompts` training prompts from RL's starting model; return the report
    (also written to `out/inspect.json`)."""
    from ..infra.runtime import console, setup
    from ..infra.stage import base_model, build_task_from, previous_stages, stage_start
    from ..models import load_model, load_tokenizer
    from ..rl import prompt_batch

    k = k or recipe.rl.group_size
    if prompts < 1 or k < 1:
        raise ValueError(f"inspect: --prompts and --k must be >= 1, got {prompts} and {k}")
    device = setup(recipe.run.seed, recipe.run.threads, recipe.run.device)
    task = build_task_from(recipe)
    start = stage_start(out, recipe.rl.init, base_model(recipe, out), previous_stages(recipe, "rl"))
    pool = task.examples("train", recipe.task.train_size, recipe.run.seed)
    if not pool:
        raise ValueError(f"task {recipe.task.name}: the training split is empty")
    examples = prompt_batch(pool, 0, min(prompts, len(pool)), recipe.run.seed)
    console.print(f"inspect: {len(examples)} prompts × {k} samples from {start}")
    model = load_model(start, recipe.run.dtype, device).eval()
    tokenizer = load_tokenizer(start, recipe.model.chat_template)
    reward_fn = build_reward([s.model_dump() for s in recipe.rl.rewards], task=task, search=recipe.folders,
                             stop_on_failure=False)
    with torch.no_grad():
        ids, texts, lengths, truncated = sample_groups(model, tokenizer, examples, recipe, k, recipe.eval.batch_size)
    rows = [ex for ex in examples for _ in range(k)]
    prefix = chat_format(tokenizer, recipe.prompt).prefix
    result = _reward_rows(reward_fn, rows, texts, truncated, tokenizer, prefix)
    verified = [task.verify(ex, t) >= 1.0 for ex, t in zip(rows, texts)]
    groups = group_stats([verified[i * k : (i + 1) * k] for i in range(len(examples))],
                         [result.total[i * k : (i + 1) * k] for i in range(len(examples))])
    prompt_lens = [len(p) for p in ids]
    cfg = recipe.rl
    report = {
        "start": str(start), "start_is_base": Path(str(start)) == Path(str(base_model(recipe, out))),
        "prompts": len(examples), "k": k, "groups": groups,
        "reward": {"mean": sum(result.total) / len(result.total), **{f"part/{n}": sum(v) / len(v)
                                                                     for n, v in result.parts.items()},
                   "errors": result.errors, "error_messages": result.error_messages,
                   "failed": {name: k_ / len(result.total) for name, k_ in result.failed.items()}},
        "lengths": {"max_len": recipe.model.max_len, "max_new_tokens": cfg.max_new_tokens,
                    "prompt_tokens": percentiles(prompt_lens), "response_tokens": percentiles(lengths),
                    "truncated_frac": sum(truncated) / len(truncated),
                    "over_max_len_frac": sum(p + cfg.max_new_tokens > recipe.model.max_len for p in prompt_lens)
                    / len(prompt_lens)},
        "gold": gold_checks(task, examples, recipe, reward_fn, tokenizer),
        "format": {**template_checks(tokenizer, examples[0], recipe, reward_fn),
                   "samples_format_ok_frac": sum(format_ok(prefix + t, recipe.prompt.strategy) for t in texts)
                   / len(texts),
                   "samples_with_answer_frac": sum(extract_answer(t) is not None for t in texts) / len(texts)},
        "samples": [{"prompt": ex.prompt, "answer": ex.answer, "completion": t, "reward": r}
                    for ex, t, r in list(zip(rows, texts, result.total))[:: max(1, k)][:5]],
    }
    report["verdict"] = verdict(report, recipe)
    out.mkdir(parents=True, exist_ok=True)
    (out / "inspect.json").write_text(json.dumps(report, indent=1, default=str))
    return report


def verdict(report: dict[str, Any], recipe: Recipe) -> list[dict[str, str]]:
    """Problems found in an inspect report, each `{"level": error | warn | ok, "message": ...with the fix}`."""
    cfg, out = recipe.rl, []
    add = lambda level, msg: out.append({"level": level, "message": msg})
    g, lens, gold, fmt = report["groups"], report["lengths"], report["gold"], report["format"]
    for name, frac in report["reward"].get("failed", {}).items():
        example = next((m for m in report["reward"]["error_messages"] if m.startswith(f"{name}[")), "")
        add("error" if frac > 0.5 else "warn",
            f"reward {name!r} failed on {frac:.0%} of the samples (scored 0 there), e.g. {example}: it is called as "
            "TRL's GRPOTrainer calls it, fn(prompts=..., completions=..., completion_ids=..., trainer_state=..., "
            "**columns), every data column under its own name; fix the function or the columns it reads"
            + (" (rl stops when a reward fails on every item of a batch)" if frac == 1 else ""))
    if gold["verifier_fail_frac"] > 0:
        add("error", f"{gold['verifier_fail_frac']:.0%} of gold answers fail the task's own verifier on the SFT "
                     f"target (e.g. {gold['verifier_fail'][:3]}): fix the data's answer field or the verifier")
    if gold["parse_fail_frac"] > 0:
        add("error", f"{gold['parse_fail_frac']:.0%} of gold answers do not parse with math-verify (e.g. "
                     f"{gold['parse_fail'][:3]}): the accuracy reward scores them 0; clean the answers or use "
                     "rl.rewards: [{name: exact}] / [{name: task}]")
    if gold["extract_fail"]:
        add("warn", f"the answer extractor does not return the gold answer from the SFT target for e.g. "
                    f"{gold['extract_fail'][:3]}: answers with surrounding spaces or </answer> inside break it")
    for name, value in gold["reward_on_targets"].items():
        if name.split("_")[0] in BEST_IS_ONE and value < 1.0:
            add("error", f"reward part {name!r} gives the SFT targets only {value:.2f} on average (1 expected): the "
                         f"format SFT teaches ({fmt['tag']} then answer, prompt.strategy={recipe.prompt.strategy}) "
                         f"is not what the reward expects; align rl.rewards options (tag: {fmt['tag']}) with the "
                         "strategy")
    blocked = [n for n, v in fmt["reward_on_continuation"].items()  # scores the turn lower without the prefix
               if v < fmt["reward_on_whole_turn"][n] - 1e-6 or (n.split("_")[0] in BEST_IS_ONE and v < 1.0)]
    if fmt["template_opens_tag"] and blocked:
        add("error", f"the chat template's generation prompt already writes {fmt['completion_prefix']!r}, so the model "
                     f"never does, and reward {blocked} scores the SFT target as the model would continue it "
                     f"{fmt['sft_continuation'][:60]!r} below 1: a reward of your own must read the "
                     "`completion_prefix` column (coldstart's built-ins do), or give a template whose generation "
                     "prompt opens nothing (model.chat_template, or prompt.chat_template_kwargs such as "
                     "{enable_thinking: false})")
    if lens["over_max_len_frac"] > 0:
        need = lens["prompt_tokens"]["max"] + cfg.max_new_tokens
        add("error", f"{lens['over_max_len_frac']:.0%} of prompts + rl.max_new_tokens exceed model.max_len="
                     f"{lens['max_len']}: raise model.max_len to {need} or lower rl.max_new_tokens")
    tgt = gold["target_tokens"]
    if tgt["max"] and tgt["p90"] > cfg.max_new_tokens:
        add("warn", f"SFT targets are longer than rl.max_new_tokens={cfg.max_new_tokens} (p90 {tgt['p90']} "
                    f"tokens): raise rl.max_new_tokens to at least {tgt['max']}")
    if lens["truncated_frac"] > 0.2:
        add("warn", f"{lens['truncated_frac']:.0%} of responses hit rl.max_new_tokens={cfg.max_new_tokens} "
                    "(truncated, no answer block): raise rl.max_new_tokens, add SFT, or set rl.overlong_filter: true")
    _verdict_groups(g, report["start_is_base"], cfg, add)
    if not any(v["level"] != "ok" for v in out):
        add("ok", f"{1 - g['zero_std_frac']:.0%} of groups carry signal (mean pass rate {g['pass_rate_mean']:.2f}); "
                  "the prompt, SFT format and rewards agree: ready for RL")
    return out


def _verdict_groups(g: dict, start_is_base: bool, cfg, add) -> None:
    """Verdict lines about flat groups (all-0, all-1, reward std 0)."""
    from ..algorithms import FILTERS, Filter, resolve

    if g["all0_frac"] >= 0.8:
        fix = ("run SFT first (coldstart sft RECIPE --out DIR: RL starts from DIR/sft) or use rl.filter: dynamic"
               if start_is_base else "train SFT longer (sft.epochs, sft.traces), use an easier task, or use "
               "rl.filter: dynamic")
        if resolve(FILTERS, cfg.filter, Filter, "rl.filter").refills:
            fix += (f" (rl.filter is already dynamic, but it resamples at most max_resample={cfg.max_resample} "
                    "rounds per step: with this few informative groups most steps stay flat)")
        add("error", f"{g['all0_frac']:.0%} of groups are all-0 (no sample correct): RL gets no signal from them; "
                     + fix)
    elif g["all1_frac"] >= 0.5:
        add("warn", f"{g['all1_frac']:.0%} of groups are all-1 (every sample correct): drop them with "
                    "rl.prefilter: {max_pass: 0.99} or use harder prompts")
    elif g["zero_std_frac"] >= 0.8 or (g["zero_std_frac"] >= 0.5 and cfg.filter == "none"):
        add("warn", f"{g['zero_std_frac']:.0%} of groups have reward std 0 and teach nothing: use rl.filter: "
                    "dynamic (refills the batch with informative groups) or a larger rl.group_size")


def print_report(report: dict[str, Any]) -> None:
    """The report as rich tables on stderr, then the verdict."""
    from rich.table import Table

    from ..infra.runtime import console

    g, lens = report["groups"], report["lengths"]
    t = Table(title=f"pass rate over {report['k']} samples, {report['prompts']} prompts ({report['start']})")
    t.add_column("correct")
    t.add_column("groups", justify="right")
    t.add_column("", justify="left")
    top = max(g["histogram"].values(), default=1) or 1
    for c, n in g["histogram"].items():
        t.add_row(f"{c}/{report['k']}", str(n), "█" * round(30 * n / top))
    console.print(t)
    console.print(f"all-0 groups {g['all0_frac']:.0%}, all-1 groups {g['all1_frac']:.0%}, reward std 0 "
                  f"{g['zero_std_frac']:.0%}; mean reward {report['reward']['mean']:.3f}")
    lt = Table(title=f"lengths in tokens (model.max_len {lens['max_len']}, rl.max_new_tokens {lens['max_new_tokens']})")
    for col in ("", "p50", "p90", "p99", "max"):
        lt.add_column(col, justify="right")
    for name, p in (("prompt", lens["prompt_tokens"]), ("SFT target", report["gold"]["target_tokens"]),
                    ("response", lens["response_tokens"])):
        lt.add_row(name, *(str(p[q]) for q in ("p50", "p90", "p99", "max")))
    console.print(lt)
    console.print(f"truncated responses {lens['truncated_frac']:.0%}; responses with an answer block "
                  f"{report['format']['samples_with_answer_frac']:.0%}, in the strategy's format "
                  f"{report['format']['samples_format_ok_frac']:.0%}")
    colour = {"error": "red", "warn": "yellow", "ok": "green"}
    for v in report["verdict"]:
        console.print(f"{v['level']}: {v['message']}", style=colour[v["level"]])
