"""Chat formats on real vocabularies and templates (tests/realtok.py): Qwen2.5, Qwen3 (thinking on and off),
Qwen3-Thinking, DeepSeek-R1-Distill (BOS in the template), a base tokenizer that adds BOS."""

import json

import pytest

from coldstart.config import PromptConfig
from coldstart.prompts import chat_format
from coldstart.sft import encode_trace
from coldstart.types import Example
from tests.realtok import base_bos_tokenizer, deepseek_tokenizer, qwen_tokenizer, save_tiny_model

EX = Example("What is 2+3?", "5", "2+3=5")
HI = [{"role": "user", "content": "hi"}]


def test_fixtures_have_the_real_ids_and_templates():
    tok = qwen_tokenizer("qwen2.5")
    assert tok("Hello world").input_ids == [9707, 1879]
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]) == [
        151643, 151644, 151645, 151667, 151668]
    assert tok.apply_chat_template(HI, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    thinking = qwen_tokenizer("qwen3-thinking").apply_chat_template(HI, tokenize=False, add_generation_prompt=True)
    assert thinking.endswith("<|im_start|>assistant\n<think>\n")
    ds = deepseek_tokenizer()
    assert ds.apply_chat_template(HI, tokenize=False, add_generation_prompt=True) == (
        "<｜begin▁of▁sentence｜><｜User｜>hi<｜Assistant｜><think>\n")
    base = base_bos_tokenizer()
    assert base("a").input_ids[0] == base.bos_token_id != base("a", add_special_tokens=False).input_ids[0]


@pytest.mark.parametrize("style, kwargs, prefix, target", [
    ("qwen2.5", {}, "", "<think>2+3=5</think><answer>5</answer>"),
    ("qwen3", {}, "", "<think>\n2+3=5\n</think>\n\n<answer>5</answer>"),  # the template's own think layout
    ("qwen3", {"enable_thinking": False}, "<think>\n\n</think>\n\n", "<answer>5</answer>"),
    ("qwen3-thinking", {}, "<think>\n", "2+3=5\n</think>\n\n<answer>5</answer>"),  # starts inside <think>
])
def test_sft_targets_follow_the_template(style, kwargs, prefix, target):
    tok = qwen_tokenizer(style)
    fmt = chat_format(tok, PromptConfig(chat_template_kwargs=kwargs))
    assert fmt.prefix == prefix and fmt.target(EX) == target and fmt.bos is None
    enc = encode_trace(fmt, EX)
    text = tok.decode(enc.ids)
    turn_text = text.split("<|im_start|>assistant")[-1]  # the system prompt mentions the tags too
    assert turn_text.count("<think>") == 1 and turn_text.count("</think>") == 1
    if style.startswith("qwen3") and not kwargs:  # exactly what the template renders for that assistant turn
        turn = {"role": "assistant", "content": "<think>\n2+3=5\n</think>\n\n<answer>5</answer>"}
        rendered = tok.apply_chat_template([*_messages(fmt), turn], tokenize=False)
        assert text == rendered.removesuffix("\n")


def _messages(fmt):
    from coldstart.prompts import build_messages

    return build_messages(EX, fmt.prompt)


def test_system_prompts_on_a_qwen_template():
    tok = qwen_tokenizer("qwen2.5")
    assert "You are Qwen" in chat_format(tok, PromptConfig(system=False)).text(EX)
    assert "You are Qwen" not in chat_format(tok, PromptConfig()).text(EX)  # the strategy's system prompt
    mine = chat_format(tok, PromptConfig(system_prompt="Solve it.")).text(EX)
    assert mine.startswith("<|im_start|>system\nSolve it.<|im_end|>")
    conv = Example([{"role": "system", "content": "Dataset's own."}, {"role": "user", "content": "2+3?"}], "5")
    assert chat_format(tok, PromptConfig()).text(conv).startswith("<|im_start|>system\nDataset's own.<|im_end|>")


def test_bos_written_by_the_template_or_added_by_convention_appears_once():
    ds = chat_format(deepseek_tokenizer(), PromptConfig())
    ids = ds.prompt_ids(EX)
    assert ds.bos is None and ids[0] == 0 and ids.count(0) == 1  # R1-distill: the template writes it
    assert ds.prefix == "<think>\n" and ds.target(EX) == "2+3=5\n</think>\n\n<answer>5</answer>"
    base = base_bos_tokenizer()
    fmt = chat_format(base, PromptConfig(system=False))
    ids = fmt.prompt_ids(EX)
    assert fmt.bos == base.bos_token_id and ids[0] == base.bos_token_id and ids.count(base.bos_token_id) == 1
    assert ids[1:] == base(fmt.text(EX), add_special_tokens=False).input_ids


def test_sft_and_rl_run_on_a_qwen3_thinking_model(tmp_path):
    """The whole pipeline on a real vocabulary and a template that opens <think>; inspect finds no clash."""
    from coldstart.cli import main
    from tests.conftest import TINY

    folder = save_tiny_model(qwen_tokenizer("qwen3-thinking"), tmp_path / "model")
    rows = [{"prompt": f"What is {i}+{i}?", "answer": str(2 * i), "solution": f"{i}+{i}={2 * i}"} for i in range(60)]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = [o for o in TINY if not o.startswith(("model.", "task."))] + [
        "model.init=pretrained", f"model.path={folder}", "model.max_len=160", "task.name=file",
        f"task.options={{path: '{data}'}}",
        "task.val_size=4", "task.test_size=4", "sft.traces=16", "sft.max_steps=2", "rl.steps=1",
        "rl.rewards=[{name: accuracy}, {name: format, weight: 0.5}]", "prompt.system=true"]
    out = tmp_path / "run"
    assert main(["run", "recipes/demo.yaml", "--out", str(out), *args, "run.stages=[sft,rl]"]) == 0
    assert main(["inspect", "recipes/demo.yaml", "--out", str(out), *args, "--prompts", "2", "--k", "2"]) == 0
    report = json.loads((out / "inspect.json").read_text())
    assert report["format"]["completion_prefix"] == "<think>\n"
    assert report["gold"]["reward_on_targets"]["format"] == 1.0
    assert not any("already writes" in v["message"] for v in report["verdict"])
