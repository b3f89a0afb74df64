"""Prompt strategies and rendering: the system prompt, the chat prompt, and the SFT target.

Strategies (docs/algorithms.md §17, prior prompt engineering for RFT, Taveekitworachai et al. 2505.14157).
Each asks for one tagged block before the `<answer>` block:

    think      <think>      step-by-step reasoning (CoT)
    plan       <plan>       a plan, then its execution (Plan-and-Solve)
    code       <code>       a program and its result (Program-of-Thought)
    knowledge  <knowledge>  the relevant facts and formulas (Generated Knowledge)
    examples   <examples>   its own illustrative examples, none given (Null-shot)

`render_target` writes the SFT target `<tag>{solution}</tag><answer>{answer}</answer>` (only the answer
block when the example has no solution); `format_ok` checks that a completion has exactly one tag pair,
then exactly one answer pair, with only whitespace around them (the paper's format reward).

`render_prompt` uses the tokenizer's chat template when it has one (`apply_chat_template(...,
add_generation_prompt=True)`). Fallback, for tokenizers without a template (base models often
have none) or tokenizer=None: the plain text `"{system_prompt}\\n\\n{prompt}\\n"`, or `"{prompt}\\n"`
with system=False.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from coldstart.types import Example


@dataclass(frozen=True)
class Strategy:
    name: str
    tag: str  # the block before <answer>, e.g. "think" for <think>...</think>
    system_prompt: str


def _system(instruction: str, tag: str) -> str:
    return (f"{instruction} inside <{tag}> </{tag}>, then give only the final answer inside "
            f"<answer> </answer>.")


STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy("think", "think", _system("Reason step by step", "think")),
        Strategy("plan", "plan", _system("Write a plan to solve the problem and carry it out", "plan")),
        Strategy("code", "code", _system("Write a program that solves the problem and state what it outputs",
                                         "code")),
        Strategy("knowledge", "knowledge", _system("Recall the facts and formulas the problem needs and "
                                                   "apply them", "knowledge")),
        Strategy("examples", "examples", _system("Make up and work through your own illustrative examples of "
                                                 "the problem, then solve it", "examples")),
    )
}


def get_strategy(strategy: str) -> Strategy:
    """The Strategy called `strategy`; ValueError listing the valid names otherwise."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown prompt strategy {strategy!r}; valid strategies: {', '.join(STRATEGIES)}")
    return STRATEGIES[strategy]


def render_target(example: Example, strategy: str = "think") -> str:
    """The SFT target text for `example`.

    >>> render_target(Example("2+2", "4", "2+2=4"))
    '<think>2+2=4</think><answer>4</answer>'
    >>> render_target(Example("2+2", "4"), "plan")
    '<answer>4</answer>'
    """
    tag = get_strategy(strategy).tag
    answer = f"<answer>{example.answer}</answer>"
    return answer if example.solution is None else f"<{tag}>{example.solution}</{tag}>{answer}"


def build_messages(example_or_prompt: Example | str, strategy: str = "think", system: bool = True
                   ) -> list[dict[str, str]]:
    """Chat messages: the strategy's system prompt (if system) and the user's prompt.

    >>> build_messages("2+2", system=False)
    [{'role': 'user', 'content': '2+2'}]
    """
    s = get_strategy(strategy)
    prompt = example_or_prompt.prompt if isinstance(example_or_prompt, Example) else example_or_prompt
    messages = [{"role": "system", "content": s.system_prompt}] if system else []
    return [*messages, {"role": "user", "content": prompt}]


def render_prompt(tokenizer: Any, example: Example | str, strategy: str = "think", system: bool = True) -> str:
    """The prompt text the model continues: the chat template with a generation prompt, else the fallback.

    >>> render_prompt(None, "2+2", system=False)
    '2+2\\n'
    """
    messages = build_messages(example, strategy, system)
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "\n\n".join(m["content"] for m in messages) + "\n"


def format_ok(text: str, strategy: str = "think") -> bool:
    """True if `text` is exactly `<tag>...</tag>` then `<answer>...</answer>`, whitespace around them.

    >>> format_ok("<think>a</think>\\n<answer>1</answer>"), format_ok("<answer>1</answer><think>a</think>")
    (True, False)
    """
    tag = get_strategy(strategy).tag
    markers = (f"<{tag}>", f"</{tag}>", "<answer>", "</answer>")
    if any(text.count(m) != 1 for m in markers):
        return False
    pattern = rf"\s*<{tag}>.*</{tag}>\s*<answer>.*</answer>\s*"
    return re.fullmatch(pattern, text, flags=re.DOTALL) is not None
