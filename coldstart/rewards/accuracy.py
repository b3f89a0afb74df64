"""Accuracy reward: is the completion's final answer mathematically equal to the gold answer?

The predicted answer is the text `extract_answer` takes from the completion (the last `<answer>…</answer>`,
else the last `\\boxed{…}`); a completion with none scores 0. Both answers are cleaned (below), wrapped as
`\\boxed{…}` and parsed by math-verify (`parse` with `LatexExtractionConfig` + `ExprExtractionConfig`),
then compared by `verify(gold, pred)`, which knows sets, intervals, tuples, roots, fractions,
polynomials and equations (`x=2` matches `2`).

Decisions, each tested in tests/test_rewards.py:
- Cleaning: surrounding `$…$`, `\\(…\\)` and `\\boxed{}` are removed; `−` (U+2212) is `-`; `°` is
  `^\\circ`; thousands separators `1,000`, `1{,}000`, `1 000`, `1\\,000` are dropped; `1e3` is read as
  1000. Digits separated by a space that is not a thousands separator (`4 2`) make the answer
  unparseable (math-verify would read `4 2` as a product).
- Percentages follow math-verify: `50\\%` matches both `50` and `0.5`; but `50` does not match `0.5`.
- Floats are compared after rounding to 6 decimals (math-verify's default): `1/3` ≠ `0.333`.
- A gold answer that is a word or phrase (letters, spaces, `.,'-`, at least 3 letters, e.g. `yes`,
  `Alice`, `\\text{banana}`) is compared as a case-folded string, because math-verify would read it as
  a commutative product of symbols (`banana` = `ananab`).
- A gold answer that is empty, too long or does not parse raises `GoldAnswerError` inside the reward
  function (CombinedReward then scores that item 0, logs it and counts it as an error); `verify_answer`
  logs a warning, counts it in `GOLD_ERRORS` and returns 0. It never scores 1.
- ReFT partial reward (docs/algorithms.md §23): `make_accuracy(partial=0.1)` gives 0.1 when an answer was
  extracted (non-blank) but is wrong, 1 when right, 0 when nothing could be extracted.

Time bounds: the parse and the comparison of one answer run together under one deadline of `timeout_s`
whole seconds (default 2; `signal.setitimer`, so only in the main thread, where the RL loop and the
evaluation call rewards); past it the prediction scores as wrong (a gold answer raises GoldAnswerError).
math-verify's own per-call timeouts are off, as one item could otherwise take twice the bound. Called
from another thread, the deadline is switched off (logged once) and the bounds are `max_chars` (answers
longer than that are not parsed: a prediction scores as wrong; a gold raises GoldAnswerError) and a
screen, applied everywhere, that scores as wrong without parsing a prediction that asks sympy for a
astronomically large number: a power tower with a numeric inner power (`2^{2^{2^{100}}}`, `10^{10^{10}}`),
a factorial of a number of 4+ digits or of a bracketed expression, or a numeric exponent of 6+ digits
(`1e100000000`). A prediction that equals the gold answer character for character still matches.
"""

from __future__ import annotations

import logging
import re
import signal
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

from coldstart.rewards.extract import extract_answer, last_boxed

log = logging.getLogger("coldstart.rewards")

# We run math-verify without its own timeouts, under _deadline: silence its one-time warning that says so.
for _module in ("math_verify.parser", "math_verify.grader"):
    if hasattr(sys.modules.get(_module), "TIMEOUT_WARNING_SHOWN"):
        sys.modules[_module].TIMEOUT_WARNING_SHOWN = True

# Counts of gold answers verify_answer could not use, by reason (the reward functions raise instead).
GOLD_ERRORS: Counter[str] = Counter()

_CONFIG = (LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig())
# A whole answer written with spaced thousands groups: "1 000", "12\\,345.5" (math-verify itself
# handles "1,000" and "1{,}000", and reads "1 000" as a product).
_SEP = r"(?:\s|\\,|\\ |\\!|~)"
_SPACED_NUMBER = re.compile(rf"-?[1-9]\d{{0,2}}(?:{_SEP}\d{{3}})+(?:\.\d+)?")
_SEPARATOR = re.compile(_SEP)
_SCIENTIFIC = re.compile(r"([-+]?\d+(?:\.\d+)?)[eE]([-+]?\d+)")
_SPLIT_DIGITS = re.compile(r"\d\s+\d")
_TEXT_WRAP = re.compile(r"\\(?:text|textbf|textit|mathrm|mbox)\{([^{}]*)\}")
_WORDS = re.compile(r"[A-Za-z][A-Za-z '.,-]*")
_WARNED_THREAD = False
# Predictions whose evaluation could need an astronomically large number (see the module docstring).
_HUGE = re.compile(r"\^\s*\{?[\s(]*[-+]?\d[\d.]*\s*\)?\s*(?:\^|\*\*)"  # 10^{10^{..}}, 2^(2^..)
                   r"|\*\*\s*\(?\s*\d[\d.]*\s*\)?\s*\*\*"  # 2**2**100
                   r"|(?:\d{4,}|[)}\]])\s*!"  # 1000!, (10^{100})!
                   r"|(?:\^|\*\*|[eE])\s*\{?\s*[-+]?\d{6,}")  # 2^{1000000}, 1e100000000


class _Deadline(BaseException):
    """Raised by the SIGALRM handler; a BaseException so that math-verify's `except Exception` lets it out."""


class GoldAnswerError(ValueError):
    """The gold answer is empty, too long or does not parse: the item cannot be scored."""

    data_error = True  # the data's fault, not the reward's: counted, never stops a run (rewards/combine.py)


def _timeout(seconds: int) -> int | None:
    """The deadline in seconds: signals work only in the main thread, so None (off) elsewhere."""
    global _WARNED_THREAD
    if threading.current_thread() is threading.main_thread():
        return seconds
    if not _WARNED_THREAD:
        log.warning("math-verify called outside the main thread: its timeout is off; answers are "
                    "bounded by max_chars only")
        _WARNED_THREAD = True
    return None


@contextmanager
def _deadline(seconds: int | None) -> Iterator[None]:
    """Raise _Deadline in the body after `seconds` (None: no limit). Main thread only (see _timeout)."""
    if not seconds:
        yield
        return
    armed = [True]

    def on_alarm(signum, frame):
        if armed[0]:
            raise _Deadline

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        armed[0] = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def clean_answer(text: str) -> str:
    """Strip math delimiters and normalise numbers (see the module docstring).

    >>> clean_answer(" $1\\\\,000$ ")
    '1000'
    >>> clean_answer("\\\\boxed{−2.5e3}")
    '-2.5\\\\times10^{3}'
    """
    s = text.strip()
    boxed = last_boxed(s)
    if boxed is not None:
        s = boxed
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if s.startswith(left) and s.endswith(right) and len(s) >= len(left) + len(right):
            s = s[len(left) : len(s) - len(right)].strip()
            break
    s = s.replace("\u2212", "-").replace("°", "^\\circ")
    if _SPACED_NUMBER.fullmatch(s):
        s = _SEPARATOR.sub("", s)
    if _SCIENTIFIC.fullmatch(s):
        s = _SCIENTIFIC.sub(r"\1\\times10^{\2}", s)
    return s


def _as_text(s: str) -> str | None:
    """The case-folded phrase if `s` is a word or phrase (≥3 letters, no maths), else None."""
    s = _TEXT_WRAP.sub(r"\1", s).strip().rstrip(".").strip()
    if not _WORDS.fullmatch(s) or sum(c.isalpha() for c in s) < 3:
        return None
    return " ".join(s.casefold().split())


@lru_cache(maxsize=4096)
def _parse(s: str) -> tuple:
    """math-verify's parse of `\\boxed{s}`, as a tuple (cacheable: gold answers repeat G times).

    Runs inside the caller's _deadline, hence no timeout of its own."""
    if _SPLIT_DIGITS.search(s):
        return ()
    return tuple(parse(f"\\boxed{{{s}}}", extraction_config=_CONFIG, fallback_mode="no_fallback",
                       parsing_timeout=None))


def parse_gold(gold: str, timeout_s: int = 2, max_chars: int = 1000) -> str | tuple:
    """The comparable form of a gold answer: a case-folded phrase (str) or math-verify's parse (tuple).

    Raises GoldAnswerError if the gold answer is empty, longer than max_chars or does not parse.
    """
    g = clean_answer(gold or "")
    if not g:
        raise GoldAnswerError(f"gold answer is empty: {gold!r}")
    if len(g) > max_chars:
        raise GoldAnswerError(f"gold answer is longer than max_chars={max_chars}: {gold[:80]!r}...")
    text = _as_text(g)
    if text is not None:
        return text
    try:
        with _deadline(_timeout(timeout_s)):
            parsed = _parse(g)
    except _Deadline:
        raise GoldAnswerError(f"gold answer took over timeout_s={timeout_s} s to parse: {gold[:80]!r}") from None
    if not parsed:
        raise GoldAnswerError(f"gold answer does not parse: {gold!r}")
    return parsed


def _matches(pred: str, gold: str | tuple, timeout_s: int, max_chars: int, gold_text: str = "") -> bool:
    """True if the extracted answer `pred` equals the parsed gold answer (`gold_text`: its cleaned text)."""
    p = clean_answer(pred)
    if isinstance(gold, str):
        return _as_text(p) == gold
    if not p or len(p) > max_chars:
        return False
    if p == gold_text:
        return True
    if _HUGE.search(p):
        return False
    try:
        with _deadline(_timeout(timeout_s)):
            parsed = _parse(p)
            return bool(parsed) and verify(list(gold), list(parsed), timeout_seconds=None)
    except _Deadline:
        log.debug("accuracy: %r took over timeout_s=%d s to compare; scored as wrong", p[:80], timeout_s)
        return False


def answers_match(pred: str, gold: str, timeout_s: int = 2, max_chars: int = 1000) -> bool:
    """True if the extracted answer `pred` equals `gold`; raises GoldAnswerError for an unusable gold.

    >>> answers_match("\\\\frac{1}{2}", "0.5"), answers_match("\\\\{2,1\\\\}", "\\\\{1,2\\\\}")
    (True, True)
    >>> answers_match("-3", "3")
    False
    """
    return _matches(pred, parse_gold(gold, timeout_s, max_chars), timeout_s, max_chars, clean_answer(gold))


def verify_answer(completion: str, gold: str, timeout_s: int = 2) -> float:
    """1.0 if the completion's final answer equals `gold` (math-verify), else 0.0. Never raises.

    An unusable gold answer is logged, counted in GOLD_ERRORS and scores 0.

    >>> verify_answer("<think>1+1</think><answer>2</answer>", "2")
    1.0
    >>> verify_answer("the answer is \\\\boxed{\\\\sqrt{2}}", "2^{1/2}")
    1.0
    >>> verify_answer("no final answer", "2")
    0.0
    """
    try:
        gold_key = parse_gold(gold, timeout_s)
    except GoldAnswerError as e:
        GOLD_ERRORS[str(e).split(":")[0]] += 1
        log.warning("%s", e)
        return 0.0
    pred = extract_answer(completion)
    return float(pred is not None and _matches(pred, gold_key, timeout_s, 1000, clean_answer(gold)))


def make_accuracy(
    partial: float = 0.0, timeout_s: int = 2, max_chars: int = 1000, task: Any = None
) -> Callable[..., list[float]]:
    """Build the accuracy reward: 1 right, `partial` extracted but wrong (ReFT §23), 0 no answer.

    Reads the `answer` column (gold strings); raises GoldAnswerError on an unusable gold answer.

    >>> reward = make_accuracy(partial=0.1)
    >>> reward(["q"] * 3, ["<answer>1/2</answer>", "\\\\boxed{3}", "I give up"], answer=["0.5"] * 3)
    [1.0, 0.1, 0.0]
    """
    if not 0.0 <= partial < 1.0:
        raise ValueError(f"accuracy: partial must be in [0, 1), got {partial!r}")
    if not isinstance(timeout_s, int) or timeout_s < 1:
        raise ValueError(f"accuracy: timeout_s must be a whole number of seconds >= 1, got {timeout_s!r}")

    def accuracy(prompts: list[str], completions: list[str], answer: list[str], **columns) -> list[float]:
        scores = []
        for completion, gold in zip(completions, answer, strict=True):
            gold_key = parse_gold(gold, timeout_s, max_chars)  # first, so a bad gold is always reported
            pred = extract_answer(completion)
            if pred is None or not pred.strip():
                scores.append(0.0)
            else:
                scores.append(1.0 if _matches(pred, gold_key, timeout_s, max_chars, clean_answer(gold)) else partial)
        return scores

    return accuracy
