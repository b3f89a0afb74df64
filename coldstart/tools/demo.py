"""`coldstart demo`: the cold-start finding, reproduced offline on a tiny model in minutes.

Five arms on the same held-out test split, all through the same stage code as `coldstart run`
(sft.train, rl.train, evaluate.evaluate) with recipe overrides, nothing demo-only:

    base      the untrained model
    sft       SFT on a small budget of traces (recipe demo.yaml), best val checkpoint
    rl        RL from the untrained model on answer-only prompts, the same RL budget as sft_rl
    sft_rl    the sft checkpoint, then RL on answer-only prompts (no traces)
    sft_more  the sft checkpoint trained on its traces for as long as sft_rl's RL took (equal compute)

It prints a table (greedy accuracy, pass@k, wall seconds, zero-std share of RL groups), writes
`DIR/results.json` and a plot `DIR/demo.png` (val accuracy against wall time), and ends with one sentence
computed from the numbers. `--quick` runs smaller budgets with the same arms.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from rich.table import Table

from .. import rl, sft
from ..config import Recipe, load_recipe, save_recipe
from ..evaluate import evaluate
from ..infra.runtime import console, setup
from ..infra.stage import base_model, build_task_from
from ..models import load_model, load_tokenizer

# --quick: the same model, task and SFT (a weaker cold start makes RL's first steps worse, not better),
# fewer RL steps, smaller val/test splits.
QUICK = ["sft.eval_every=130", "rl.steps=24", "rl.eval_every=6", "rl.save_every=24", "task.test_size=200",
         "task.val_size=100", "eval.samples=4"]


def demo_recipe(quick: bool, out: Path, extra: list[str] = ()) -> Recipe:
    """The packaged demo recipe (with the quick overrides), writing into `out`."""
    path = resources.files("coldstart") / "recipes" / "demo.yaml"
    with resources.as_file(path) as p:
        recipe = load_recipe(p, (QUICK if quick else []) + list(extra) + [f"run.out={out}"])
    recipe.run.quiet = True
    return recipe


def _arm(recipe: Recipe, **sections: dict[str, Any]) -> Recipe:
    """A copy of the recipe with some fields of some sections replaced."""
    data = recipe.model_dump()
    for section, values in sections.items():
        data[section].update(values)
    return Recipe.model_validate(data)


def _curve(stage: Path, key: str, offset: float) -> list[tuple[float, float]]:
    rows = [json.loads(ln) for ln in (stage / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    return [(offset + r["time/elapsed_s"], r[key]) for r in rows if r.get(key) is not None]


def _summary(stage: Path) -> dict[str, Any]:
    return json.loads((stage / "complete.json").read_text())


def _zero_std(stage: Path) -> float:
    rows = [json.loads(ln) for ln in (stage / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    return sum(r["groups/zero_std_frac"] for r in rows) / max(1, len(rows))


def run_demo(out: Path, quick: bool = False, extra: list[str] = ()) -> dict[str, Any]:
    """Run every arm into `out/<arm>/`, evaluate on one test split, write results.json and demo.png."""
    recipe = demo_recipe(quick, out, extra)
    out.mkdir(parents=True, exist_ok=True)
    save_recipe(recipe, out / "config.yaml")
    setup(recipe.run.seed, recipe.run.threads, recipe.run.device)
    task = build_task_from(recipe)
    base = base_model(recipe, out)
    recipe = _arm(recipe, model={"init": "pretrained", "path": str(base)})
    console.print(f"demo: {'quick' if quick else 'full'} run into {out}; base model {base}")

    console.print("demo [1/4] sft: cold start on traces")
    sft_stage = sft.train(recipe, out / "sft_rl")
    console.print("demo [2/4] sft_rl: RL from the SFT checkpoint")
    sft_rl_stage = rl.train(_arm(recipe, rl={"init": str(sft_stage)}), out / "sft_rl")
    rl_seconds = _summary(sft_rl_stage)["seconds"]
    console.print("demo [3/4] rl: RL from the untrained model, same steps (and at most the same seconds)")
    rl_stage = rl.train(_arm(recipe, rl={"init": "model", "max_seconds": rl_seconds}), out / "rl")
    console.print(f"demo [4/4] sft_more: more SFT for the {rl_seconds:.0f}s that RL took")
    more_stage = sft.train(_arm(recipe, sft={
        "init": str(sft_stage), "max_steps": 1_000_000, "max_seconds": rl_seconds, "warmup": 0.0,
        "schedule": "constant", "lr": recipe.sft.lr * recipe.sft.min_lr_ratio}), out / "sft_more")

    sft_s = _summary(sft_stage)["seconds"]
    arms = {"base": (base, 0.0, None), "sft": (sft_stage, sft_s, None),
            "rl": (rl_stage, _summary(rl_stage)["seconds"], _zero_std(rl_stage)),
            "sft_rl": (sft_rl_stage, sft_s + rl_seconds, _zero_std(sft_rl_stage)),
            "sft_more": (more_stage, sft_s + _summary(more_stage)["seconds"], None)}
    test = task.examples("test", recipe.task.test_size, recipe.run.seed)
    results: dict[str, Any] = {"arms": {}, "quick": quick, "test_size": len(test)}
    for name, (folder, seconds, zero_std) in arms.items():
        model = load_model(folder, recipe.run.dtype).eval()
        metrics = evaluate(model, load_tokenizer(folder), task, test, recipe.prompt, recipe.eval, recipe.run.seed)
        k = recipe.eval.samples
        results["arms"][name] = {"accuracy": metrics["accuracy"], "pass@k": metrics.get(f"pass@{k}"), "k": k,
                                 "maj@k": metrics.get(f"maj@{k}"), "seconds": seconds, "zero_std_frac": zero_std,
                                 "length/mean": metrics["length/mean"]}
    curves = {"sft": _curve(sft_stage, "val/accuracy", 0.0), "rl": _curve(rl_stage, "val/accuracy", 0.0),
              "sft_rl": _curve(sft_stage, "val/accuracy", 0.0) + _curve(sft_rl_stage, "val/accuracy", sft_s),
              "sft_more": _curve(sft_stage, "val/accuracy", 0.0) + _curve(more_stage, "val/accuracy", sft_s)}
    results["curves"] = curves
    results["conclusion"] = conclusion(results["arms"])
    (out / "results.json").write_text(json.dumps(results, indent=1))
    plot(results, out / "demo.png")
    print_table(results)
    return results


def print_table(results: dict[str, Any]) -> None:
    """The arms side by side, then the one-sentence conclusion."""
    table = Table(title=f"coldstart demo: held-out accuracy on {results['test_size']} test problems")
    for col in ("arm", "accuracy", "pass@k", "maj@k", "seconds", "zero-std groups", "mean length"):
        table.add_column(col, justify="right" if col != "arm" else "left")
    pct = lambda x: "-" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    for name, a in results["arms"].items():
        table.add_row(name, pct(a["accuracy"]), pct(a["pass@k"]) + f" (k={a['k']})", pct(a["maj@k"]),
                      f"{a['seconds']:.0f}", pct(a["zero_std_frac"]), f"{a['length/mean']:.0f}")
    console.print(table)
    console.print(results["conclusion"])


def conclusion(arms: dict[str, Any]) -> str:
    """One sentence saying what the table shows, computed from the numbers (never a canned claim)."""
    acc = {k: 100 * v["accuracy"] for k, v in arms.items()}
    best_other = max(acc["sft"], acc["sft_more"], acc["rl"])
    zs = arms["rl"]["zero_std_frac"] or 0.0
    if acc["sft_rl"] > best_other:
        head = (f"Cold start + RL wins: sft_rl reaches {acc['sft_rl']:.1f}% held-out accuracy, "
                f"{acc['sft_rl'] - acc['sft']:+.1f} points over SFT alone ({acc['sft']:.1f}%) and "
                f"{acc['sft_rl'] - acc['sft_more']:+.1f} over the same time spent on more SFT "
                f"({acc['sft_more']:.1f}%)")
    else:
        head = (f"This run does not show the cold-start effect: sft_rl {acc['sft_rl']:.1f}% vs sft "
                f"{acc['sft']:.1f}%, sft_more {acc['sft_more']:.1f}%, rl {acc['rl']:.1f}%")
    return (head + f", while RL alone stays at {acc['rl']:.1f}% because {100 * zs:.0f}% of its groups had "
            "identical rewards.")


def plot(results: dict[str, Any], path: Path) -> None:
    """Val accuracy against wall time, one line per arm, final test accuracy as a marker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    colors = {"sft": "tab:blue", "rl": "tab:red", "sft_rl": "tab:green", "sft_more": "tab:orange"}
    for name, points in results["curves"].items():
        if points:  # sft is drawn wide and first: sft_rl and sft_more start on top of its curve
            xs, ys = zip(*points)
            ax.plot(xs, [100 * y for y in ys], "-", color=colors[name], label=name, alpha=0.85,
                    lw=4 if name == "sft" else 1.6, zorder=1 if name == "sft" else 2)
        a = results["arms"][name]
        ax.plot([a["seconds"]], [100 * a["accuracy"]], "o", color=colors[name])
    base = results["arms"]["base"]["accuracy"]
    ax.axhline(100 * base, color="gray", ls=":", label="base")
    ax.set_xlabel("wall seconds (2 CPU cores)")
    ax.set_ylabel("held-out greedy accuracy (%)")
    ax.set_title("cold start + RL vs either alone (lines: val split; dots: final test)")
    ax.legend(loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
