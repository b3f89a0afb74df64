"""The `coldstart` command.

    coldstart run  RECIPE.yaml [--out DIR] [--resume] [key.sub=value ...]   sft → rl → eval
    coldstart sft  RECIPE.yaml [--out DIR] [--resume] [overrides]           the SFT cold start alone
    coldstart rl   RECIPE.yaml [--out DIR] [--resume] [overrides]           RL from DIR/sft (or rl.init)
    coldstart eval RECIPE.yaml [--out DIR] [overrides]                      evaluate base / sft / rl
    coldstart demo [--quick] [--out DIR]                                    the cold-start finding, offline

A stage writes into DIR/<stage>/; DIR/config.yaml holds the resolved recipe. Errors in the recipe or the
data exit with code 2 and one message naming the file, line or key.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# Each training stage: `module:function(recipe, out, resume=False) -> stage folder`.
STAGES = {"sft": "coldstart.sft:train", "rl": "coldstart.rl:train"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="coldstart", description="SFT cold start → RL with verifiable rewards → eval")
    sub = p.add_subparsers(dest="command", required=True, metavar="{run,sft,rl,eval,demo}")
    helps = {"run": "run the recipe's stages in order (sft → rl → eval)", "sft": "the SFT cold start",
             "rl": "reinforcement fine-tuning", "eval": "evaluate every finished stage on the test split"}
    for name, text in helps.items():
        s = sub.add_parser(name, help=text, description=text)
        s.add_argument("recipe", help="recipe YAML file")
        s.add_argument("overrides", nargs="*", help="dotted overrides, e.g. rl.steps=20 sft.traces=0.5")
        s.add_argument("--out", help="run folder (default: run.out of the recipe)")
        s.add_argument("--resume", action="store_true", help="continue from the last checkpoint of each stage")
    d = sub.add_parser("demo", help="cold start + RL vs either alone, offline on a tiny model",
                       description="Runs the demo arms (base, sft, rl, sft_rl, sft_more) and prints the table.")
    d.add_argument("--quick", action="store_true", help="a smaller run (about 3 minutes on 2 cores)")
    d.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    return p


def _quiet_libraries() -> None:
    import logging
    import warnings

    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("datasets").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning, module="transformers")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    # Overrides may come before or after --out/--resume: collect the leftovers that look like key=value.
    args, extra = parser.parse_known_args(argv)
    bad = [x for x in extra if x.startswith("-") or "=" not in x]
    if bad or (extra and args.command == "demo"):
        parser.error(f"unrecognized arguments: {' '.join(bad or extra)}")
    if args.command != "demo":
        args.overrides = [*args.overrides, *extra]
    _quiet_libraries()
    from .config import ConfigError, load_recipe, save_recipe
    from .runtime import console

    try:
        if args.command == "demo":
            from .demo import run_demo

            run_demo(Path(args.out), quick=args.quick)
            return 0
        recipe = load_recipe(args.recipe, args.overrides)
        out = Path(args.out or recipe.run.out)
        recipe.run.out = str(out)
        out.mkdir(parents=True, exist_ok=True)
        save_recipe(recipe, out / "config.yaml")
        stages = tuple(recipe.run.stages) if args.command == "run" else (args.command,)
        run_stages(recipe, out, stages, args.resume)
        return 0
    except (ConfigError, ValueError, FileNotFoundError, KeyError) as e:
        console.print(f"[red]error:[/red] {e}", markup=True, highlight=False)
        return 2
    except FloatingPointError as e:
        console.print(f"[red]error:[/red] {e}")
        return 3


def run_stages(recipe, out: Path, stages: tuple[str, ...], resume: bool) -> None:
    """Run the named stages in order; a finished stage is skipped by `run` unless asked for alone."""
    import importlib

    from .checkpoint import is_complete
    from .evaluate import run_eval
    from .runtime import console

    for stage in stages:
        if stage == "eval":
            run_eval(recipe, out, ("base", *[s for s in recipe.run.stages if s != "eval"]))
            continue
        if len(stages) > 1 and is_complete(out / stage):
            console.print(f"{stage}: already complete in {out / stage}, skipped")
            continue
        module, fn = STAGES[stage].split(":")
        getattr(importlib.import_module(module), fn)(recipe, out, resume=resume)


if __name__ == "__main__":
    sys.exit(main())
