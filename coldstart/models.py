"""Models and tokenizers: load a Hugging Face causal LM from a folder or hub id, or build a tiny one.

The embedded default needs nothing from the internet: `build_char_tokenizer` makes a character-level fast
tokenizer (one token per byte, so per ASCII character, plus the reasoning tags as single tokens and a small
chat template) and
`build_tiny_model` a randomly initialised Qwen2- or Llama-architecture decoder from a transformers config.
Both save as plain Hugging Face folders that `AutoTokenizer` / `AutoModelForCausalLM` load as is.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import bytes_to_unicode

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "<|end|>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]
# Reasoning tags become single tokens so a character model spends its length on the reasoning itself.
TAG_TOKENS = [
    f"<{slash}{tag}>"
    for tag in ("think", "plan", "code", "knowledge", "examples", "answer")
    for slash in ("", "/")
]
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}<|system|>{{ m['content'] }}"
    "{% elif m['role'] == 'user' %}<|user|>{{ m['content'] }}"
    "{% else %}<|assistant|>{{ m['content'] }}<|end|>{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level fast tokenizer: one token per byte (so per ASCII character), never an unknown.

    It is a byte-level BPE with no merges, the layout of GPT-2 / Qwen2 tokenizers, on purpose: transformers'
    AutoTokenizer rebuilds the pipeline of some model types from the vocabulary (a Qwen2 folder comes back as
    Qwen2Tokenizer, whatever tokenizer.json says), and a merge-free byte-level BPE survives that rebuild
    unchanged, "\n" and spaces included. Special tokens: <pad>, <unk>, <s>, <|end|> (eos) and the chat role
    markers; the reasoning tags (<think>, </answer>, ...) are ordinary added tokens, so they survive
    `skip_special_tokens=True`. Every byte is in the vocabulary, so no text is ever unknown.
    """
    specials = [PAD, UNK, BOS, EOS, *ROLE_TOKENS]
    byte_chars = bytes_to_unicode()  # GPT-2's printable stand-in for each byte, the ByteLevel alphabet
    vocab = {tok: i for i, tok in enumerate(specials + [byte_chars[b] for b in range(256)])}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        additional_special_tokens=ROLE_TOKENS,
        clean_up_tokenization_spaces=False,
    )
    tok.add_tokens(TAG_TOKENS)
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "left"
    return tok


def build_tiny_model(
    vocab_size: int,
    *,
    arch: str = "qwen2",
    hidden_size: int = 128,
    layers: int = 3,
    heads: int = 4,
    kv_heads: int | None = None,
    intermediate_size: int | None = None,
    max_len: int = 512,
    pad_id: int = 0,
    bos_id: int = 2,
    eos_id: int = 3,
    seed: int = 0,
) -> torch.nn.Module:
    """A randomly initialised decoder (Qwen2 or Llama architecture), seeded, in float32."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    archs = {"qwen2": (Qwen2Config, Qwen2ForCausalLM), "llama": (LlamaConfig, LlamaForCausalLM)}
    if arch not in archs:
        raise ValueError(f"model.arch: unknown architecture {arch!r}; choose from {sorted(archs)}")
    config_cls, model_cls = archs[arch]
    config = config_cls(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads or heads,
        intermediate_size=intermediate_size or 4 * hidden_size,
        max_position_embeddings=max_len,
        tie_word_embeddings=True,
        pad_token_id=pad_id,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        use_cache=True,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = model_cls(config)
    model.generation_config.pad_token_id = pad_id
    model.generation_config.eos_token_id = eos_id
    return model


def read_chat_template(value: str) -> str:
    """`model.chat_template`: a file (a Jinja template, or a tokenizer_config.json / chat_template.json holding
    one) or the template text itself; ValueError naming the key when it is neither."""
    p = Path(value).expanduser()
    if "{%" not in value and "{{" not in value:
        if not p.is_file():
            raise ValueError(f"model.chat_template: {value!r} is neither a file nor a Jinja template ({{% ... %}})")
        text = p.read_text(encoding="utf-8")
        if p.suffix == ".json":
            import json

            text = json.loads(text).get("chat_template")
            if not isinstance(text, str):
                raise ValueError(f"model.chat_template: {value} has no string 'chat_template' entry")
        return text
    return value


def load_tokenizer(path: str | Path, chat_template: str | None = None) -> PreTrainedTokenizerFast:
    """Load a tokenizer from a folder or hub id; left padding, and a pad token (eos if none).
    `chat_template` (model.chat_template: a file or the text) replaces the tokenizer's own template."""
    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except OSError as e:
        raise ValueError(not_loadable(path, "tokenizer", e)) from None
    if chat_template is not None:
        tok.chat_template = read_chat_template(chat_template)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def load_model(path: str | Path, dtype: str = "float32", device: str | torch.device = "cpu") -> torch.nn.Module:
    """Load a causal LM from a Hugging Face folder or hub id.

    Weights are read from safetensors files only (`use_safetensors=True`): a pickled `pytorch_model.bin`
    can run code when it is loaded, so a folder that has only that is refused.
    """
    if dtype not in DTYPES:
        raise ValueError(f"run.dtype: unknown dtype {dtype!r}; choose from {sorted(DTYPES)}")
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=DTYPES[dtype], use_safetensors=True)
    except OSError as e:
        raise ValueError(not_loadable(path, "model", e)) from None
    return model.to(device)


def not_loadable(path: str | Path, what: str, e: OSError) -> str:
    """One line on why a model folder or hub id could not be loaded, and how to point at a local folder."""
    p = Path(str(path)).expanduser()
    if p.is_dir():
        return f"model.path: cannot load the {what} from the folder {p}: {str(e).splitlines()[0]}"
    if str(path).startswith(("/", ".", "~")) or str(path).count("/") > 1:
        return f"model.path: {path} is not a folder (a Hugging Face model folder: config.json, weights, tokenizer)"
    offline = "not in the local cache and there is no network" if "connect" in str(e) or os.environ.get(
        "HF_HUB_OFFLINE") == "1" else str(e).splitlines()[0]
    return (f"model.path: the hub id {path!r} could not be loaded ({offline}); point model.path at a local "
            f"folder holding config.json, the weights and the tokenizer, or download it once where there is a "
            f"network (huggingface-cli download {path}) and run with HF_HUB_OFFLINE=1")


def compile_blocks(model: torch.nn.Module) -> int:
    """torch.compile each decoder block of `model` in place (per-block compile, as torchtitan does: the blocks
    share one compiled code object, and the state dict's keys do not change), and mark the model so that the
    SFT loss is compiled too. Samplers run the blocks eagerly (`rollout.base.eager`). Returns the number of
    blocks compiled: 0 when no list of `num_hidden_layers` identical blocks was found (nothing is compiled)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    n = getattr(base.config, "num_hidden_layers", None)
    for module in base.modules():
        if isinstance(module, torch.nn.ModuleList) and n and len(module) == n and len({type(m) for m in module}) == 1:
            for block in module:
                block.compile()
            base.coldstart_compiled = True
            return n
    return 0


def eos_ids(tokenizer, model=None) -> list[int]:
    """Token ids that end a completion: the tokenizer's eos plus the model's generation-config eos ids."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if gen_eos is not None:
        ids |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos])
    return sorted(ids)


def add_lora(model: torch.nn.Module, r: int, alpha: int, dropout: float, target_modules) -> torch.nn.Module:
    """Wrap `model` with fresh trainable LoRA adapters (peft); only the adapters require grad."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
                        task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def load_lora(base: str | Path, adapter: str | Path, dtype: str = "float32", device="cpu") -> torch.nn.Module:
    """The base model with the (trainable) adapter saved in `adapter` attached."""
    from peft import PeftModel

    return PeftModel.from_pretrained(load_model(base, dtype, device), str(adapter), is_trainable=True)


def is_lora(model: torch.nn.Module) -> bool:
    """True for a peft-wrapped model."""
    return hasattr(model, "disable_adapter") and hasattr(model, "merge_and_unload")


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total
