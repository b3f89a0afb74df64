"""Rollout sampler throughput: TorchSampler (static and dynamic cache) and HFSampler against plain
`model.generate`, side by side in one run on the tiny model, 2 torch threads.

    python bench/sampler.py [--batch 1 32 128 --new 64 --repeats 3 --group 1 --eos-frac 0 --no-rl --size demo]

Random weights. With the default `--eos-frac 0` no eos id is passed, so every completion runs the
full `--new` tokens (generate gets `eos_token_id=[]` and never stops early either). `--eos-frac f`
makes the most likely tokens that hold about f of the next-token probability mass eos ids, so rows
end at varied lengths as RL rollouts do (generate gets the same eos ids). `--group G` samples G
completions per prompt (batch/G distinct prompts), as GRPO does. A second, RL-like table follows
(`--rl-group 8 --rl-eos-frac 0.03`; `--no-rl` skips it). Each backend runs once to warm up,
then `--repeats` times interleaved with the others; the table shows the best run (the least disturbed
by other processes) and tokens/s counts generated tokens (up to and including eos). `--batch` takes
several sizes (default 1, 32 and 128): one table each, then a summary line per batch size with the
ratio of TorchSampler (dynamic) to `generate`, best and median. `--size` picks the model: `demo`
(3 layers, 128 wide, 0.8M parameters) or bench/rlbench.py's `0.5M` / `20M`.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from coldstart.models import build_char_tokenizer, build_tiny_model  # noqa: E402
from coldstart.rollout import HFSampler, SamplingParams, TorchSampler  # noqa: E402


def make_prompts(tokenizer, batch: int, seed: int) -> list[list[int]]:
    """`batch` random prompts of 10-40 printable characters (different lengths: left padding matters)."""
    rng = random.Random(seed)
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789 +-*=?"
    return [tokenizer.encode("".join(rng.choice(alphabet) for _ in range(rng.randint(10, 40))))
            for _ in range(batch)]


def eos_for_mass(model, prompts: list[list[int]], frac: float) -> list[int]:
    """The most likely next tokens after the prompts, in order, until they hold `frac` of the mass."""
    if frac <= 0:
        return []
    with torch.inference_mode():
        probs = torch.stack([model(input_ids=torch.tensor([p])).logits[0, -1].softmax(-1) for p in prompts[:16]])
    mean = probs.mean(0)
    order = mean.argsort(descending=True)
    count = int((mean[order].cumsum(0) < frac).sum()) + 1
    return order[:count].tolist()


def run_generate(model, prompts, params):
    """Plain `model.generate` sampling, the baseline; returns generated tokens (eos counted)."""
    ids = [p for p in prompts for _ in range(params.n)]
    width = max(len(p) for p in ids)
    input_ids = torch.tensor([[0] * (width - len(p)) + p for p in ids])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in ids])
    with torch.inference_mode():
        out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=params.max_new_tokens,
                             do_sample=True, temperature=1.0, top_k=0, top_p=1.0, eos_token_id=params.eos_ids,
                             pad_token_id=0)
    new = out[:, width:]
    if not params.eos_ids:
        return new.numel()
    is_eos = torch.isin(new, torch.tensor(params.eos_ids))
    ends = torch.where(is_eos.any(1), is_eos.long().argmax(1) + 1, new.shape[1])
    return int(ends.sum())


def backends(tokenizer):
    """name → function(model, prompts, params) returning the number of generated tokens."""
    def via(sampler):
        return lambda model, prompts, params: int(sampler.sample(model, prompts, params).lengths.sum())
    return {
        "hf generate": run_generate,
        "HFSampler": via(HFSampler(tokenizer)),
        "TorchSampler dynamic": via(TorchSampler(tokenizer, cache="dynamic")),
        "TorchSampler static": via(TorchSampler(tokenizer, cache="static")),
    }


SIZES = {"demo": {}, "0.5M": {"hidden_size": 128, "intermediate_size": 512, "layers": 2, "heads": 4},
         "20M": {"hidden_size": 512, "intermediate_size": 2048, "layers": 6, "heads": 8}}  # as bench/rlbench.py


def measure(batch: int, group: int, new: int, eos_frac: float, repeats: int, seed: int, size: str = "demo"):
    """Interleaved timings of every backend on one workload: backend → [(seconds, tokens), ...]."""
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(len(tokenizer), **SIZES[size]).eval()
    prompts = make_prompts(tokenizer, batch // group, seed)
    params = SamplingParams(n=group, max_new_tokens=new, temperature=1.0,
                            eos_ids=eos_for_mass(model, prompts, eos_frac), seed=seed)
    runs = backends(tokenizer)
    times: dict[str, list[tuple[float, int]]] = {name: [] for name in runs}
    for fn in runs.values():  # warm-up
        fn(model, prompts, params)
    for _ in range(repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            tokens = fn(model, prompts, params)
            times[name].append((time.perf_counter() - start, tokens))
    return times


def table(times: dict[str, list[tuple[float, int]]]) -> str:
    """Plain-text table: backend, best seconds, tokens/s (best and median), ratio vs hf generate."""
    rates = {name: [tok / sec for sec, tok in runs] for name, runs in times.items()}
    base = max(rates["hf generate"])
    lines = [f"{'backend':<22} {'best s':>8} {'tokens':>7} {'tok/s best':>11} {'tok/s median':>13} {'vs generate':>12}"]
    for name, runs in times.items():
        sec, tok = min(runs)
        lines.append(f"{name:<22} {sec:>8.3f} {tok:>7d} {max(rates[name]):>11.0f} "
                     f"{statistics.median(rates[name]):>13.0f} {max(rates[name]) / base:>11.2f}x")
    return "\n".join(lines)


def ratios(times: dict[str, list[tuple[float, int]]], name: str = "TorchSampler dynamic") -> tuple[float, float]:
    """(ratio of best tokens/s, ratio of median tokens/s) of backend `name` to hf generate."""
    rates = {k: [tok / sec for sec, tok in runs] for k, runs in times.items()}
    return (max(rates[name]) / max(rates["hf generate"]),
            statistics.median(rates[name]) / statistics.median(rates["hf generate"]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 32, 128],
                        help="completions per call (prompts × group); one table per value")
    parser.add_argument("--new", type=int, default=64, help="max new tokens")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--group", type=int, default=1, help="completions per prompt")
    parser.add_argument("--eos-frac", type=float, default=0.0, help="next-token mass given to eos ids (0: none)")
    parser.add_argument("--rl-group", type=int, default=8, help="group of the second, RL-like workload")
    parser.add_argument("--rl-eos-frac", type=float, default=0.03, help="eos mass of the RL-like workload")
    parser.add_argument("--no-rl", action="store_true", help="skip the RL-like workload")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", choices=list(SIZES), default="demo", help="model size")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    workloads = [(b, args.group, args.eos_frac) for b in args.batch]
    if not args.no_rl:  # the RL shape at the largest batch
        workloads.append((max(args.batch), args.rl_group, args.rl_eos_frac))
    for batch, group, _ in workloads:
        if batch % group:
            parser.error(f"--batch {batch} must be a multiple of the group {group} (or pass --no-rl)")
    summary = []
    for batch, group, eos_frac in workloads:
        print(f"\n{args.size} model, batch {batch} = {batch // group} prompts x {group}, up to {args.new} new tokens, "
              f"eos mass {eos_frac}, torch threads {args.threads}, best of {args.repeats}")
        times = measure(batch, group, args.new, eos_frac, args.repeats, args.seed, args.size)
        print(table(times))
        summary.append((batch, group, eos_frac, ratios(times)))
    print("\nTorchSampler dynamic / generate tokens/s:")
    for batch, group, eos_frac, (best, median) in summary:
        print(f"  batch {batch:>4} ({batch // group} x {group}, eos mass {eos_frac}): {best:.2f}x best, "
              f"{median:.2f}x median")


if __name__ == "__main__":
    main()
