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


def last_answer_block(text: str) -> str | None:
    """The content of the last of the non-overlapping `<answer>…</answer>` pairs read left to right (what
    `_ANSWER.findall(text)[-1]` gives), or None; in linear time, where the regex is quadratic on a text of
    many unclosed `<answer>` tags.

    >>> last_answer_block("<answer>1</answer> <answer>a<answer>2</answer> <answer>3")
    'a<answer>2'
    """
    pos, last = 0, None
    while (start := text.find("<answer>", pos)) >= 0:
        end = text.find("</answer>", start + 8)
        if end < 0:
            break
        last, pos = text[start + 8 : end], end + 9
    return last


def extract_answer(text: str) -> str | None:
    """The final answer of a completion: last `<answer>` block, else last `\\boxed{}`, else None.

    A `<answer>` that is opened but never closed (a truncated completion) does not count.
    """
    found = last_answer_block(text)
    if found is not None:
        inner = found.strip()
        boxed = last_boxed(inner)
        return boxed if boxed is not None else inner
    return last_boxed(text)
