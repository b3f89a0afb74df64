"""Number guessing with a rule-based simulated user (docs/algorithms.md §3, UserRL's setting without an LLM user).

The example fixes an interval and a secret (`Example.meta`: lo, hi, secret; see coldstart.tasks.guess). The
opening observation is the example's prompt, e.g. `Guess my number from 1 to 32.` Each model turn is a guess,
`<answer>N</answer>` or a plain number (the last integer of the turn counts). The user answers

    correct  → reward 1, done
    too low  → `Higher. Guess my number from g+1 to hi.`  (the interval narrowed by every answer so far)
    too high → `Lower. Guess my number from lo to g-1.`
    no number → `Say a number. Guess my number from lo to hi.`

and every turn that does not end the game costs `turn_cost` (reward −turn_cost), so with the `sum` score a
trajectory scores 1 − turn_cost·(turns − 1) when solved. The episode also ends at `rl.max_turns`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..rewards.extract import extract_answer
from ..types import Example, Task

_INT = re.compile(r"-?\d+")


def parse_guess(text: str) -> int | None:
    """The guess in a model turn: the `<answer>` block's integer, else the last integer of the text.

    >>> parse_guess("<think>1 to 8</think><answer>4</answer>"), parse_guess("maybe 12?"), parse_guess("no")
    (4, 12, None)
    """
    inner = extract_answer(text)
    found = _INT.findall(inner if inner is not None else text)
    return int(found[-1]) if found else None


def range_prompt(lo: int, hi: int, feedback: str = "") -> str:
    """The user's message for the interval lo..hi, after optional feedback ("Higher." / "Lower.").

    >>> range_prompt(5, 8, "Higher.")
    'Higher. Guess my number from 5 to 8.'
    """
    return f"{feedback + ' ' if feedback else ''}Guess my number from {lo} to {hi}."


@dataclass
class GuessEnv:
    """One game; `turn_cost` is the reward of a turn that does not end the game, negated."""

    turn_cost: float = 0.1
    stop: tuple = ()
    lo: int = 0
    hi: int = 0
    secret: int = 0

    def reset(self, example: Example) -> str:
        """Start a game on the example's interval and secret; the first observation is its prompt."""
        self.lo, self.hi, self.secret = int(example.meta["lo"]), int(example.meta["hi"]), int(example.meta["secret"])
        return example.prompt

    def step(self, text: str) -> tuple[str, float, bool]:
        """Answer a guess: (observation, reward, done)."""
        g = parse_guess(text)
        if g == self.secret:
            return "Correct.", 1.0, True
        if g is None:
            return range_prompt(self.lo, self.hi, "Say a number."), -self.turn_cost, False
        if g < self.secret:
            self.lo = max(self.lo, g + 1)
            return range_prompt(self.lo, self.hi, "Higher."), -self.turn_cost, False
        self.hi = min(self.hi, g - 1)
        return range_prompt(self.lo, self.hi, "Lower."), -self.turn_cost, False


def build(options: dict, task: Task):
    """Factory of GuessEnv; options: turn_cost (default 0.1)."""
    unknown = set(options) - {"turn_cost"}
    if unknown:
        raise ValueError(f"rl.env_options: unknown option(s) {sorted(unknown)} for env guess; valid: turn_cost")
    cost = float(options.get("turn_cost", 0.1))
    return lambda: GuessEnv(turn_cost=cost)
