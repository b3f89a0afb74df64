"""Integer arithmetic with column-by-column chain-of-thought traces: the demo's procedural task.

Problems. Two operands drawn from 10**(min_digits-1) .. 10**digits - 1 (0 .. when min_digits is 1, the
default) and one operator from `ops` (any of "+-*").
Subtraction keeps a >= b, so no answer is negative. The prompt is the bare problem, e.g. `347+589`;
the answer is the decimal result, e.g. `936`. Each problem belongs to one split by the hash of its prompt
(coldstart/tasks/split.py). Small spaces (<= 200,000 problems, i.e. digits <= 2) are enumerated, so
`n` larger than the split raises ValueError and n=None returns the whole split; larger spaces are
sampled without replacement, and an n above a quarter of the split's expected size enumerates them
(up to 3,000,000 problems) or raises.

Traces (`Example.solution`), compact and ASCII because the learner is often a character-level model.
Operands are zero-padded to equal width and worked right to left, one line per column:

    +  `347+589`:  7+9=16 c1 6 / 4+8+1=13 c1 36 / 3+5+1=9 936   (x+y[+carry]=sum c<carry> <digits so far>;
                   the last column writes its whole sum, so the last line ends with the answer)
    -  `347-289`:  17-9=8 b1 8 / 14-8-1=5 b1 58 / 3-2-1=0 58   (a borrowing column shows x+10; b<borrow>;
                   the last line ends with the answer, leading zeros dropped)
    *  `347*25`:   347*5=1735 / 347*20=6940 / 1735+6940=8675   (one partial product per non-zero digit of
                   the second operand, then running sums)

(" / " above stands for a newline.) Verifier: the extracted answer must be an integer equal to the gold
one; outer spaces, a leading `+`, leading zeros and well-formed thousands commas (`1,234`) are tolerated;
anything else (`936.0`, `9 36`, `1,23`, words) scores 0.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import product

from coldstart.rewards.extract import extract_answer
from coldstart.tasks.split import (
    check_fracs,
    check_split,
    parse_options,
    rng_for,
    split_frac,
    split_of,
)
from coldstart.types import Example

ENUMERATE_BELOW = 200_000  # problem spaces up to this size are always enumerated
ENUMERATE_MAX = 3_000_000  # ... and never above this one (≈ seconds of hashing)
_INT = re.compile(r"([+-]?)\s*(\d{1,3}(?:,\d{3})+|\d+)")


@dataclass
class ArithmeticOptions:
    digits: int = 3  # operands are at most 10**digits - 1
    # operands have at least this many digits; min_digits = digits gives fixed-width problems, which a small
    # model learns much faster (every column sits at the same offset of the prompt)
    min_digits: int = 1
    ops: str = "+"  # operators to draw from, any of "+-*"
    val_frac: float = 0.05
    test_frac: float = 0.1


def solve(a: int, op: str, b: int) -> int:
    """The exact result of `a op b`."""
    return {"+": a + b, "-": a - b, "*": a * b}[op]


def add_trace(a: int, b: int) -> str:
    """Column addition trace; its last line ends with a + b.

    >>> print(add_trace(347, 589))
    7+9=16 c1 6
    4+8+1=13 c1 36
    3+5+1=9 936
    """
    xs, ys = _pad(a, b)
    lines, carry, written = [], 0, ""
    for i in range(len(xs) - 1, -1, -1):
        x, y = int(xs[i]), int(ys[i])
        s = x + y + carry
        lhs = f"{x}+{y}" + ("+1" if carry else "")
        if i == 0:
            lines.append(f"{lhs}={s} {s}{written}")
        else:
            carry, written = s // 10, str(s % 10) + written
            lines.append(f"{lhs}={s} c{carry} {written}")
    return "\n".join(lines)


def sub_trace(a: int, b: int) -> str:
    """Column subtraction trace (needs a >= b); its last line ends with a - b.

    >>> print(sub_trace(347, 289))
    17-9=8 b1 8
    14-8-1=5 b1 58
    3-2-1=0 58
    """
    if a < b:
        raise ValueError(f"sub_trace needs a >= b, got {a}-{b}")
    xs, ys = _pad(a, b)
    lines, borrow, written = [], 0, ""
    for i in range(len(xs) - 1, -1, -1):
        x, y = int(xs[i]), int(ys[i])
        tail = f"-{y}" + ("-1" if borrow else "")
        d = x - y - borrow
        if i == 0:
            lines.append(f"{x}{tail}={d} {int(str(d) + written)}")
        else:
            borrow = int(d < 0)
            d += 10 * borrow
            written = str(d) + written
            lines.append(f"{x + 10 * borrow}{tail}={d} b{borrow} {written}")
    return "\n".join(lines)


def mul_trace(a: int, b: int) -> str:
    """Partial products by the non-zero digits of b, then running sums; the last line ends with a * b.

    >>> print(mul_trace(347, 25))
    347*5=1735
    347*20=6940
    1735+6940=8675
    """
    if a == 0 or b == 0:
        return f"{a}*{b}=0"
    lines, parts = [], []
    for k, ch in enumerate(reversed(str(b))):
        if ch != "0":
            p = a * int(ch) * 10**k
            lines.append(f"{a}*{ch}{'0' * k}={p}")
            parts.append(p)
    total = parts[0]
    for p in parts[1:]:
        lines.append(f"{total}+{p}={total + p}")
        total += p
    return "\n".join(lines)


TRACES = {"+": add_trace, "-": sub_trace, "*": mul_trace}


def parse_int(text: str | None) -> int | None:
    """Read an integer answer, tolerating outer spaces, a leading +, and thousands commas.

    >>> parse_int(" +1,234 "), parse_int("-7"), parse_int("1,23"), parse_int("9 36"), parse_int("3.0")
    (1234, -7, None, None, None)
    """
    if text is None:
        return None
    m = _INT.fullmatch(text.strip())
    if m is None or len(m.group(2)) > 1000:  # int() refuses > 4300 digits; no answer here has 1000
        return None
    value = int(m.group(2).replace(",", ""))
    return -value if m.group(1) == "-" else value


def make_example(a: int, op: str, b: int) -> Example:
    """The Example for `a op b`: prompt `347+589`, answer `936`, solution the column trace."""
    return Example(prompt=f"{a}{op}{b}", answer=str(solve(a, op, b)), solution=TRACES[op](a, b),
                   meta={"op": op})


@dataclass
class ArithmeticTask:
    """The `arithmetic` task (see the module docstring)."""

    options: ArithmeticOptions
    seed: int = 0
    name: str = "arithmetic"

    def space_size(self) -> int:
        """Number of distinct problems over all splits."""
        k = 10**self.options.digits - self._low()
        return sum(k * (k + 1) // 2 if op == "-" else k * k for op in self.options.ops)

    def _low(self) -> int:
        return 0 if self.options.min_digits <= 1 else 10 ** (self.options.min_digits - 1)

    def examples(self, split: str, n: int | None, seed: int) -> list[Example]:
        """n distinct problems of `split` (all of them for n=None), in a seed-determined order.

        For one seed, the first m of n examples are the examples for n=m.
        """
        check_split(split)
        if n is not None and n < 0:
            raise ValueError(f"arithmetic: n must be >= 0, got {n}")
        o = self.options
        rng = rng_for(self.seed, seed, split)
        space = self.space_size()
        expected = space * split_frac(split, o.val_frac, o.test_frac)
        big_ask = n is None or 4 * n > expected
        if space > ENUMERATE_BELOW and not (big_ask and space <= ENUMERATE_MAX):
            if big_ask:
                raise ValueError(f"arithmetic: digits={o.digits} ops={o.ops!r} has {space} problems, too many "
                                 f"to enumerate; ask for n <= {int(expected // 4)} {split} examples")
            return [make_example(*p) for p in self._sample(split, n, rng)]
        pool = [p for p in self._enumerate() if split_of(_text(p), o.val_frac, o.test_frac) == split]
        if n is None:
            n = len(pool)
        if n > len(pool):
            raise ValueError(f"arithmetic: asked for n={n} {split} examples but digits={o.digits} "
                             f"ops={o.ops!r} has only {len(pool)} distinct problems in that split; ask for "
                             "fewer, or raise digits / add ops")
        rng.shuffle(pool)  # shuffle then cut, so a smaller n gives a prefix of a larger one
        return [make_example(*p) for p in pool[:n]]

    def verify(self, example: Example, completion: str) -> float:
        """1.0 if the extracted answer is the gold integer (see parse_int), else 0.0."""
        got = parse_int(extract_answer(completion))
        return float(got is not None and got == int(example.answer))

    def _enumerate(self):
        m = 10**self.options.digits
        for op in self.options.ops:
            for a, b in product(range(self._low(), m), repeat=2):
                if op != "-" or a >= b:
                    yield a, op, b

    def _sample(self, split: str, n: int, rng) -> list[tuple[int, str, int]]:
        o, m = self.options, 10**self.options.digits
        seen: set[tuple[int, str, int]] = set()
        out = []
        for _ in range(100 * n + 10_000):
            if len(out) == n:
                break
            op, a, b = rng.choice(o.ops), rng.randrange(self._low(), m), rng.randrange(self._low(), m)
            p = (max(a, b), op, min(a, b)) if op == "-" else (a, op, b)
            if p not in seen and split_of(_text(p), o.val_frac, o.test_frac) == split:
                seen.add(p)
                out.append(p)
        if len(out) < n:
            raise ValueError(f"arithmetic: found only {len(out)} of n={n} distinct {split} problems")
        return out


def _pad(a: int, b: int) -> tuple[str, str]:
    w = max(len(str(a)), len(str(b)))
    return str(a).zfill(w), str(b).zfill(w)


def _text(p: tuple[int, str, int]) -> str:
    return f"{p[0]}{p[1]}{p[2]}"


def build(options: dict | None = None, seed: int = 0) -> ArithmeticTask:
    """Build the arithmetic task from recipe options (digits, ops, val_frac, test_frac)."""
    o = parse_options(ArithmeticOptions, options, "arithmetic")
    if not 1 <= o.digits <= 9:
        raise ValueError(f"arithmetic: option digits must be in 1..9, got {o.digits}")
    if not 1 <= o.min_digits <= o.digits:
        raise ValueError(f"arithmetic: option min_digits must be in 1..digits={o.digits}, got {o.min_digits}")
    if not o.ops or set(o.ops) - set("+-*"):
        raise ValueError(f"arithmetic: option ops must be a non-empty string of '+', '-', '*', got {o.ops!r}")
    o.ops = "".join(dict.fromkeys(o.ops))  # drop repeats, keep order
    check_fracs("arithmetic", o.val_frac, o.test_frac)
    return ArithmeticTask(options=o, seed=seed)
