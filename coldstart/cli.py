"""The `coldstart` command.

    coldstart run  RECIPE.yaml [--out DIR] [--resume] [key.sub=value ...]   run.stages: sft → rl → eval
    coldstart sft  RECIPE.yaml [--out DIR] [--resume] [overrides]           the SFT cold start alone
    coldstart rl   RECIPE.yaml [--out DIR] [--resume] [overrides]           RL from DIR/sft (or rl.init)
    coldstart dpo  RECIPE.yaml [--out DIR] [--resume] [overrides]           DPO / SimPO (dpo.init)
    coldstart rsft RECIPE.yaml [--out DIR] [--resume] [overrides]           rejection-sampling FT (rsft.init)
    coldstart eval RECIPE.yaml [--out DIR] [overrides]                      evaluate base / sft / rl
    coldstart demo [--quick] [--out DIR]                                    the cold-start finding, offline
    coldstart inspect RECIPE.yaml [--out DIR] [--prompts N] [--k K] [overrides]  what RL would see, before it
    coldstart report DIR                                                    DIR/report.html: plots, alarms, eval
    coldstart doctor                                                        versions, device, bad combinations

A stage writes into DIR/<stage>/; DIR/config.yaml holds the resolved recipe. Errors in the recipe or the
data exit with code 2 and one message naming the file, line or key.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")




def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="coldstart", description="SFT cold start → RL with verifiable rewards → eval")
    sub = p.add_subparsers(dest="command", required=True,
                           metavar="{run,sft,rsft,dpo,rl,eval,demo,inspect,report,doctor}")
    helps = {"run": "run the recipe's stages in order (run.stages, default sft → rl → eval)",
             "sft": "the SFT cold start",
             "rl": "reinforcement fine-tuning",
             "rsft": "rejection-sampling fine-tuning (expert iteration; Hint-RFT with rsft.hints)",
             "dpo": "preference optimisation (DPO / SimPO) on chosen/rejected pairs",
             "eval": "evaluate every finished stage on the test split"}
    for name, text in helps.items():
        s = sub.add_parser(name, help=text, description=text)
        s.add_argument("recipe", help="recipe YAML file")
        s.add_argument("overrides", nargs="*", help="dotted overrides, e.g. rl.steps=20 sft.traces=0.5")
        s.add_argument("--out", help="run folder (default: run.out of the recipe)")
        s.add_argument("--resume", action="store_true", help="continue from the last checkpoint of each stage")
    d = sub.add_parser("demo", help="cold start + RL vs either alone, offline on a tiny model",
                       description="Runs the demo arms (base, sft, rl, sft_rl, sft_more) and prints the table.")
    d.add_argument("--quick", action="store_true", help="a smaller run (about 4 minutes on 2 cores)")
    d.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    i = sub.add_parser("inspect", help="sample from RL's starting model and check the recipe before training",
                       description="Pass rates, flat groups, lengths and format agreement; writes DIR/inspect.json.")
    i.add_argument("recipe", help="recipe YAML file")
    i.add_argument("overrides", nargs="*", help="dotted overrides, e.g. rl.max_new_tokens=256")
    i.add_argument("--out", help="run folder (default: run.out of the recipe)")
    i.add_argument("--prompts", type=int, default=32, help="training prompts to sample (default 32)")
    i.add_argument("--k", type=int, default=None, help="samples per prompt (default rl.group_size)")
    r = sub.add_parser("report", help="write DIR/report.html: plots over steps, alarms, eval table, samples")
    r.add_argument("dir", help="run folder")
    sub.add_parser("doctor", help="library versions, the device, and known bad combinations (exit 1 if any)")
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
    if bad or (extra and args.command in ("demo", "report", "doctor")):
        parser.error(f"unrecognized arguments: {' '.join(bad or extra)}")
    if args.command not in ("demo", "report", "doctor"):
        args.overrides = [*args.overrides, *extra]
    if args.command == "doctor":  # before importing transformers, which may be what is broken
        from .tools.doctor import run_doctor

        return run_doctor()
    _quiet_libraries()
    from .config import ConfigError, load_recipe, save_recipe
    from .infra.runtime import console
    from .rewards.combine import RewardFailure

    try:
        if args.command == "demo":
            from .tools.demo import run_demo

            run_demo(Path(args.out), quick=args.quick)
            return 0
        if args.command in ("inspect", "report"):
            return _user_side(args)
        recipe = load_recipe(args.recipe, args.overrides)
        out = Path(args.out or recipe.run.out)
        recipe.run.out = str(out)
        out.mkdir(parents=True, exist_ok=True)
        if os.environ.get("RANK", "0") == "0":  # under accelerate / torchrun only rank 0 writes files
            save_recipe(recipe, out / "config.yaml")
        stages = tuple(recipe.run.stages) if args.command == "run" else (args.command,)
        run_stages(recipe, out, stages, args.resume)
        return 0
    except (ConfigError, ValueError, FileNotFoundError, KeyError) as e:
        console.print(f"error: {e}", style="red")
        return 2
    except (FloatingPointError, RewardFailure) as e:  # training cannot go on
        console.print(f"error: {e}", style="red")
        return 3
    finally:
        _close_process_group()


def _close_process_group() -> None:
    """Tear down torch.distributed's group before the interpreter exits: a gloo group left alive aborts the
    process at exit now and then ("terminate called without an active exception", exit -6) after all the
    work is done, which the launcher reports as a failed run."""
    import torch.distributed as torch_dist

    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def _user_side(args) -> int:
    """`inspect` and `report` (coldstart/tools/inspect.py, report.py)."""
    from .infra.runtime import console

    if args.command == "report":
        from .tools.report import build_report

        console.print(f"report: {build_report(Path(args.dir))}")
        return 0
    from .config import load_recipe
    from .tools.inspect import inspect_recipe, print_report

    recipe = load_recipe(args.recipe, args.overrides)
    out = Path(args.out or recipe.run.out)
    report = inspect_recipe(recipe, out, prompts=args.prompts, k=args.k)
    print_report(report)
    console.print(f"inspect: wrote {out / 'inspect.json'}")
    return 0


def run_stages(recipe, out: Path, stages: tuple[str, ...], resume: bool) -> None:
    """Run the named stages in order; a finished stage is skipped by `run` unless asked for alone."""
    import importlib

    from .config import TRAINING_STAGES
    from .evaluate import run_eval
    from .infra.checkpoint import is_complete
    from .infra.runtime import console

    if "rl" in stages:  # an algorithm the RL stage refuses is refused now, not after the stages before it
        from .rl.loop import checked_algorithms

        checked_algorithms(recipe.rl)
    for stage in stages:
        if stage == "eval":
            run_eval(recipe, out, ("base", *[s for s in recipe.run.stages if s != "eval"]))
            continue
        if len(stages) > 1 and is_complete(out / stage):
            console.print(f"{stage}: already complete in {out / stage}, skipped")
            continue
        module, fn = TRAINING_STAGES[stage].train.split(":")
        getattr(importlib.import_module(module), fn)(recipe, out, resume=resume)


if __name__ == "__main__":
    sys.exit(main())
