"""A tool environment: the model may call a calculator inside `<tool>…</tool>` before it answers (§22 iTool's
setting, with a verifiable final answer instead of function-call matching).

Each model turn either calls the tool, `<tool>12*(3+4)</tool>` (the turn stops at `</tool>`), and gets the
result back as the next observation, `Result: 84` (or `Error: …`), reward 0; or gives `<answer>…</answer>`,
which ends the episode with reward `task.verify(example, turn)`. A turn with neither ends the episode with the
verifier's score of that turn (0 for the built-in tasks). `rl.max_turns` bounds the calls.

The calculator is a restricted AST evaluator (`safe_eval`): integer and float literals, + − * / // % and **
(exponent ≤ 64, magnitudes ≤ 1e18), unary ±, parentheses. No names, calls, attributes or anything else.
"""

from __future__ import annotations

import ast
import operator
import re
from dataclasses import dataclass, field

from ..types import Example, Task

_TOOL = re.compile(r"<tool>(.*?)</tool>", re.DOTALL)
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
MAX_ABS = 1e18


def safe_eval(expr: str) -> int | float:
    """Evaluate an arithmetic expression without Python's eval; ValueError on anything else.

    >>> safe_eval("12*(3+4)"), safe_eval("7/2"), safe_eval("-2**3")
    (84, 3.5, -8)
    """
    if len(expr) > 200:
        raise ValueError("expression longer than 200 characters")
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError:
        raise ValueError(f"not an arithmetic expression: {expr.strip()!r}") from None
    return _eval(tree.body)


def _eval(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        value = node.value
    elif isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        value = _UNARY[type(node.op)](_eval(node.operand))
    elif isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > 64:
            raise ValueError("exponent larger than 64")
        try:
            value = _BINARY[type(node.op)](left, right)
        except ZeroDivisionError:
            raise ValueError("division by zero") from None
    else:
        raise ValueError(f"unsupported syntax: {type(node).__name__}")
    if isinstance(value, complex) or abs(value) > MAX_ABS:
        raise ValueError("result out of range")
    return value


def format_result(value: int | float) -> str:
    """Integers as integers, floats with up to 6 decimals (trailing zeros dropped).

    >>> format_result(84), format_result(2.5), format_result(4.0)
    ('84', '2.5', '4')
    """
    if isinstance(value, float):
        return f"{value:.6f}".rstrip("0").rstrip(".") if value == value else "nan"
    return str(value)


@dataclass
class ToolEnv:
    """One episode of the calculator environment for a task example."""

    task: Task
    stop: list[str] = field(default_factory=lambda: ["</tool>"])
    example: Example | None = None

    def reset(self, example: Example) -> str:
        """The first observation: the example's question."""
        self.example = example
        return example.prompt

    def step(self, text: str) -> tuple[str, float, bool]:
        """A tool call → its result (reward 0); an answer (or neither) → the verifier's score, done."""
        calls = _TOOL.findall(text)
        if calls and "<answer>" not in text:
            try:
                return f"Result: {format_result(safe_eval(calls[-1]))}", 0.0, False
            except ValueError as e:
                return f"Error: {e}", 0.0, False
        return "", float(self.task.verify(self.example, text)), True


def build(options: dict, task: Task):
    """Factory of ToolEnv over `task` (no options)."""
    if options:
        raise ValueError(f"rl.env_options: env tool takes no options, got {sorted(options)}")
    return lambda: ToolEnv(task)
