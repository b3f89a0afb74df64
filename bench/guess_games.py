"""Guessing-game play of trained models, turn by turn: how many turns, how often solved, and what each guess was.

For each model folder (e.g. the `sft` and `rl` stages of `coldstart run recipes/guess.yaml`), play the recipe's
val games (`task.val_size`) with the recipe's multi-turn rollout, sampled (temperature 1, `--samples` games per
state) and greedy, and classify every guess against the interval the user had named: the midpoint, one off
the midpoint, elsewhere in the interval, outside it, or no number. Also prints what bisecting every turn and
guessing uniformly at random would take on the same games (simulated). The README's multi-turn numbers come
from this script.

    python bench/guess_games.py runs/guess/sft runs/guess/rl [--recipe recipes/guess.yaml] [overrides ...]
"""

from __future__ import annotations

import argparse
import random
import re
from collections import Counter

import torch
from rich.console import Console
from rich.table import Table
from transformers import AutoModelForCausalLM, AutoTokenizer

from coldstart.cli import _quiet_libraries
from coldstart.config import load_recipe
from coldstart.envs.guess import GuessEnv, parse_guess
from coldstart.multiturn import build_multiturn, observation_template
from coldstart.rollout import SamplingParams, build_sampler
from coldstart.tasks import build_task

KINDS = ("mid", "mid±1", "in", "out", "none")


def classify(example, text: str, before: str, after: str) -> Counter:
    """Replay one game's completion text against the environment; count the kinds of guesses (KINDS)."""
    env, counts = GuessEnv(), Counter()
    env.reset(example)
    for turn in re.split(re.escape(before) + r".*?" + re.escape(after), text):
        g, mid = parse_guess(turn), (env.lo + env.hi) // 2
        kind = ("none" if g is None else "mid" if g == mid else "mid±1" if abs(g - mid) == 1
                else "in" if env.lo <= g <= env.hi else "out")
        counts[kind] += 1
        env.step(turn)
    return counts


def simulate(examples, p_bisect: float, max_turns: int, games: int = 200, seed: int = 0) -> float:
    """Mean turns of a player that bisects with probability p_bisect and else guesses uniformly at random."""
    rng, turns = random.Random(seed), []
    for ex in examples:
        for _ in range(games):
            env = GuessEnv()
            env.reset(ex)
            played, done = 0, False
            while not done and played < max_turns:
                g = (env.lo + env.hi) // 2 if rng.random() < p_bisect else rng.randint(env.lo, env.hi)
                done, played = env.step(str(g))[2], played + 1
            turns.append(played)
    return sum(turns) / len(turns)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", help="model folders to play")
    p.add_argument("--recipe", default="recipes/guess.yaml")
    p.add_argument("--samples", type=int, default=8, help="sampled games per val state")
    p.add_argument("overrides", nargs="*", default=[])
    args, extra = p.parse_known_args()
    _quiet_libraries()
    recipe = load_recipe(args.recipe, args.overrides + extra)
    task = build_task(recipe.task.name, recipe.task.options, recipe.run.seed)
    val = task.examples("val", recipe.task.val_size, recipe.run.seed)
    table = Table(title=f"{len(val)} val games of {args.recipe}, at most {recipe.rl.max_turns} turns")
    for col in ("model", "play", "turns/mean", "solved", *KINDS):
        table.add_column(col)
    for path in args.models:
        tok, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path).eval()
        games = build_multiturn(recipe, task, build_sampler(recipe.rl.sampler, tok), tok)
        before, after = observation_template(tok)
        for temp, n in ((1.0, args.samples), (0.0, 1)):
            params = SamplingParams(n=n, max_new_tokens=recipe.rl.max_new_tokens, temperature=temp,
                                    eos_ids=[tok.eos_token_id])
            with torch.no_grad():
                ro, _, res, _ = games(model, val, params, torch.Generator().manual_seed(recipe.run.seed + 1))
            counts = sum((classify(ex, t, before, after) for ex, t in zip([e for e in val for _ in range(n)],
                                                                          ro.texts)), Counter())
            total = sum(counts.values())
            table.add_row(path, "greedy" if temp == 0 else f"T=1 ×{n}", f"{sum(res.turns) / len(res.turns):.2f}",
                          f"{sum(res.solved) / len(res.solved):.1%}",
                          *(f"{counts[k]} ({counts[k] / total:.0%})" for k in KINDS))
    console = Console()
    console.print(table)
    console.print(f"simulated on the same games: bisect every turn {simulate(val, 1.0, recipe.rl.max_turns):.2f} "
                  f"turns, guess at random {simulate(val, 0.0, recipe.rl.max_turns):.2f}")


if __name__ == "__main__":
    main()
