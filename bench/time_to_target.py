"""Time to a target held-out accuracy: coldstart RL (dynamic sampling) against TRL's GRPOTrainer.

    python bench/time_to_target.py --sft runs/bench-ttt/sft [--target 0.85] [--budget 300] [--eval-every 5]

Both start from one SFT checkpoint of the demo task (`coldstart sft recipes/demo.yaml --out runs/bench-ttt`
makes it) and train with the demo's RL settings: 32 prompts × 8 completions, up to 96 new tokens, lr 3e-4,
the task's verifier as the only reward, GRPO advantages, token-mean (DAPO) loss, clip 0.2/0.28, no KL,
μ = 1, fp32, 2 threads. coldstart runs `rl_step` with `rl.filter: dynamic` (its recommended filter, DAPO
dynamic sampling, up to 3 resampling rounds); TRL's GRPOTrainer has no group filter, so it runs plain GRPO
(`loss_type="dapo"`, `beta=0`, `use_vllm=False`). The two alternate step by step in one process
(bench/rlbench.py), and every `--eval-every` steps each is evaluated with the same code
(`coldstart.evaluate.evaluate_greedy`, greedy, on the same 200 val problems); evaluation time is not
counted. An arm stops when it reaches `--target` or has trained for `--budget` seconds; the other goes
on alone. Prints each arm's accuracy curve against training seconds and the ratio of times to target.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from rlbench import ColdstartArm, Setup, build_trl_trainer, greedy_accuracy, make_interleave  # noqa: E402
from rlbench import scratch_dir as _scratch  # noqa: E402


class Race:
    """The state of one arm: training seconds, steps, (seconds, step, accuracy) evaluations, done flag."""

    def __init__(self, name: str, target: float, budget: float, every: int):
        self.name, self.target, self.budget, self.every = name, target, budget, every
        self.seconds, self.steps, self.evals, self.done = 0.0, 0, [], False
        self.gen_s = 0.0

    def record(self, seconds: float, gen_s: float, evaluate) -> bool:
        """Count one step of `seconds`; evaluate when due; returns True once the arm is finished."""
        self.seconds += seconds
        self.gen_s += gen_s
        self.steps += 1
        if self.steps % self.every == 0 or self.seconds >= self.budget:
            acc = evaluate()
            self.evals.append((self.seconds, self.steps, acc))
            print(f"  {self.name:<9} step {self.steps:>3}  {self.seconds:>6.0f} s  val acc {acc:.1%}", flush=True)
            self.done = acc >= self.target
        self.done = self.done or self.seconds >= self.budget
        return self.done

    def hit(self) -> tuple[float, int] | None:
        """(seconds, steps) of the first evaluation at or above the target, or None."""
        return next(((s, n) for s, n, a in self.evals if a >= self.target), None)


def run(sft: Path, target: float, budget: float, every: int, seed: int, shape: tuple[int, int, int] = (32, 8, 96),
        val_size: int = 200, filter: str = "dynamic", overrides: tuple[str, ...] = (),
        trl_arm: bool = True) -> tuple[Race, Race, float]:
    """Race both arms from `sft` with (prompts, group, max new tokens) = `shape`; returns (coldstart, TRL,
    starting accuracy). `filter` and `overrides` change the coldstart arm only; without `trl_arm` coldstart
    runs alone (for exploring its settings: a ratio needs both arms in one run)."""
    prompts, group, new = shape
    common = {"folder": sft, "prompts_per_step": prompts, "group_size": group, "max_new_tokens": new, "lr": 3e-4,
              "reward": "task", "seed": seed, "val_size": val_size}
    cold = ColdstartArm(Setup(**common, filter=filter, overrides=overrides))
    val = cold.setup.val()
    start_acc = greedy_accuracy(cold.policy, cold.tokenizer, val, new)
    print(f"  start (the SFT checkpoint): val acc {start_acc:.1%}", flush=True)
    races = {"coldstart": Race("coldstart", target, budget, every), "TRL": Race("TRL", target, budget, every)}
    trainer_box: list = []

    def cold_step():
        if races["coldstart"].done:
            return
        row = cold.step()
        races["coldstart"].record(row["time/step_s"], row["time/generate_s"],
                                  lambda: greedy_accuracy(cold.policy, cold.tokenizer, val, new))

    def trl_step(row: dict) -> bool:
        trainer = trainer_box[0]
        return races["TRL"].record(row["time/step_s"], row["time/generate_s"],
                                   lambda: greedy_accuracy(trainer.model, trainer.processing_class, val, new))

    if not trl_arm:
        races["TRL"].done = True
        while not races["coldstart"].done:
            cold_step()
        return races["coldstart"], races["TRL"], start_acc
    setup = Setup(**common)
    callback = make_interleave(setup, cold_step, trl_step)
    trainer = build_trl_trainer(setup, 100_000, _scratch(), [callback])
    callback.trainer = trainer
    trainer_box.append(trainer)
    trainer.train()
    while not races["coldstart"].done:  # TRL finished first: coldstart goes on alone
        cold_step()
    return races["coldstart"], races["TRL"], start_acc


def report(cold: Race, trl: Race, target: float, budget: float) -> str:
    """The result table and the ratio of times to target (or an honest bound)."""
    lines = [f"{'arm':<10} {'steps to target':>16} {'s to target':>12} {'best val acc':>13} {'steps run':>10} "
             f"{'train s':>8} {'s/step':>7} {'gen s/step':>11}"]
    for r in (cold, trl) if trl.steps else (cold,):
        hit = r.hit()
        best = max(a for _, _, a in r.evals) if r.evals else float("nan")
        lines.append(f"{r.name:<10} {hit[1] if hit else 'not reached':>16} "
                     f"{f'{hit[0]:.0f}' if hit else f'> {r.seconds:.0f}':>12} {best:>12.1%} {r.steps:>10} "
                     f"{r.seconds:>8.0f} {r.seconds / max(r.steps, 1):>7.2f} {r.gen_s / max(r.steps, 1):>11.2f}")
    ch, th = cold.hit(), trl.hit()
    if not trl.steps:
        verdict = (f"coldstart alone (no TRL arm, no ratio): {ch[0]:.0f} s to {target:.0%}" if ch else
                   f"coldstart alone did not reach {target:.0%} in {cold.seconds:.0f} s")
    elif ch and th:
        verdict = f"coldstart / TRL time to {target:.0%}: {ch[0] / th[0]:.2f}x"
    elif ch:
        verdict = (f"TRL did not reach {target:.0%} in {trl.seconds:.0f} s of training; coldstart / TRL time to "
                   f"target < {ch[0] / trl.seconds:.2f}x")
    elif th:
        verdict = f"coldstart did not reach {target:.0%} in {cold.seconds:.0f} s; TRL did in {th[0]:.0f} s"
    else:
        verdict = f"neither reached {target:.0%} within {budget:.0f} s of training"
    return "\n".join([*lines, verdict])


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, race the two arms, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sft", required=True, help="the SFT checkpoint folder both arms start from")
    parser.add_argument("--target", type=float, default=0.85)
    parser.add_argument("--budget", type=float, default=300, help="training seconds per arm")
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--new", type=int, default=96, help="max new tokens (training and evaluation)")
    parser.add_argument("--val-size", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (both arms)")
    parser.add_argument("--filter", default="dynamic", help="coldstart's rl.filter (TRL has none)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="more coldstart recipe overrides, e.g. --set rl.max_resample=1 (repeatable)")
    parser.add_argument("--coldstart-only", action="store_true", help="no TRL arm (exploring; no ratio)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    torch.manual_seed(args.seed)
    import trl

    print(f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.machine()}, torch {torch.__version__}, "
          f"trl {trl.__version__}, {args.threads} threads; from {args.sft}, target {args.target:.0%}, "
          f"budget {args.budget:.0f} s")
    start = time.perf_counter()
    cold, trl_race, start_acc = run(Path(args.sft), args.target, args.budget, args.eval_every, args.seed,
                                   (args.prompts, args.group, args.new), args.val_size, args.filter,
                                   tuple(args.set), not args.coldstart_only)
    print(f"coldstart: rl.filter={args.filter} {' '.join(args.set)}")
    print(f"\nstarting val acc {start_acc:.1%}; wall {time.perf_counter() - start:.0f} s (evaluations included)")
    print(report(cold, trl_race, args.target, args.budget))


if __name__ == "__main__":
    main()
