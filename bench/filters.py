"""RL group filters side by side: wall time and RL steps to reach a target held-out accuracy.

From one SFT checkpoint of the demo recipe (trained once, reused), run RL with each `rl.filter`
(none, dynamic, dupo, pad) on the same prompts and seed, evaluating greedy accuracy on the val split every
`--eval-every` steps, and print when each first reaches `--target`. WebSailor reports DUPO 2–3× faster
than DAPO dynamic sampling; this measures it on our task.

    python bench/filters.py [--steps 60] [--target 0.85] [--out runs/bench-filters]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from coldstart import rl, sft
from coldstart.cli import _quiet_libraries
from coldstart.infra.checkpoint import is_complete
from coldstart.infra.stage import base_model
from coldstart.tools.demo import _arm, demo_recipe

FILTERS = ("none", "dynamic", "dupo", "pad")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--target", type=float, default=0.85)
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--out", default="runs/bench-filters")
    args = p.parse_args()
    _quiet_libraries()
    out = Path(args.out)
    recipe = demo_recipe(False, out)
    recipe = _arm(recipe, model={"init": "pretrained", "path": str(base_model(recipe, out))})
    if not is_complete(out / "shared" / "sft"):
        sft.train(recipe, out / "shared")
    rows = []
    for name in FILTERS:
        arm = _arm(recipe, rl={"init": str(out / "shared" / "sft"), "filter": name, "steps": args.steps,
                               "eval_every": args.eval_every, "save_every": args.steps})
        if not is_complete(out / name / "rl"):
            rl.train(arm, out / name)
        metrics = [json.loads(x) for x in (out / name / "rl" / "metrics.jsonl").read_text().splitlines()]
        evals = [(m["step"], m["time/elapsed_s"], m["val/accuracy"]) for m in metrics if "val/accuracy" in m]
        hit = next(((s, t) for s, t, a in evals if a >= args.target), None)
        rows.append((name, hit, max(a for _, _, a in evals), metrics[-1]["time/elapsed_s"],
                     sum(m["time/generate_s"] for m in metrics) / len(metrics)))
    table = Table(title=f"RL filters from one SFT checkpoint: steps and seconds to {args.target:.0%} val accuracy")
    for col in ("filter", "steps to target", "seconds to target", "best val acc", "total s", "generate s/step"):
        table.add_column(col, justify="left" if col == "filter" else "right")
    for name, hit, best, total, gen in rows:
        table.add_row(name, str(hit[0]) if hit else "not reached", f"{hit[1]:.0f}" if hit else "-",
                      f"{best:.1%}", f"{total:.0f}", f"{gen:.2f}")
    Console().print(table)


if __name__ == "__main__":
    main()
