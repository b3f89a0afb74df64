"""Answer extraction: the text between the last `<answer>…</answer>` pair, else the last `\\boxed{…}`.

>>> extract_answer("<think>2+2</think><answer> 4 </answer>")
'4'
>>> extract_answer("so the result is \\\\boxed{\\\\frac{1}{2}}.")
'\\\\frac{1}{2}'
>>> extract_answer("no answer here") is None
True
"""

from __future__ import annotations

import re

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (or `\\fbox{...}`) with balanced braces, or None."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth, j = 1, i
    while j < len(text) and depth:
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        j += 1
    return text[i : j - 1].strip() if depth == 0 else None


def extract_answer(text: str) -> str | None:
    """The final answer of a completion: last `<answer>` block, else last `\\boxed{}`, else None.

    A `<answer>` that is opened but never closed (a truncated completion) does not count.
    """
    found = _ANSWER.findall(text)
    if found:
        inner = found[-1].strip()
        boxed = last_boxed(inner)
        return boxed if boxed is not None else inner
    return last_boxed(text)
