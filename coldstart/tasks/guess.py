"""The number-guessing task: the examples of the multi-turn `guess` environment (coldstart.envs.guess).

An example is a game state: an interval lo..hi and a secret in it (`meta`: lo, hi, secret). Its prompt is the
user's message, `Guess my number from 9 to 16.`, sometimes with the feedback that led there (`Higher.` when
lo > low, `Lower.` when hi < high), exactly as the environment words its observations. The answer is the
binary-search guess, the midpoint (lo + hi) // 2, and the solution its one-line rationale `9 to 16`, so an SFT
cold start on these states teaches bisection one turn at a time, and `verify` scores a single turn: 1 when it
guesses the midpoint.

With `history: H > 0` (default 3), an example is instead a dialogue: a game from low..high with 0..H earlier
turns (random wrong guesses in the interval, each answered by the user), then the current state. Its prompt
holds those turns in the tiny character tokenizer's chat markup (coldstart.models: `…<|assistant|>{turn}<|end|>
<|user|>{observation}`), which tokenizes exactly as coldstart.multiturn renders a conversation, so SFT on it is
SFT on binary-search dialogues with the loss on the last turn only. Use `history: 0` with other tokenizers.

In multi-turn RL the environment plays the game on from the example's state against its secret; the number of
turns to the answer is the metric (`turns/mean`).

With `bisect: p < 1` the train split's teacher is imperfect: its turn is the midpoint with probability p and
otherwise `other_guess`: `low`, the interval's low end (a linear scan), or `random`, a uniformly random number
of it (the rationale stays `lo to hi`). A cold start on it learns both strategies, and RL can learn to prefer
the one that needs fewer turns. The val and test answers are
always the midpoint, which `verify` scores.

Options: low, high (the full range, default 1..32), history, bisect (default 1.0), other_guess (default low),
val_frac, test_frac. States
are split by the hash of `lo:hi:secret`, dialogues by the hash of their prompt and secret.
"""

from __future__ import annotations

from dataclasses import dataclass

from coldstart.envs.guess import GuessEnv, parse_guess, range_prompt
from coldstart.models import EOS, ROLE_TOKENS
from coldstart.tasks.split import check_fracs, check_split, parse_options, rng_for, split_of
from coldstart.types import Example


@dataclass
class GuessOptions:
    low: int = 1
    high: int = 32
    history: int = 3  # earlier turns in a dialogue example (0: single states)
    bisect: float = 1.0  # train split only: probability that the teacher's turn is the midpoint
    other_guess: str = "low"  # the teacher's turn otherwise: low (the interval's low end) | random (uniform)
    val_frac: float = 0.05
    test_frac: float = 0.1


def make_example(lo: int, hi: int, secret: int, low: int, high: int) -> Example:
    """The state lo..hi with `secret`; the feedback word in the prompt follows from which end moved."""
    feedback = "Higher." if lo > low and (hi == high or (lo + hi) % 2) else "Lower." if hi < high else ""
    return Example(prompt=range_prompt(lo, hi, feedback), answer=str((lo + hi) // 2), solution=f"{lo} to {hi}",
                   meta={"lo": lo, "hi": hi, "secret": secret})


@dataclass
class GuessTask:
    """The `guess` task (see the module docstring)."""

    options: GuessOptions
    seed: int = 0
    name: str = "guess"

    def examples(self, split: str, n: int | None, seed: int) -> list[Example]:
        """n game states of `split` (all for n=None) in a seed-determined order; a smaller n is a prefix."""
        check_split(split)
        o = self.options
        if o.history > 0:
            return self._dialogues(split, 2000 if n is None else n, seed)
        pool = [(lo, hi, s) for lo in range(o.low, o.high + 1) for hi in range(lo, o.high + 1)
                for s in range(lo, hi + 1) if split_of(f"{lo}:{hi}:{s}", o.val_frac, o.test_frac) == split]
        if n is not None and n > len(pool):
            raise ValueError(f"guess: asked for n={n} {split} examples but {o.low}..{o.high} has only {len(pool)} "
                             "in that split; ask for fewer or widen the range")
        rng = rng_for(self.seed, seed, split)
        rng.shuffle(pool)
        return [self._teach(make_example(lo, hi, s, o.low, o.high), split, rng) for lo, hi, s in pool[:n]]

    def _teach(self, ex: Example, split: str, rng) -> Example:
        """The example with the teacher's turn: on the train split `other_guess` with probability 1 - bisect."""
        if split != "train" or self.options.bisect >= 1.0 or rng.random() < self.options.bisect:
            return ex
        lo, hi = int(ex.meta["lo"]), int(ex.meta["hi"])
        guess = lo if self.options.other_guess == "low" else rng.randint(lo, hi)
        return Example(ex.prompt, str(guess), ex.solution, ex.meta)

    def _dialogues(self, split: str, n: int, seed: int) -> list[Example]:
        """n dialogue examples of `split`: random games with 0..history wrong guesses played before the state."""
        o, rng = self.options, rng_for(self.seed, seed, split)
        user, assistant = ROLE_TOKENS[1], ROLE_TOKENS[2]
        out, seen = [], set()
        for _ in range(200 * n + 1000):
            if len(out) == n:
                break
            secret = rng.randint(o.low, o.high)
            env = GuessEnv(turn_cost=0.0)
            obs = env.reset(make_example(o.low, o.high, secret, o.low, o.high))
            prompt = obs
            for _ in range(rng.randint(0, o.history)):
                choices = [g for g in range(env.lo, env.hi + 1) if g != secret]
                if not choices:
                    break
                lo, hi, g = env.lo, env.hi, rng.choice(choices)
                obs, _, _ = env.step(str(g))
                prompt += f"{assistant}<think>{lo} to {hi}</think><answer>{g}</answer>{EOS}{user}{obs}"
            key = f"{prompt}|{secret}"
            if key in seen or split_of(key, o.val_frac, o.test_frac) != split:
                continue
            seen.add(key)
            ex = self._teach(make_example(env.lo, env.hi, secret, o.low, o.high), split, rng)
            out.append(Example(prompt, ex.answer, ex.solution, ex.meta))
        if len(out) < n:
            raise ValueError(f"guess: found only {len(out)} of n={n} distinct {split} dialogues; ask for fewer")
        return out

    def verify(self, example: Example, completion: str) -> float:
        """1.0 when the turn's guess is the bisection midpoint (the example's answer), else 0.0."""
        return float(parse_guess(completion) == int(example.answer))


def build(options: dict | None = None, seed: int = 0) -> GuessTask:
    """Build the guess task from recipe options (low, high, history, bisect, other_guess, val_frac, test_frac)."""
    o = parse_options(GuessOptions, options, "guess")
    if o.low > o.high:
        raise ValueError(f"guess: option low must be <= high, got {o.low} > {o.high}")
    if not 0.0 <= o.bisect <= 1.0:
        raise ValueError(f"guess: option bisect must be in [0, 1], got {o.bisect}")
    if o.other_guess not in ("low", "random"):
        raise ValueError(f"guess: option other_guess must be low or random, got {o.other_guess!r}")
    check_fracs("guess", o.val_frac, o.test_frac)
    return GuessTask(o, seed)
