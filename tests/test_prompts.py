"""Tests for coldstart/prompts.py: strategies, SFT targets, chat rendering, format checks."""

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from coldstart.prompts import (
    STRATEGIES,
    build_messages,
    format_ok,
    get_strategy,
    render_prompt,
    render_target,
)
from coldstart.types import Example

TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _tokenizer(chat_template=None):
    """A real fast tokenizer built locally (word-level, two words), optionally with a chat template."""
    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "hi": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", chat_template=chat_template)


def test_five_strategies_with_their_tags():
    assert {n: s.tag for n, s in STRATEGIES.items()} == {
        "think": "think", "plan": "plan", "code": "code", "knowledge": "knowledge", "examples": "examples"}
    for s in STRATEGIES.values():
        assert f"<{s.tag}>" in s.system_prompt and "<answer>" in s.system_prompt
        assert s.system_prompt.isascii()


def test_unknown_strategy_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"'ponder'.*think, plan, code, knowledge, examples"):
        get_strategy("ponder")
    with pytest.raises(ValueError, match="ponder"):
        render_target(Example("q", "1", "s"), "ponder")


def test_render_target_per_strategy_and_without_solution():
    ex = Example("347+589", "936", "7+9=16 c1 6")
    assert render_target(ex) == "<think>7+9=16 c1 6</think><answer>936</answer>"
    assert render_target(ex, "knowledge") == "<knowledge>7+9=16 c1 6</knowledge><answer>936</answer>"
    assert render_target(Example("q", "7"), "code") == "<answer>7</answer>"


def test_build_messages_from_example_or_string():
    ex = Example("2+3", "5")
    msgs = build_messages(ex, "plan")
    assert msgs == [{"role": "system", "content": STRATEGIES["plan"].system_prompt},
                    {"role": "user", "content": "2+3"}]
    assert build_messages("2+3", system=False) == [{"role": "user", "content": "2+3"}]


def test_render_prompt_with_a_chat_template():
    tok = _tokenizer(TEMPLATE)
    sp = STRATEGIES["think"].system_prompt
    assert render_prompt(tok, Example("2+3", "5")) == f"<|system|>{sp}\n<|user|>2+3\n<|assistant|>"
    assert render_prompt(tok, "2+3", system=False) == "<|user|>2+3\n<|assistant|>"


def test_render_prompt_fallback_without_template():
    sp = STRATEGIES["examples"].system_prompt
    assert render_prompt(_tokenizer(), "2+3", "examples") == f"{sp}\n\n2+3\n"
    assert render_prompt(None, Example("2+3", "5"), system=False) == "2+3\n"


@pytest.mark.parametrize("text,ok", [
    ("<think>a</think><answer>1</answer>", True),
    ("  <think>\na\n</think>\n<answer> 1 </answer>\n", True),
    ("<answer>1</answer>", False),  # no tag pair
    ("<think>a</think>", False),  # no answer
    ("<answer>1</answer><think>a</think>", False),  # wrong order
    ("<think>a</think><think>b</think><answer>1</answer>", False),  # two tag pairs
    ("<think>a</think><answer>1</answer><answer>2</answer>", False),  # two answers
    ("<think>a<answer>1</answer></think>", False),  # answer inside the tag
    ("Sure! <think>a</think><answer>1</answer>", False),  # text outside the blocks
    ("<think>a</think><answer>1", False),  # truncated
])
def test_format_ok_think(text, ok):
    assert format_ok(text, "think") is ok


def test_format_ok_checks_the_strategy_tag():
    assert format_ok("<plan>p</plan><answer>1</answer>", "plan")
    assert not format_ok("<think>p</think><answer>1</answer>", "plan")
    for name in STRATEGIES:
        assert format_ok(render_target(Example("q", "1", "work"), name), name)
