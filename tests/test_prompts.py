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


# ---- chat formats: generation prefixes, think layouts, BOS (real-vocabulary cases: tests/test_realtok.py) ---------
def _char(template: str | None):
    from coldstart.models import CHAT_TEMPLATE, build_char_tokenizer

    tok = build_char_tokenizer()
    tok.chat_template = None if template is None else template.replace("%CHAT%", CHAT_TEMPLATE)
    return tok


HYBRID = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
          "{% if add_generation_prompt %}<|assistant|>{% if enable_thinking is defined and not enable_thinking %}"
          "<think>\n\n</think>\n\n{% endif %}{% endif %}")
OPENS = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
         "{% if add_generation_prompt %}<|assistant|><think>\n{% endif %}")


def test_a_generation_prompt_that_opens_think_is_continued_not_doubled():
    from coldstart.config import PromptConfig
    from coldstart.prompts import chat_format

    ex = Example("2+3", "5", "2+3=5")
    fmt = chat_format(_char(OPENS), PromptConfig(system=False))
    assert fmt.prefix == "<think>\n" and fmt.think_layout
    assert fmt.text(ex).endswith("<|assistant|><think>\n")
    assert fmt.target(ex) == "2+3=5\n</think>\n\n<answer>5</answer>"  # the model's own layout, inside the tag
    assert (fmt.prefix + fmt.target(ex)).count("<think>") == 1

    plain = chat_format(_char(HYBRID), PromptConfig(system=False))
    assert plain.prefix == "" and plain.target(ex) == "<think>\n2+3=5\n</think>\n\n<answer>5</answer>"
    off = chat_format(_char(HYBRID), PromptConfig(system=False, chat_template_kwargs={"enable_thinking": False}))
    assert off.prefix == "<think>\n\n</think>\n\n" and off.text(ex).endswith("<think>\n\n</think>\n\n")
    assert off.target(ex) == "<answer>5</answer>"  # thinking off: the template wrote an empty block

    no_template = chat_format(_char(None), PromptConfig(system=False))
    assert no_template.prefix == "" and no_template.target(ex) == "<think>2+3=5</think><answer>5</answer>"


def test_bos_is_added_when_the_tokenizer_convention_adds_it_and_never_doubled():
    from tokenizers import processors

    from coldstart.config import PromptConfig
    from coldstart.prompts import chat_format

    tok = _char(None)
    assert chat_format(tok).bos is None  # the character tokenizer adds no BOS: nothing changes
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.bos_token_id)])
    fmt = chat_format(tok, PromptConfig(system=False))
    ids = fmt.prompt_ids("2+3")
    assert fmt.bos == tok.bos_token_id and ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id
    tok.chat_template = "<s>{% for m in messages %}{{ m['content'] }}{% endfor %}"  # a template writing BOS
    ids = chat_format(tok, PromptConfig(system=False)).prompt_ids("2+3")
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1


def test_system_prompt_and_template_kwargs_reach_the_template():
    from coldstart.config import PromptConfig
    from coldstart.prompts import render_prompt

    tok = _char("%CHAT%")
    assert "<|system|>Be brief." in render_prompt(tok, "2+3", PromptConfig(system_prompt="Be brief."))
    assert "<|system|>" not in render_prompt(tok, "2+3", PromptConfig(system=False))
    conv = [{"role": "system", "content": "Mine."}, {"role": "user", "content": "2+3"}]
    assert render_prompt(tok, conv) == "<|system|>Mine.<|user|>2+3<|assistant|>"
    assert render_prompt(None, conv) == "Mine.\n\n2+3\n"
