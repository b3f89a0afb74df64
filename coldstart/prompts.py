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
add_generation_prompt=True, **prompt.chat_template_kwargs)`). Fallback, for tokenizers without a template
(base models often have none) or tokenizer=None: the messages' contents joined by blank lines, then "\\n":
`"{system_prompt}\\n\\n{prompt}\\n"`, or `"{prompt}\\n"` with system=False.

The messages (`build_messages`): a conversational prompt (a list of chat messages, TRL's format) as given,
its own system message and earlier turns included; a string prompt as the user's message after the system
prompt: `prompt.system_prompt` when set, else the strategy's (prompt.system=false: none, so a template's own
default system prompt applies).

`ChatFormat` (`chat_format(tokenizer, prompt)`) is what the stages use: the rendered prompt's token ids with
BOS first when the tokenizer's convention adds one (Llama-3 / Gemma base models; a template that writes BOS
itself is left alone), and the SFT target laid out for the template: when the generation prompt already
opens the strategy's tag (Qwen3-Thinking, DeepSeek-R1-Distill and QwQ write `<think>\\n`), that part
(`ChatFormat.prefix`) is left out of the target, and a template with a think layout gets it:
`<think>\\n{solution}\\n</think>\\n\\n<answer>{answer}</answer>`. Rewards see `prefix` again as the
`completion_prefix` column (coldstart's built-ins put it back in front of the completion).
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


def render_target(example: Example, strategy: str = "think", think_layout: bool = False) -> str:
    """The SFT target text for `example`: its verbatim `target` when it has one, else the strategy's blocks
    (think_layout: the `<think>\\n…\\n</think>\\n\\n` layout of templates that have one).

    >>> render_target(Example("2+2", "4", "2+2=4"))
    '<think>2+2=4</think><answer>4</answer>'
    >>> render_target(Example("2+2", "4"), "plan")
    '<answer>4</answer>'
    >>> render_target(Example("2+2", "4", "2+2=4"), think_layout=True)
    '<think>\\n2+2=4\\n</think>\\n\\n<answer>4</answer>'
    """
    if example.target is not None:
        return example.target
    tag = get_strategy(strategy).tag
    answer = f"<answer>{example.answer}</answer>"
    if example.solution is None:
        return answer
    if think_layout and tag == "think":
        return f"<think>\n{example.solution.strip()}\n</think>\n\n{answer}"
    return f"<{tag}>{example.solution}</{tag}>{answer}"


def _cfg(prompt: Any, system: bool | None = None) -> Any:
    """A PromptConfig from a config, a strategy name or None (the defaults); `system` overrides its system."""
    from coldstart.config import PromptConfig

    cfg = PromptConfig() if prompt is None else PromptConfig(strategy=prompt) if isinstance(prompt, str) else prompt
    return cfg if system is None or system == cfg.system else cfg.model_copy(update={"system": system})


def build_messages(example_or_prompt: Example | str | list, prompt: Any = None, system: bool | None = None
                   ) -> list[dict[str, Any]]:
    """Chat messages of a prompt (see the module docstring); `prompt`: a PromptConfig or a strategy name,
    `system` (if given) overriding its `system`.

    >>> from coldstart.config import PromptConfig
    >>> build_messages("2+2", PromptConfig(system=False))
    [{'role': 'user', 'content': '2+2'}]
    >>> build_messages([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2"}])[0]
    {'role': 'system', 'content': 'Be brief.'}
    """
    cfg = _cfg(prompt, system)
    p = example_or_prompt.prompt if isinstance(example_or_prompt, Example) else example_or_prompt
    system = cfg.system_prompt if cfg.system_prompt is not None else (
        get_strategy(cfg.strategy).system_prompt if cfg.system else None)
    if isinstance(p, list):
        messages = [dict(m) for m in p]
        has_system = any(m.get("role") in ("system", "developer") for m in messages)
        return messages if has_system or cfg.system_prompt is None else [
            {"role": "system", "content": cfg.system_prompt}, *messages]
    return [*([{"role": "system", "content": system}] if system else []), {"role": "user", "content": p}]


def _content(m: dict) -> str:
    c = m.get("content", "")
    if isinstance(c, list):  # typed blocks: keep the text ones
        return "".join(b.get("text", "") for b in c if isinstance(b, dict))
    return "" if c is None else str(c)


def render_prompt(tokenizer: Any, example: Example | str | list, prompt: Any = None, system: bool | None = None
                  ) -> str:
    """The prompt text the model continues: the chat template with a generation prompt, else the fallback.

    >>> from coldstart.config import PromptConfig
    >>> render_prompt(None, "2+2", PromptConfig(system=False))
    '2+2\\n'
    """
    cfg = _cfg(prompt, system)
    messages = build_messages(example, cfg)
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                             **(cfg.chat_template_kwargs or {}))
    return "\n\n".join(_content(m) for m in messages) + "\n"


def adds_bos(tokenizer: Any) -> int | None:
    """The BOS id when the tokenizer's convention puts it first (`tokenizer("a")` starts with it and the
    text alone does not), else None (Qwen has no BOS; our character tokenizer adds none)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if tokenizer is None or bos is None:
        return None
    with_special = tokenizer("a").input_ids
    return bos if with_special[:1] == [bos] and tokenizer("a", add_special_tokens=False).input_ids[:1] != [bos] \
        else None


def generation_prefix(tokenizer: Any, prompt: Any = None) -> str:
    """What the template's generation prompt writes of the completion: from the strategy's opening tag on
    (`"<think>\\n"`; `"<think>\\n\\n</think>\\n\\n"` for Qwen3 with enable_thinking=False), "" when it opens none.

    >>> generation_prefix(None)
    ''
    """
    cfg = _cfg(prompt)
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        return ""
    tag = f"<{get_strategy(cfg.strategy).tag}>"
    messages = build_messages("\x00", cfg)
    kwargs = cfg.chat_template_kwargs or {}
    with_gen = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)
    tail = with_gen[with_gen.rfind("\x00") + 1:]
    return tail[tail.find(tag):] if tag in tail else ""


def has_think_layout(tokenizer: Any) -> bool:
    """True when the chat template itself lays out reasoning as `<think>\\n…\\n</think>\\n\\n` (Qwen3, QwQ,
    DeepSeek-R1): SFT targets then follow that layout."""
    template = getattr(tokenizer, "chat_template", None)
    return isinstance(template, str) and "<think>\\n" in template.replace("\n", "\\n") and "</think>" in template


@dataclass(frozen=True)
class ChatFormat:
    """How prompts are rendered and SFT targets laid out for one tokenizer and prompt config."""

    tokenizer: Any
    prompt: Any  # PromptConfig
    prefix: str  # the part of the completion the generation prompt already wrote; "" if none
    think_layout: bool
    bos: int | None  # put first when the tokenizer's convention adds BOS and the rendered text lacks it

    def text(self, example: Example | str | list) -> str:
        """The rendered prompt."""
        return render_prompt(self.tokenizer, example, self.prompt)

    def prompt_ids(self, example: Example | str | list) -> list[int]:
        """(P,) token ids of the rendered prompt, BOS first when the convention needs it."""
        return self.encode_prompt(self.text(example))

    def encode_prompt(self, text: str) -> list[int]:
        """(P,) token ids of a rendered prompt text, BOS first when the convention needs it."""
        ids = self.tokenizer(text, add_special_tokens=False).input_ids
        return [self.bos, *ids] if self.bos is not None and ids[:1] != [self.bos] else ids

    def target(self, example: Example) -> str:
        """The SFT target as the model continues the prompt: the full target less what `prefix` wrote."""
        full = render_target(example, self.prompt.strategy, self.think_layout)
        return strip_prefix(full, self.prefix)


def strip_prefix(target: str, prefix: str) -> str:
    """`target` continued after a generation prompt that wrote `prefix` (see ChatFormat.target).

    >>> strip_prefix("<think>\\nx\\n</think>\\n\\n<answer>1</answer>", "<think>\\n")
    'x\\n</think>\\n\\n<answer>1</answer>'
    >>> strip_prefix("<think>x</think><answer>1</answer>", "<think>\\n\\n</think>\\n\\n")
    '<answer>1</answer>'
    """
    if not prefix:
        return target
    if target.startswith(prefix):
        return target[len(prefix):]
    tag = prefix[: prefix.index(">") + 1]
    close = "</" + tag[1:]
    if close in prefix:  # the template wrote an empty block (thinking off): the target's own block goes
        return target[target.index(close) + len(close):].lstrip() if close in target else target
    return target[len(tag):].lstrip() if target.startswith(tag) else target


def chat_format(tokenizer: Any, prompt: Any = None, system: bool | None = None) -> ChatFormat:
    """The ChatFormat of `tokenizer` under `prompt` (a PromptConfig, a strategy name or None; `system`
    overriding its system)."""
    cfg = _cfg(prompt, system)
    prefix = generation_prefix(tokenizer, cfg)  # a generation prompt that opens <think>\n implies the layout
    return ChatFormat(tokenizer, cfg, prefix, has_think_layout(tokenizer) or prefix.startswith("<think>\n"),
                      adds_bos(tokenizer))


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
