"""Simple reward functions: exact match, tag format, the task's own verifier, DAPO overlong shaping,
and user functions imported by name.

Each `make_*` factory takes its options (and `task`, which only `make_task` uses) and returns a reward
function `f(prompts, completions, **columns) -> list[float]` on completion texts; the columns are lists
aligned with completions, and unknown columns are ignored. `builtin` wraps it for TRL's call (keywords,
completions as strings or as assistant message lists), which is how the registry hands it out.

- exact:    normalised string equality of the extracted answer with the `answer` column (strip,
            collapse whitespace, optional case-fold). No extractable answer scores 0.
- format:   1 if the completion is one `<tag>…</tag>` block followed by one `<answer>…</answer>` block
            (docs/algorithms.md §17: tag ∈ think | plan | code | knowledge | examples), else 0.
- task:     `task.verify(example, completion)` on the `example` column.
- overlong: DAPO's soft overlong punishment (docs/algorithms.md §0.3) on the `completion_length` column
            (tokens): 0 up to max_len − cache_len, then a linear ramp to −1 at max_len, −1 beyond.
            Overlong *filtering* (masking truncated samples out of the loss) lives in the RL loop.
- "package.module:function" or "file.py:function": `import_reward` imports a user reward function.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from coldstart.rewards.accuracy import GoldAnswerError
from coldstart.rewards.extract import extract_answer

RewardFn = Callable[..., list[float]]
TAGS = ("think", "plan", "code", "knowledge", "examples")


def _norm(text: str, casefold: bool) -> str:
    """Strip and collapse whitespace; optionally case-fold."""
    s = " ".join(text.split())
    return s.casefold() if casefold else s


def make_exact(casefold: bool = False, task: Any = None) -> RewardFn:
    """Build the exact-match reward: 1 if the extracted answer equals the `answer` column, else 0.

    Raises GoldAnswerError for an empty gold answer (nothing can match it).

    >>> reward = make_exact(casefold=True)
    >>> reward(["q"] * 3, ["<answer> New  York </answer>", "\\\\boxed{york}", "no answer"], answer=["new york"] * 3)
    [1.0, 0.0, 0.0]
    """

    def exact(prompts: list[str], completions: list[str], answer: list[str], **columns) -> list[float]:
        scores = []
        for completion, gold in zip(completions, answer, strict=True):
            gold_norm = _norm(gold or "", casefold)
            if not gold_norm:
                raise GoldAnswerError(f"exact: gold answer is empty: {gold!r}")
            pred = extract_answer(completion)
            scores.append(float(pred is not None and _norm(pred, casefold) == gold_norm))
        return scores

    return exact


def make_format(tag: str = "think", strict: bool = True, task: Any = None) -> RewardFn:
    """Build the format reward: 1 if `<tag>…</tag>` then `<answer>…</answer>`, each exactly once.

    strict=True also requires nothing but whitespace around and between the two blocks.

    >>> reward = make_format(tag="plan")
    >>> reward(["q"] * 4, ["<plan>add</plan>\\n<answer>4</answer>", "<answer>4</answer>",
    ...                    "<plan>a</plan><plan>b</plan><answer>4</answer>", "<plan>a</plan><answer>4</answer>!"])
    [1.0, 0.0, 0.0, 0.0]
    >>> make_format(strict=False)(["q"], ["Sure. <think>a</think> so <answer>4</answer>."])
    [1.0]
    """
    if tag not in TAGS:
        raise ValueError(f"format: tag must be one of {', '.join(TAGS)}; got {tag!r}")
    tags = (f"<{tag}>", f"</{tag}>", "<answer>", "</answer>")
    gap = r"\s*" if strict else r".*?"
    pattern = re.compile(rf"^{gap}<{tag}>.*?</{tag}>{gap}<answer>.*?</answer>{gap}$", re.DOTALL)

    def format_reward(prompts: list[str], completions: list[str], **columns) -> list[float]:
        return [float(all(c.count(t) == 1 for t in tags) and pattern.match(c) is not None)
                for c in completions]

    return format_reward


def make_task(task: Any = None) -> RewardFn:
    """Build the reward that scores with the task's own verifier: `task.verify(example, completion)`.

    >>> from coldstart.types import Example
    >>> class Echo:
    ...     def verify(self, example, completion): return float(completion == example.answer)
    >>> make_task(task=Echo())(["q"] * 2, ["7", "8"], example=[Example("q", "7")] * 2)
    [1.0, 0.0]
    """
    if task is None or not callable(getattr(task, "verify", None)):
        raise ValueError(f"reward 'task' needs a task with a verify(example, completion) method; got {task!r}")

    def task_reward(prompts: list[str], completions: list[str], example: list | None = None,
                    **columns) -> list[float]:
        if example is None:
            raise ValueError("task reward: the 'example' column is missing")
        return [task.verify(ex, c) for ex, c in zip(example, completions, strict=True)]

    return task_reward


def make_overlong(max_len: int, cache_len: int | None = None, task: Any = None) -> RewardFn:
    """Build DAPO's soft overlong punishment (§0.3) from the `completion_length` column (tokens).

    R = 0 if L ≤ max_len − cache_len; (max_len − cache_len − L) / cache_len if L ≤ max_len; −1 beyond.
    cache_len defaults to max_len // 5 (DAPO's 4096 / 20480).

    >>> make_overlong(max_len=100, cache_len=20)(["q"] * 4, ["a"] * 4, completion_length=[80, 90, 100, 101])
    [0.0, -0.5, -1.0, -1.0]
    """
    cache_len = max_len // 5 if cache_len is None else cache_len
    if not (isinstance(max_len, int) and isinstance(cache_len, int) and 0 < cache_len <= max_len):
        raise ValueError(f"overlong: need whole numbers 0 < cache_len <= max_len; got max_len={max_len!r}, "
                         f"cache_len={cache_len!r}")
    soft_start = max_len - cache_len

    def overlong(prompts: list[str], completions: list[str], completion_length: list[int] | None = None,
                 **columns) -> list[float]:
        if completion_length is None:
            raise ValueError("overlong reward: the 'completion_length' column is missing")
        lengths = [int(n) for n in completion_length]
        return [0.0 if n <= soft_start else (soft_start - n) / cache_len if n <= max_len else -1.0
                for n in lengths]

    return overlong


def completion_text(completion: Any) -> str:
    """The text of a completion: a string as is; for TRL's conversational form (a list of messages) the
    content of the assistant messages, joined (content given as typed blocks keeps its text blocks).

    >>> completion_text("4"), completion_text([{"role": "assistant", "content": "<answer>4</answer>"}])
    ('4', '<answer>4</answer>')
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    texts = []
    for m in completion:
        content = m.get("content") if isinstance(m, dict) and m.get("role", "assistant") == "assistant" else None
        if isinstance(content, list):
            content = "".join(b.get("text", "") for b in content if isinstance(b, dict))
        if isinstance(content, str):
            texts.append(content)
    return "".join(texts)


def builtin(fn: RewardFn) -> RewardFn:
    """A built-in reward as TRL calls reward functions: by keyword, completions as strings or message lists.

    The function sees each completion as the model's whole turn (`completion_prefix`, the part the chat
    template's generation prompt already wrote, e.g. "<think>\n", put back in front) and the gold answers of
    the `example` column when there is one (a data column that happens to be called `answer` cannot shadow
    them).

    >>> f = builtin(make_exact())
    >>> f(prompts=["q"], completions=[[{"role": "assistant", "content": "<answer>7</answer>"}]], answer=["7"])
    [1.0]
    """

    @functools.wraps(fn)
    def reward(prompts: list, completions: list, completion_prefix: list | None = None, example: list | None = None,
               **columns: Any) -> list[float]:
        texts = [completion_text(c) for c in completions]
        if completion_prefix is not None:
            texts = [(p or "") + t for p, t in zip(completion_prefix, texts, strict=True)]
        if example is not None:
            columns["answer"] = [e.answer for e in example]
            columns["example"] = example
        if "answer" in columns:  # a gold number from a data column is compared as its text
            columns["answer"] = [a if a is None or isinstance(a, str) else str(a) for a in columns["answer"]]
        return fn(prompts, texts, **columns)

    return reward


def _module(module_name: str, search: Sequence[str | Path]) -> Any:
    """Import `module_name` (or load a `.py` file) from the `search` folders, the working directory, then
    sys.path; the folders stay on sys.path so that the module's own imports of its neighbours work."""
    folders = [str(Path(d).resolve()) for d in (*search, ".")]
    if module_name.endswith(".py"):
        for d in folders:
            path = Path(d) / module_name
            if path.is_file():
                spec = importlib.util.spec_from_file_location(path.stem, path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[path.stem] = module
                spec.loader.exec_module(module)
                return module
        raise ImportError(f"no file {module_name!r} in {', '.join(folders)}")
    for d in reversed(folders):
        if d not in sys.path:
            sys.path.insert(0, d)
    return importlib.import_module(module_name)


def import_reward(name: str, search: Sequence[str | Path] = (), **options: Any) -> RewardFn:
    """Import a user reward function named "package.module:function" or "file.py:function", looked up in the
    `search` folders (the recipe's), the working directory, then the installed packages.

    Options are passed to it as keyword arguments on every call; an option that is also a column name
    is an error (it would silently shadow the column).

    >>> import_reward("coldstart.rewards.basic:nope")
    Traceback (most recent call last):
    ValueError: user reward 'coldstart.rewards.basic:nope': module 'coldstart.rewards.basic' has no attribute 'nope'
    """
    module_name, sep, attr = name.rpartition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"user reward {name!r}: expected 'package.module:function' or 'file.py:function'")
    try:
        module = _module(module_name, search)
    except ImportError as e:
        raise ValueError(f"user reward {name!r}: cannot import module {module_name!r}: {e} (searched the "
                         "recipe's folder, the working directory and the installed packages)") from e
    fn = getattr(module, attr, None)
    if fn is None:
        raise ValueError(f"user reward {name!r}: module {module_name!r} has no attribute {attr!r}")
    if not callable(fn):
        raise ValueError(f"user reward {name!r}: {attr!r} is a {type(fn).__name__}, not a function")  # noqa: TRY004 - config error
    if not options:
        return fn

    def check(columns: dict) -> None:
        clash = sorted(set(options) & set(columns))
        if clash:
            raise ValueError(f"user reward {name!r}: options {clash} clash with column names")

    if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__):
        async def with_options_async(**columns):
            check(columns)
            return await fn(**columns, **options)

        with_options_async.__name__ = attr
        return with_options_async

    def with_options(**columns):
        check(columns)
        return fn(**columns, **options)

    with_options.__name__ = attr
    return with_options
