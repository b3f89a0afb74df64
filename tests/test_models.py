import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from coldstart.models import build_char_tokenizer, build_tiny_model, load_tokenizer

TEXT = "<|user|>347+589\n  x\t~{}\\<|assistant|><think>7+9=16 c1\n\n</think><answer>936</answer><|end|>"


def test_char_tokenizer_round_trips_through_saved_folder(tmp_path):
    tok = build_char_tokenizer()
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    for t in (tok, again, load_tokenizer(tmp_path)):
        ids = t(TEXT + "é", add_special_tokens=False).input_ids
        assert t.decode(ids) == TEXT + "é"
        assert "\n" in t.decode(ids, skip_special_tokens=True)
    # one token per ASCII character, tags and role markers as single tokens
    assert len(again("ab\n", add_special_tokens=False).input_ids) == 3
    assert len(again("<think></answer>", add_special_tokens=False).input_ids) == 2
    assert again.decode(again("<think>x", add_special_tokens=False).input_ids, skip_special_tokens=True) == "<think>x"
    msgs = [{"role": "user", "content": "1+2"}]
    assert again.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == "<|user|>1+2<|assistant|>"
    assert again.pad_token_id == 0 and again.eos_token == "<|end|>"


def test_tiny_model_is_seeded_and_loads(tmp_path):
    tok = build_char_tokenizer()
    a = build_tiny_model(len(tok), seed=1, hidden_size=32, layers=1, heads=2)
    b = build_tiny_model(len(tok), seed=1, hidden_size=32, layers=1, heads=2)
    c = build_tiny_model(len(tok), seed=2, hidden_size=32, layers=1, heads=2, arch="llama")
    assert torch.equal(a.lm_head.weight, b.lm_head.weight)
    assert c.config.model_type == "llama"
    a.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    out = loaded.generate(torch.tensor([[5, 6]]), max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 5)


def test_tokenizer_survives_a_model_folder_of_every_arch(tmp_path):
    """AutoTokenizer rebuilds some model types' tokenizers from the vocabulary (Qwen2 → Qwen2Tokenizer)."""
    tok = build_char_tokenizer()
    for arch in ("qwen2", "llama"):
        folder = tmp_path / arch
        build_tiny_model(len(tok), arch=arch, hidden_size=32, layers=1, heads=2).save_pretrained(folder)
        tok.save_pretrained(folder)
        first = AutoTokenizer.from_pretrained(folder)
        first.save_pretrained(tmp_path / f"{arch}-again")  # a second round trip, as every checkpoint does
        (tmp_path / f"{arch}-again" / "config.json").write_text((folder / "config.json").read_text())
        for t in (first, AutoTokenizer.from_pretrained(tmp_path / f"{arch}-again")):
            ids = t(TEXT + "é", add_special_tokens=False).input_ids
            assert ids == tok(TEXT + "é", add_special_tokens=False).input_ids, (arch, type(t).__name__)
            assert t.decode(ids) == TEXT + "é"
