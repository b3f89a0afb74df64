"""Countdown with depth-first-search traces that contain exactly k verbalised backtracks.

The game (TinyZero's rule): reach the target using every given number exactly once, with + - * / and
parentheses. Prompt: `Make 20 with 3 4 8 (+-*/, each once)`. Answer: an expression such as `(8-3)*4`.

Problems. `numbers` source numbers drawn from 1..max_number; the target is drawn uniformly from the
values in min_target..max_target that a search reaches, so every problem is solvable. The search
combines two numbers per step and keeps intermediate results positive integers (a-b needs a > b,
a/b needs b | a), as in the Countdown game show. A problem's split is the hash of its sorted numbers
and target (coldstart/tasks/split.py).

Traces (docs/algorithms.md §16, "Countdown traces", Cai et al. 2505.24273). A solution path, one line per
step with the numbers left, is interleaved with k error paths ordered by branch point. Error path i
shares the first b_i steps of the solution, takes a different step there (one that changes the numbers
left) and runs to a final value that is not the target, then backtracks:

    1: 3+4=7 [7,8]
    2: 7+8=15 [15]
    Wait, 15 is not 20. Back to step 0 [3,4,8]
    1: 8-3=5 [4,5]
    2: 5*4=20 [20]
    (8-3)*4=20

`count_backtracks` counts the fixed marker `back to step <j>` (case-insensitive, so the paper's longer
"Let me go back to step j" counts too). Deviation from the paper: its phrase "Wait, this doesn't lead
to the correct solution. X is not the correct answer. Let me go back to step j" is shortened, to suit
character-level models. Problems that do not admit k distinct error paths (possible with 2 numbers)
are skipped. Each error path's first wrong step is distinct from the others'.

Verifier: the extracted answer is parsed with `ast` (never eval) and must contain only non-negative
integer literals, + - * / and parentheses; its literals must be the given numbers, each exactly once;
its exact rational value (fractions allowed in between, as in TinyZero) must equal the target. A
trailing `=target` is allowed. Anything else scores 0.
"""

from __future__ import annotations

import ast
import operator
import re
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

from coldstart.rewards.extract import extract_answer
from coldstart.tasks.split import check_fracs, check_split, parse_options, rng_for, split_of
from coldstart.types import Example

Step = tuple[int, str, int, int]  # (x, op, y, result), x >= y
_BACKTRACK = re.compile(r"\bback to step \d+", re.IGNORECASE)
_EXPR_CHARS = re.compile(r"[0-9+\-*/() ]+")
_AST_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}
MAX_ANSWER_CHARS = 200


@dataclass
class CountdownOptions:
    numbers: int = 3  # source numbers per problem, 2..5
    max_number: int = 10  # source numbers are 1..max_number
    min_target: int = 1
    max_target: int = 100
    backtracks: int = 0  # verbalised dead ends per trace
    val_frac: float = 0.05
    test_frac: float = 0.1


def count_backtracks(text: str) -> int:
    """Number of verbalised backtracks in `text`.

    >>> count_backtracks("1: 3+4=7 [7,8]\\nWait, 15 is not 20. Back to step 0 [3,4,8]\\nLet me go back to step 1")
    2
    """
    return len(_BACKTRACK.findall(text))


def _moves(state: tuple[int, ...]) -> list[tuple[Step, tuple[int, ...]]]:
    """Every distinct step from a sorted state, with the sorted state it leads to."""
    out, seen = [], set()
    for i in range(len(state)):
        for j in range(i + 1, len(state)):
            y, x = state[i], state[j]  # sorted, so x >= y
            rest = state[:i] + state[i + 1 : j] + state[j + 1 :]
            for op, r in (("+", x + y), ("-", x - y), ("*", x * y), ("/", x // y)):
                if (op == "-" and x == y) or (op == "/" and x % y) or (x, op, y) in seen:
                    continue
                seen.add((x, op, y))
                out.append(((x, op, y, r), tuple(sorted((*rest, r)))))
    return out


def all_paths(state: tuple[int, ...]) -> tuple[tuple[Step, ...], ...]:
    """Every step sequence that combines the sorted `state` down to one number (1152 for 4 numbers)."""
    if len(state) <= 3:
        return _small_paths(state)
    return tuple((step, *tail) for step, rest in _moves(state) for tail in all_paths(rest))


@lru_cache(maxsize=4096)  # only states of <= 3 numbers (<= 48 paths each), so the cache stays small
def _small_paths(state: tuple[int, ...]) -> tuple[tuple[Step, ...], ...]:
    if len(state) == 1:
        return ((),)
    return tuple((step, *tail) for step, rest in _moves(state) for tail in _small_paths(rest))


def _apply(state: tuple[int, ...], step: Step) -> tuple[int, ...]:
    rest = list(state)
    rest.remove(step[0])
    rest.remove(step[2])
    return tuple(sorted([*rest, step[3]]))


def _states(start: tuple[int, ...], path: tuple[Step, ...]) -> list[tuple[int, ...]]:
    states = [start]
    for step in path:
        states.append(_apply(states[-1], step))
    return states


def pick_errors(start, paths, solution, target: int, k: int, rng) -> list[tuple[int, tuple[Step, ...]]] | None:
    """k error paths (branch point b, path) with distinct first wrong steps, sorted by b; None if too few.

    A path qualifies if it leaves the solution at step b (0-based) with a step that changes the numbers
    left, and ends on a value that is not the target.
    """
    if k == 0:
        return []
    sol_states = _states(start, solution)
    groups: dict[tuple[int, Step], list[tuple[Step, ...]]] = {}
    for path in paths:
        if path[-1][3] == target:
            continue
        b = next(i for i in range(len(path)) if path[i] != solution[i])
        if _apply(sol_states[b], path[b]) != sol_states[b + 1]:
            groups.setdefault((b, path[b]), []).append(path)
    if len(groups) < k:
        return None
    chosen = rng.sample(sorted(groups), k)
    return sorted(((b, rng.choice(groups[(b, s)])) for b, s in chosen), key=lambda e: e[0])


def expression(numbers: list[int], path: tuple[Step, ...]) -> str:
    """The expression that a step path builds, with only the parentheses it needs.

    >>> expression([3, 4, 8], ((8, "-", 3, 5), (5, "*", 4, 20)))
    '(8-3)*4'
    """
    items = [(n, str(n), 3) for n in numbers]  # (value, text, precedence of its top operator)
    for x, op, y, r in path:
        left = items.pop(next(i for i, it in enumerate(items) if it[0] == x))
        right = items.pop(next(i for i, it in enumerate(items) if it[0] == y))
        p = _PREC[op]
        lt = f"({left[1]})" if left[2] < p else left[1]
        rt = f"({right[1]})" if right[2] < p + (op in "-/") else right[1]
        items.append((r, f"{lt}{op}{rt}", p))
    return items[0][1]


def render_trace(numbers: list[int], target: int, solution, errors) -> str:
    """The DFS trace: solution steps interleaved with the error paths, then `expression=target`."""
    start = tuple(sorted(numbers))
    states = _states(start, solution)
    lines, done = [], 0
    for b, path in errors:
        lines += [_line(i, solution[i], states[i + 1]) for i in range(done, b)]
        done, st = b, states[b]
        for i in range(b, len(path)):
            st = _apply(st, path[i])
            lines.append(_line(i, path[i], st))
        lines.append(f"Wait, {path[-1][3]} is not {target}. Back to step {b} {_fmt(states[b])}")
    lines += [_line(i, solution[i], states[i + 1]) for i in range(done, len(solution))]
    lines.append(f"{expression(numbers, solution)}={target}")
    return "\n".join(lines)


def _line(i: int, step: Step, state: tuple[int, ...]) -> str:
    x, op, y, r = step
    return f"{i + 1}: {x}{op}{y}={r} {_fmt(state)}"


def _fmt(state: tuple[int, ...]) -> str:
    return "[" + ",".join(map(str, state)) + "]"


def evaluate(expr: str, numbers: list[int]) -> Fraction | None:
    """Exact value of `expr` if it is a well-formed + - * / expression using each number exactly once.

    >>> evaluate("(8-3)*4", [3, 4, 8]), evaluate("4/(3-8)", [8, 3, 4]), evaluate("8*4", [3, 4, 8])
    (Fraction(20, 1), Fraction(-4, 5), None)
    """
    if len(expr) > MAX_ANSWER_CHARS or not _EXPR_CHARS.fullmatch(expr):
        return None
    try:
        used: list[int] = []
        value = _eval(ast.parse(expr.strip(), mode="eval").body, used)
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError):
        return None
    return value if sorted(used) == sorted(numbers) else None


def _eval(node: ast.AST, used: list[int]) -> Fraction:
    if isinstance(node, ast.BinOp) and type(node.op) in _AST_OPS:
        return _AST_OPS[type(node.op)](_eval(node.left, used), _eval(node.right, used))
    if isinstance(node, ast.Constant) and type(node.value) is int:
        used.append(node.value)
        return Fraction(node.value)
    raise ValueError(f"not allowed in a countdown answer: {ast.dump(node)}")


def make_example(numbers: list[int], target: int, solution, errors) -> Example:
    """The Example for one problem: prompt, answer expression, trace; meta holds numbers and target."""
    return Example(
        prompt=f"Make {target} with {' '.join(map(str, numbers))} (+-*/, each once)",
        answer=expression(numbers, solution),
        solution=render_trace(numbers, target, solution, errors),
        meta={"numbers": list(numbers), "target": target, "backtracks": len(errors)},
    )


@dataclass
class CountdownTask:
    """The `countdown` task (see the module docstring)."""

    options: CountdownOptions
    seed: int = 0
    name: str = "countdown"

    def examples(self, split: str, n: int | None, seed: int) -> list[Example]:
        """n distinct solvable problems of `split`, each with a trace of exactly `backtracks` backtracks."""
        check_split(split)
        if n is None or n < 0:
            raise ValueError(f"countdown: n must be a count >= 0 (the task is procedural), got {n!r}")
        o = self.options
        rng = rng_for(self.seed, seed, split)
        out, seen = [], set()
        for _ in range(50 * n + 1000):
            if len(out) == n:
                break
            numbers = [rng.randint(1, o.max_number) for _ in range(o.numbers)]
            start = tuple(sorted(numbers))
            paths = all_paths(start)
            finals = sorted({p[-1][3] for p in paths if o.min_target <= p[-1][3] <= o.max_target})
            keys = {t: f"{_fmt(start)}->{t}" for t in finals}
            finals = [t for t in finals if keys[t] not in seen
                      and split_of(keys[t], o.val_frac, o.test_frac) == split]
            if not finals:
                continue
            target = rng.choice(finals)
            solution = rng.choice([p for p in paths if p[-1][3] == target])
            errors = pick_errors(start, paths, solution, target, o.backtracks, rng)
            if errors is None:
                continue
            seen.add(keys[target])
            out.append(make_example(numbers, target, solution, errors))
        if len(out) < n:
            raise ValueError(f"countdown: found only {len(out)} of n={n} distinct {split} problems for "
                             f"{o}; widen max_number / the target range or lower backtracks")
        return out

    def verify(self, example: Example, completion: str) -> float:
        """1.0 if the extracted expression uses each number exactly once and equals the target."""
        answer = extract_answer(completion)
        if answer is None:
            return 0.0
        target = int(example.meta["target"])
        lhs, eq, rhs = answer.partition("=")
        if eq and rhs.strip() != str(target):
            return 0.0
        value = evaluate(lhs, list(example.meta["numbers"]))
        return float(value is not None and value == target)


def build(options: dict | None = None, seed: int = 0) -> CountdownTask:
    """Build the countdown task from recipe options (see CountdownOptions)."""
    o = parse_options(CountdownOptions, options, "countdown")
    checks = [("numbers", 2 <= o.numbers <= 5, "in 2..5"), ("max_number", o.max_number >= 1, ">= 1"),
              ("min_target", o.min_target >= 1, ">= 1"),
              ("max_target", o.max_target >= o.min_target, ">= min_target"),
              ("backtracks", o.backtracks >= 0, ">= 0")]
    for name, ok, rule in checks:
        if not ok:
            raise ValueError(f"countdown: option {name} must be {rule}, got {getattr(o, name)!r}")
    check_fracs("countdown", o.val_frac, o.test_frac)
    return CountdownTask(options=o, seed=seed)
