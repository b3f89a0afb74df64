"""Code reward: run the completion's program against the example's tests in the sandbox (coldstart/sandbox.py).

The program is the last ```python (or ```py, or bare ```) fenced block of the completion, else the text of
the last `<answer>…</answer>`; a completion with neither scores 0.

Tests come from the `tests` column (an example's `meta["tests"]`), a list whose items are either
- `{"input": str, "output": str}`: the program reads `input` on stdin; it passes when it exits with
  status 0 and its stdout equals `output` after trailing whitespace is removed from every line and
  trailing blank lines are dropped; or
- a string of Python statements, typically `assert f(2) == 4`: run after the program in the same
  process (the program's `if __name__ == "__main__":` block runs too); it passes when the process
  exits with status 0.
A JSON string holding such a list is accepted too (data files often store it that way).

Each test is its own sandboxed process. Options (`rl.rewards: [{name: code, options: {...}}]`):
    mode:          "fraction" (default): the fraction of tests passed; "all": 1 if every test passes, else 0
    timeout_s:     wall-clock seconds per test (default 5)
    cpu_s:         CPU seconds per test (default 2)
    memory_mb:     address-space limit per test (default 512)
    max_processes: processes (and threads) per test (default 4)
A missing or empty test list raises (CombinedReward then scores the item 0 and counts the error). The
score is always in [0, 1].
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from coldstart.rewards.extract import last_answer_block
from coldstart.sandbox import run_code

_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)
MODES = ("fraction", "all")


def extract_program(completion: str) -> str | None:
    """The last fenced code block, else the last `<answer>` block, else None.

    >>> extract_program("Plan.\\n```python\\nprint(1)\\n```\\nDone.")
    'print(1)\\n'
    >>> extract_program("<answer>print(2)</answer>")
    'print(2)'
    >>> extract_program("no code") is None
    True
    """
    blocks = _FENCE.findall(completion)
    if blocks:
        return blocks[-1]
    answer = last_answer_block(completion)
    return answer.strip() if answer is not None and answer.strip() else None


class BadTestsError(ValueError):
    """An example's tests are missing or malformed: the data's fault, counted, never a stop (rewards/combine.py)."""

    data_error = True


def parse_tests(tests: Any) -> list[dict | str]:
    """Check and normalise a test list (see the module docstring); BadTestsError naming the bad item.

    >>> parse_tests('[{"input": "1", "output": "2"}, "assert True"]')
    [{'input': '1', 'output': '2'}, 'assert True']
    """
    if isinstance(tests, str):
        try:
            tests = json.loads(tests)
        except json.JSONDecodeError as e:
            raise BadTestsError(f"code reward: tests is a string but not a JSON list: {e}") from e
    if not isinstance(tests, (list, tuple)) or not tests:
        raise BadTestsError(f"code reward: tests must be a non-empty list; got {type(tests).__name__}")
    out: list[dict | str] = []
    for i, t in enumerate(tests):
        if isinstance(t, str):
            out.append(t)
        elif isinstance(t, dict) and set(t) == {"input", "output"}:
            out.append({"input": str(t["input"]), "output": str(t["output"])})
        else:
            raise BadTestsError(f"code reward: test {i} must be an assert string or {{input, output}}; got {t!r:.80}")
    return out


def _normalise(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines()).rstrip()


def run_test(program: str, test: dict | str, **limits: Any) -> bool:
    """True if `program` passes one test (already checked by parse_tests) in the sandbox."""
    if isinstance(test, str):
        result = run_code(f"{program}\n\n{test}\n", **limits)
        return result.ok
    result = run_code(program, test["input"], **limits)
    return result.ok and _normalise(result.stdout) == _normalise(test["output"])


def make_code(mode: str = "fraction", timeout_s: float = 5.0, cpu_s: int = 2, memory_mb: int = 512,
              max_processes: int = 4, task: Any = None) -> Callable[..., list[float]]:
    """Build the code reward (module docstring); reads the `tests` column.

    >>> reward = make_code(mode="fraction")
    >>> io_tests = [{"input": "2", "output": "4"}, {"input": "3", "output": "6"}]
    >>> reward(["q"] * 2, ["```python\\nprint(2 * int(input()))\\n```", "```python\\nprint(4)\\n```"],
    ...        tests=[io_tests, io_tests])
    [1.0, 0.5]
    >>> reward(["q"], ["<answer>def double(x): return x + x</answer>"], tests=[["assert double(5) == 10"]])
    [1.0]
    """
    if mode not in MODES:
        raise ValueError(f"code: mode must be one of {', '.join(MODES)}; got {mode!r}")
    for key, value in (("timeout_s", timeout_s), ("cpu_s", cpu_s), ("memory_mb", memory_mb),
                       ("max_processes", max_processes)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ValueError(f"code: {key} must be a positive number; got {value!r}")
    limits = {"wall_seconds": float(timeout_s), "cpu_seconds": max(1, int(cpu_s)), "memory_mb": int(memory_mb),
              "max_processes": int(max_processes)}

    def code(prompts: list[str], completions: list[str], tests: list | None = None, **columns) -> list[float]:
        if tests is None:
            raise ValueError("code reward: the 'tests' column is missing (put the tests in the example's meta)")
        scores = []
        for completion, item_tests in zip(completions, tests, strict=True):
            cases = parse_tests(item_tests)
            program = extract_program(completion)
            if program is None:
                scores.append(0.0)
                continue
            passed = 0
            for case in cases:
                ok = run_test(program, case, **limits)
                passed += ok
                if not ok and mode == "all":
                    break
            scores.append(float(passed == len(cases)) if mode == "all" else passed / len(cases))
        return scores

    return code
