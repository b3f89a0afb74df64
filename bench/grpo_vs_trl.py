"""GRPO step throughput, coldstart against TRL's GRPOTrainer, side by side in one process (A B A B).

    python bench/grpo_vs_trl.py [--sizes 0.5M 20M] [--steps 8] [--warmup 2] [--out runs/bench-grpo]

For each model size: one saved folder (a tiny Qwen2 with our char tokenizer, random init), 16 arithmetic
prompts × 8 completions × up to 32 new tokens per step, lr 3e-4, no KL, μ = 1, fp32, 2 torch threads;
coldstart's `rl_step` and TRL's `GRPOTrainer.train()` alternate step by step (see bench/rlbench.py for
how each is timed and what is the same). The reward is the task's verifier plus a dense digit-fraction
term, so every group has reward variance and both libraries run the full forward/backward each step.
The first `--warmup` steps of each are dropped; the table shows medians over the rest:

    s/step          whole optimizer step
    gen s           generation (sampling) part of the step
    gen tok/s       generated tokens (eos included) / gen s
    train tok/s     real prompt + completion tokens in the loss / (s/step − gen s)
    end-to-end      generated tokens / s/step

and the ratio coldstart / TRL (for s/step: TRL / coldstart, so > 1 means coldstart is faster), both as the
ratio of medians and as the median of per-pair ratios (each coldstart step against the TRL step just
before it, which shares its machine load).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from rlbench import SIZES, ColdstartArm, Setup, build_trl_trainer, make_interleave, make_model_folder  # noqa: E402
from rlbench import scratch_dir as _scratch  # noqa: E402

METRICS = ("s/step", "gen s", "gen tok/s", "train tok/s", "end-to-end tok/s")


def derived(row: dict) -> dict[str, float]:
    """The table's metrics of one step row."""
    step, gen = row["time/step_s"], row["time/generate_s"]
    return {"s/step": step, "gen s": gen, "gen tok/s": row["tokens/generated"] / gen,
            "train tok/s": row["tokens/train"] / max(step - gen, 1e-9),
            "end-to-end tok/s": row["tokens/generated"] / step}


def compare(size: str, steps: int, warmup: int, out: Path, prompts: int, group: int, new: int) -> dict:
    """Run both arms interleaved on one model size; returns {"params", "cold": [...], "trl": [...]}."""
    folder, params = make_model_folder(out / f"model-{size}", size)
    setup = Setup(folder=folder, prompts_per_step=prompts, group_size=group, max_new_tokens=new)
    cold = ColdstartArm(setup)
    trl_rows: list[dict] = []
    callback = make_interleave(setup, cold.step, lambda row: trl_rows.append(row) and False)
    trainer = build_trl_trainer(setup, warmup + steps, _scratch(), [callback])
    callback.trainer = trainer
    trainer.train()
    return {"params": params, "cold": [derived(r) for r in cold.rows[warmup:]],
            "trl": [derived(r) for r in trl_rows[warmup:]]}


def table(result: dict) -> str:
    """Plain-text table: medians per arm, ratio of medians and median of per-pair ratios."""
    cold, trl = result["cold"], result["trl"]
    lines = [f"{'metric':<18} {'coldstart':>11} {'TRL':>11} {'ratio':>7} {'pair ratio':>11}"]
    for m in METRICS:
        c, t = statistics.median(r[m] for r in cold), statistics.median(r[m] for r in trl)
        inverse = m in ("s/step", "gen s")  # times: TRL / coldstart, so > 1 means coldstart is faster
        pairs = [(b[m] / a[m]) if inverse else (a[m] / b[m]) for a, b in zip(cold, trl)]
        ratio = t / c if inverse else c / t
        lines.append(f"{m:<18} {c:>11.3f} {t:>11.3f} {ratio:>6.2f}x {statistics.median(pairs):>10.2f}x"
                     if c < 100 else f"{m:<18} {c:>11.0f} {t:>11.0f} {ratio:>6.2f}x {statistics.median(pairs):>10.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, run every size, print one table each."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--steps", type=int, default=8, help="timed steps per arm")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first steps per arm")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--new", type=int, default=32, help="max new tokens")
    parser.add_argument("--out", default="runs/bench-grpo", help="where the model folders are saved")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (both arms)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # coldstart's runtime.setup does this; the same for both arms
    import transformers
    import trl

    print(f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}, "
          f"{args.threads} threads")
    for size in args.sizes:
        start = time.perf_counter()
        result = compare(size, args.steps, args.warmup, Path(args.out), args.prompts, args.group, args.new)
        print(f"\n{size} model ({result['params'] / 1e6:.2f}M parameters): {args.prompts} prompts x {args.group}, "
              f"up to {args.new} new tokens, median of {args.steps} interleaved steps each "
              f"({time.perf_counter() - start:.0f} s)")
        print(table(result))


if __name__ == "__main__":
    main()
