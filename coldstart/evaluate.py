"""Evaluation on the held-out split: greedy accuracy, unbiased pass@k, maj@k, mean@k, lengths, reflections.

Every number is computed with the task's own verifier on completions sampled with coldstart's sampler.
`coldstart eval RECIPE --out DIR` evaluates every finished stage folder of DIR (base, sft, rl) on the same
test examples and writes `DIR/eval.json` as `{"<stage>": {"accuracy": ..., "pass@k": ..., ...}}`.

    coldstart eval recipes/demo.yaml --out runs/demo
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import torch

from .config import EvalConfig, PromptConfig, Recipe
from .infra.checkpoint import is_complete
from .metrics import count_reflections, maj_at_k, pass_at_k
from .models import eos_ids, load_model, load_tokenizer
from .prompts import chat_format
from .rewards.extract import extract_answer
from .rollout import SamplingParams, build_sampler
from .types import Example, Task

STAGES = ("base", "sft", "rl")


def encode_prompts(tokenizer, examples: list[Example], prompt: PromptConfig) -> list[list[int]]:
    """Token ids of each example's rendered chat prompt (no padding)."""
    fmt = chat_format(tokenizer, prompt)
    return [fmt.prompt_ids(ex) for ex in examples]


def sample_texts(model, tokenizer, prompts: list[list[int]], params: SamplingParams, batch_size: int,
                 sampler: str = "torch", generator: torch.Generator | None = None,
                 seeds: list[int] | None = None, on_chunk=None) -> tuple[list[str], list[int]]:
    """Completions for every prompt (params.n each, prompt-major) in chunks of about `batch_size` rows;
    returns texts and lengths in tokens. `seeds` (one per prompt) seed each prompt's samples on their own;
    `on_chunk(prompts_done)` is called after each chunk (a progress bar)."""
    smp = build_sampler(sampler, tokenizer)
    per_chunk = max(1, batch_size // params.n)
    texts, lengths = [], []
    for i in range(0, len(prompts), per_chunk):
        ro = smp.sample(model, prompts[i : i + per_chunk], params, generator,
                        None if seeds is None else seeds[i : i + per_chunk])
        texts += ro.texts
        lengths += ro.lengths.tolist()
        if on_chunk is not None:
            on_chunk(len(prompts[i : i + per_chunk]))
    return texts, lengths


def evaluate_greedy(model, tokenizer, task: Task, examples: list[Example], prompt: PromptConfig,
                    max_new_tokens: int, batch_size: int, on_chunk=None) -> dict[str, float]:
    """Greedy accuracy and mean completion length on `examples`."""
    if not examples:
        raise ValueError("evaluation: no held-out examples (task.test_size is 0, or the data's test split is "
                         "empty: raise task.options.test_frac or give task.options.test_path)")
    params = SamplingParams(n=1, max_new_tokens=max_new_tokens, temperature=0.0, eos_ids=eos_ids(tokenizer, model))
    texts, lengths = sample_texts(model, tokenizer, encode_prompts(tokenizer, examples, prompt), params, batch_size,
                                  on_chunk=on_chunk)
    scores = [task.verify(ex, t) for ex, t in zip(examples, texts)]
    return {"accuracy": sum(s >= 1.0 for s in scores) / len(scores),
            "length/mean": sum(lengths) / len(lengths), "completions": texts}


def evaluate(model, tokenizer, task: Task, examples: list[Example], prompt: PromptConfig, cfg: EvalConfig,
             seed: int = 0, on_chunk=None) -> dict[str, Any]:
    """Greedy accuracy plus, with cfg.samples = k > 0, pass@1..k, maj@k and mean@k from k samples per prompt.
    `on_chunk(prompts_done)` after each sampled chunk: len(examples) prompts greedy, as many again with k > 0."""
    greedy = evaluate_greedy(model, tokenizer, task, examples, prompt, cfg.max_new_tokens, cfg.batch_size,
                             on_chunk)
    texts = greedy.pop("completions")
    result: dict[str, Any] = {"n": len(examples), **greedy,
                              "reflections/mean": sum(map(count_reflections, texts)) / len(texts),
                              "examples": [{"prompt": ex.prompt, "answer": ex.answer, "completion": t,
                                            "reward": task.verify(ex, t)} for ex, t in list(zip(examples, texts))[:5]]}
    k = cfg.samples
    if k > 0:
        params = SamplingParams(n=k, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                eos_ids=eos_ids(tokenizer, model))
        gen = torch.Generator().manual_seed(seed)
        samples, _ = sample_texts(model, tokenizer, encode_prompts(tokenizer, examples, prompt), params,
                                  cfg.batch_size, generator=gen, on_chunk=on_chunk)
        pass_k = {j: 0.0 for j in sorted({1, k})}
        maj = mean = 0.0
        for i, ex in enumerate(examples):
            group = samples[i * k : (i + 1) * k]
            correct = [task.verify(ex, t) >= 1.0 for t in group]
            for j in pass_k:
                pass_k[j] += pass_at_k(k, sum(correct), j)
            maj += maj_at_k([extract_answer(t) for t in group], correct, k)
            mean += sum(correct) / k
        n = len(examples)
        result.update({f"pass@{j}": v / n for j, v in pass_k.items()})
        result.update({f"maj@{k}": maj / n, f"mean@{k}": mean / n})
    return result


def merge_eval(parts: list[tuple[dict[str, Any], int]]) -> dict[str, Any]:
    """One evaluation from the (result, examples) of each process's share of the test split: every float
    is a mean over examples, so the merge weights it by share size; `n` adds up; the rest is rank 0's.

    >>> merge_eval([({"n": 3, "accuracy": 1.0, "examples": [1]}, 3), ({"n": 1, "accuracy": 0.0, "examples": []}, 1)])
    {'n': 4, 'accuracy': 0.75, 'examples': [1]}
    """
    total = sum(n for _, n in parts)
    out = dict(parts[0][0])
    for key, value in out.items():
        if key == "n":
            out[key] = total
        elif isinstance(value, float):
            out[key] = sum(r[key] * n for r, n in parts if n) / max(total, 1)
    return out


def run_eval(recipe: Recipe, out: Path, stages: tuple[str, ...] = STAGES) -> dict[str, dict[str, Any]]:
    """Evaluate each finished stage folder in `out` on the same test split; write `out/eval.json`.
    Under several processes each evaluates its share of the split (every world-th problem) and rank 0
    writes the merged result (greedy metrics equal the single-process ones; sampled ones use other noise)."""
    from .infra.distributed import current
    from .infra.runtime import console, log_eval, progress, setup
    from .infra.stage import base_model, build_task_from

    device = setup(recipe.run.seed, recipe.run.threads, recipe.run.device)
    task = build_task_from(recipe)
    test = task.examples("test", recipe.task.test_size, recipe.run.seed)
    folders = {"base": base_model(recipe, out)} if "base" in stages else {}
    folders.update({s: out / s for s in stages if s != "base" and is_complete(out / s)})
    results = {}
    path = out / "eval.json"
    if path.exists():
        results = json.loads(path.read_text())
    for name, folder in folders.items():
        model = load_model(folder, recipe.run.dtype, device).eval()
        tokenizer = load_tokenizer(folder, recipe.model.chat_template)
        dist = current()
        mine = test[dist.rank :: dist.world]
        with progress(recipe.run.quiet or not dist.is_main) as bar:
            bar_id = bar.add_task(f"eval {name}", total=len(mine) * (2 if recipe.eval.samples > 0 else 1), info="")
            result = (evaluate(model, tokenizer, task, mine, recipe.prompt, recipe.eval, recipe.run.seed,
                               functools.partial(bar.advance, bar_id)) if mine else {"n": 0})
        results[name] = merge_eval(dist.gather_objects((result, len(mine))))
        console.print(f"eval {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in results[name].items()
                                                      if isinstance(v, float)))
    if current().is_main:
        path.write_text(json.dumps(results, indent=1))
        log_eval(recipe, out, results)
    return results
