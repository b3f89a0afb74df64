"""The machine's limit: measured fp32 matmul FLOP/s, and how much of it coldstart's SFT step and sampler reach.

    python bench/roofline.py [--sizes 0.5M 20M] [--threads 2] [--repeats 5]

1. Peak: the best FLOP/s of large square fp32 matmuls (2·n³ FLOPs for n × n by n × n) on `--threads` torch
   threads; the roofline every utilization below is a fraction of.
2. Training: coldstart's SFT forward + backward (`coldstart.sft.collate` in the layout that training picks,
   `pack_is_cheaper`; `masked_lm_loss`, `.backward()`) on demo-task traces, `--sft-batch` traces per step.
   FLOPs per step are counted, not estimated from a profiler: 3 × forward, forward = 2 × (weights of every
   Linear, the tied LM head included) per token + attention 2 × 2 × layers × d × (causal context) per token
   (QKᵀ and AV, each multiply-add; within each sequence only, as causal attention needs: padding and a packed
   row's dense mask are not counted). The optimizer step is timed apart.
3. Decode: coldstart's TorchSampler (dynamic cache), batch `--sample-batch` prompts × 1, `--new` new tokens,
   no eos (every row runs the full length): prefill 2·W per prompt token (+ attention) and 2·W per
   generated token + attention over the cache (4 × layers × d × context).

Utilization = counted FLOPs / seconds / peak. Each measurement is repeated and the median reported (best in
brackets), interleaved across sizes so that load from other processes hits all of them alike.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from coldstart.config import PromptConfig  # noqa: E402
from coldstart.evaluate import encode_prompts  # noqa: E402
from coldstart.models import build_char_tokenizer, build_tiny_model  # noqa: E402
from coldstart.prompts import chat_format  # noqa: E402
from coldstart.rollout import SamplingParams, TorchSampler  # noqa: E402
from coldstart.sft import collate, encode_trace, masked_lm_loss, pack_is_cheaper  # noqa: E402
from coldstart.tasks import build_task  # noqa: E402

SIZES = {"0.5M": {"hidden_size": 128, "intermediate_size": 512, "layers": 2, "heads": 4},
         "20M": {"hidden_size": 512, "intermediate_size": 2048, "layers": 6, "heads": 8}}  # as bench/rlbench.py


def matmul_peak(sizes: tuple[int, ...] = (1024, 2048, 3072), repeats: int = 5) -> dict[int, list[float]]:
    """FLOP/s of n × n fp32 matmuls for each n: n → [FLOP/s per repeat]."""
    out = {}
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        c = torch.empty(n, n)
        torch.mm(a, b, out=c)  # warm-up
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(a, b, out=c)
            runs.append(2 * n**3 / (time.perf_counter() - start))
        out[n] = runs
    return out


def linear_weights(model) -> int:
    """Elements of every Linear weight, the LM head included (tied or not): 2 × this is the forward matmul
    FLOPs per token."""
    total = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    return total


def attention_flops(layers: int, d: int, context: int) -> int:
    """Forward attention FLOPs of one token attending to `context` positions: QKᵀ and AV, 2 FLOPs per
    multiply-add each."""
    return 4 * layers * d * context


def traces(tokenizer, n: int, seed: int = 0):
    """`n` encoded demo-task SFT traces (prompt + think trace + answer + eos)."""
    task = build_task("arithmetic", {"digits": 3, "min_digits": 3, "ops": "+"}, seed=seed)
    fmt = chat_format(tokenizer, "think", system=False)
    return [encode_trace(fmt, ex) for ex in task.examples("train", n, seed)]


def sft_step_flops(model, seqs) -> int:
    """Counted FLOPs of one forward + backward over the sequences, each alone (3 × forward)."""
    cfg = model.config
    w = linear_weights(model)
    fwd = 0
    for s in seqs:
        L = len(s.ids)
        fwd += 2 * w * L + sum(attention_flops(cfg.num_hidden_layers, cfg.hidden_size, i + 1) for i in range(L))
    return 3 * fwd


def time_sft(model, seqs, pad_id: int, repeats: int) -> tuple[list[float], list[float]]:
    """Seconds of forward + backward, and of an AdamW step, per repeat (after one warm-up)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95))
    inputs = collate(seqs, pack_is_cheaper(model, [len(s.ids) for s in seqs]), pad_id)
    fb, step = [], []
    for i in range(repeats + 1):
        start = time.perf_counter()
        loss, _ = masked_lm_loss(model, inputs)
        loss.backward()
        mid = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:
            fb.append(mid - start)
            step.append(time.perf_counter() - mid)
    return fb, step


def decode_flops(model, prompt_lens: list[int], width: int, new: int) -> int:
    """Counted FLOPs of sampling `new` tokens for each prompt (left-padded to `width`): prefill of the padded
    prompts, then one forward per generated token but the last (the last token needs no forward)."""
    cfg = model.config
    w, layers, d = linear_weights(model), cfg.num_hidden_layers, cfg.hidden_size
    prefill = len(prompt_lens) * (2 * w * width + sum(attention_flops(layers, d, i + 1) for i in range(width)))
    decode = len(prompt_lens) * sum(2 * w + attention_flops(layers, d, width + t + 1) for t in range(new - 1))
    return prefill + decode


def time_sampler(model, tokenizer, batch: int, new: int, repeats: int) -> tuple[list[float], int, int]:
    """Seconds per sampling call (after one warm-up), counted FLOPs and generated tokens per call."""
    task = build_task("arithmetic", {"digits": 3, "min_digits": 3, "ops": "+"})
    prompts = encode_prompts(tokenizer, task.examples("train", batch, 0), PromptConfig(strategy="think", system=False))
    params = SamplingParams(n=1, max_new_tokens=new, temperature=1.0, eos_ids=[], seed=0)
    sampler = TorchSampler(tokenizer)
    runs = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        ro = sampler.sample(model, prompts, params)
        if i:
            runs.append(time.perf_counter() - start)
    tokens = int(ro.lengths.sum())
    return runs, decode_flops(model, [len(p) for p in prompts], max(map(len, prompts)), new), tokens


def fmt(runs: list[float], scale: float = 1e9) -> str:
    """'median (best)' of FLOP/s-like values, in units of `scale`."""
    return f"{statistics.median(runs) / scale:.1f} ({max(runs) / scale:.1f})"


def main(argv: list[str] | None = None) -> None:
    """Measure the peak, then SFT and sampler utilization per size; print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sft-batch", type=int, default=16, help="traces per SFT step (demo: 16)")
    parser.add_argument("--sample-batch", type=int, default=128)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--matmul", type=int, nargs="+", default=[1024, 2048, 3072], help="square matmul sizes")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    print(f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} threads, median (best) of {args.repeats}")
    mm = matmul_peak(tuple(args.matmul), args.repeats)

    tokenizer = build_char_tokenizer()
    seqs = traces(tokenizer, args.sft_batch)
    models = {s: build_tiny_model(len(tokenizer), max_len=512, **SIZES[s]) for s in args.sizes}
    sft, samp, counts = {s: ([], []) for s in args.sizes}, {s: [] for s in args.sizes}, {}
    for _ in range(args.repeats):  # interleave sizes so that background load hits both alike
        for n, r in matmul_peak((max(args.matmul),), 1).items():  # the peak, re-measured between workloads
            mm[n].extend(r)
        for s, model in models.items():
            fb, st = time_sft(model.train(), seqs, tokenizer.pad_token_id, 1)
            sft[s][0].extend(fb)
            sft[s][1].extend(st)
    for _ in range(max(1, args.repeats // 2)):
        for n, r in matmul_peak((max(args.matmul),), 1).items():
            mm[n].extend(r)
        for s, model in models.items():
            runs, flops, tokens = time_sampler(model, tokenizer, args.sample_batch, args.new, 1)
            samp[s].extend(runs)
            counts[s] = (flops, tokens)
    print("\nfp32 matmul, GFLOP/s: " + ", ".join(f"n={n}: {fmt(r)}" for n, r in mm.items()))
    peak = max(statistics.median(r) for r in mm.values())
    best_peak = max(max(r) for r in mm.values())
    print(f"peak = {peak / 1e9:.1f} GFLOP/s (best median; the largest size is re-measured between workloads), "
          f"best single run {best_peak / 1e9:.1f}; 'of peak' is median/median, 'best/best' the least disturbed")
    n_tok = sum(len(x.ids) for x in seqs)
    print(f"\nSFT forward+backward, {args.sft_batch} traces = {n_tok} tokens per step")
    print(f"{'size':<6} {'params':>8} {'GFLOP/step':>11} {'fwd+bwd s':>10} {'tok/s':>8} {'GFLOP/s':>14} "
          f"{'of peak':>8} {'best/best':>9} {'AdamW s':>8}")
    for s, model in models.items():
        fb, st = sft[s]
        flops = sft_step_flops(model, seqs)
        rates = [flops / t for t in fb]
        print(f"{s:<6} {sum(p.numel() for p in model.parameters()) / 1e6:>7.2f}M {flops / 1e9:>11.2f} "
              f"{statistics.median(fb):>10.4f} {n_tok / statistics.median(fb):>8.0f} {fmt(rates):>14} "
              f"{statistics.median(rates) / peak:>7.1%} {max(rates) / best_peak:>8.1%} {statistics.median(st):>8.4f}")
    print(f"\nTorchSampler (dynamic cache), {args.sample_batch} prompts x 1, {args.new} new tokens, no eos")
    print(f"{'size':<6} {'GFLOP/call':>11} {'s/call':>8} {'tok/s':>8} {'GFLOP/s':>14} {'of peak':>8} {'best/best':>9}")
    for s in models:
        flops, tokens = counts[s]
        rates = [flops / t for t in samp[s]]
        print(f"{s:<6} {flops / 1e9:>11.2f} {statistics.median(samp[s]):>8.3f} "
              f"{tokens / statistics.median(samp[s]):>8.0f} {fmt(rates):>14} {statistics.median(rates) / peak:>7.1%} "
              f"{max(rates) / best_peak:>8.1%}")


if __name__ == "__main__":
    main()
