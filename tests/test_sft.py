
import pytest
import torch
from safetensors.torch import load_file

from coldstart.cli import main
from coldstart.config import load_recipe
from coldstart.models import build_char_tokenizer, build_tiny_model
from coldstart.prompts import chat_format
from coldstart.sft import Encoded, collate, encode_trace, masked_lm_loss
from coldstart.types import Example
from tests.conftest import kill_when_saved


def test_prompt_tokens_carry_no_loss():
    tok = build_char_tokenizer()
    enc = encode_trace(chat_format(tok, "think", system=False), Example("12+34", "46", "2+4=6\n1+3=4"))
    prompt = tok.decode(enc.ids[: enc.n_prompt])
    assert prompt == "<|user|>12+34<|assistant|>"
    assert tok.decode(enc.ids[enc.n_prompt :]) == "<think>2+4=6\n1+3=4</think><answer>46</answer><|end|>"
    for pack in (True, False):
        batch = collate([enc, Encoded([5, 6, 7], 2)], pack, tok.pad_token_id)
        labels = batch["labels"].flatten().tolist()
        ids = batch["input_ids"].flatten().tolist()
        kept = [i for i, lab in zip(ids, labels) if lab != -100]
        assert kept == [*enc.ids[enc.n_prompt :], 7]
        if pack:
            assert batch["position_ids"][0, len(enc.ids)].item() == 0


def test_packed_loss_equals_padded_loss():
    tok = build_char_tokenizer()
    model = build_tiny_model(len(tok), hidden_size=32, layers=2, heads=2)
    seqs = [Encoded(list(range(5, 5 + n)), 2) for n in (4, 9, 6)]
    packed, _ = masked_lm_loss(model, collate(seqs, True, 0))
    padded, _ = masked_lm_loss(model, collate(seqs, False, 0))
    assert torch.allclose(packed, padded, atol=1e-5)


def test_sft_cli_trains_and_writes_hf_folder(tmp_path, tiny_overrides):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "run"
    assert main(["sft", "recipes/demo.yaml", "--out", str(out), *tiny_overrides, "sft.eval_every=4"]) == 0
    stage = out / "sft"
    assert (stage / "complete.json").is_file() and (out / "config.yaml").is_file()
    assert load_recipe(stage / "config.yaml").sft.max_steps == 8
    rows = (stage / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 8 and '"val/accuracy"' in rows[3]
    model = AutoModelForCausalLM.from_pretrained(stage)
    tok = AutoTokenizer.from_pretrained(stage)
    ids = tok("<|user|>12+34<|assistant|>", add_special_tokens=False, return_tensors="pt").input_ids
    assert model.generate(ids, max_new_tokens=4, do_sample=False).shape[1] == ids.shape[1] + 4


def test_bad_inputs_exit_2_with_a_clear_message(tmp_path, tiny_overrides, capsys):
    out = str(tmp_path / "r")
    assert main(["sft", "recipes/demo.yaml", "--out", out, *tiny_overrides, "sft.tracez=3"]) == 2
    assert "sft.tracez: unknown key" in capsys.readouterr().err
    assert main(["sft", "recipes/demo.yaml", "--out", out, *tiny_overrides, "sft.traces=100000"]) == 2
    assert "sft.traces" in capsys.readouterr().err
    assert main(["sft", "recipes/demo.yaml", "--out", out, *tiny_overrides, "task.name=nosuchtask"]) == 2
    assert "nosuchtask" in capsys.readouterr().err
    assert not (tmp_path / "r" / "sft" / "complete.json").exists()


def _weights(stage):
    return load_file(str(stage / "model.safetensors"))


@pytest.mark.parametrize("extra", [[], ["model.lora={r: 4, alpha: 8}"]], ids=["full", "lora"])
def test_sigkill_then_resume_gives_identical_weights(tmp_path, tiny_overrides, extra):
    args = ["sft", "recipes/demo.yaml", *tiny_overrides, "sft.max_steps=16", "sft.save_every=2", *extra]
    assert main([*args, "--out", str(tmp_path / "straight")]) == 0

    killed = tmp_path / "killed"
    kill_when_saved([*args, "--out", str(killed)], killed / "sft" / "checkpoints" / "step-000006")
    assert main([*args, "--out", str(killed), "--resume"]) == 0

    a, b = _weights(tmp_path / "straight" / "sft"), _weights(killed / "sft")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _write_jsonl(path, n, bad_line=None):
    import json

    lines = []
    for i in range(n):
        a, b = i % 10, (i * 7) % 10
        lines.append(json.dumps({"q": f"{a}+{b}", "target": str(a + b), "cot": f"{a}+{b}={a + b}"}))
    if bad_line is not None:
        lines.insert(bad_line - 1, '{"q": "1+1", "target": ')
    path.write_text("\n".join(lines) + "\n")


def test_file_task_through_the_cli(tmp_path, tiny_overrides, capsys):
    data = tmp_path / "data.jsonl"
    _write_jsonl(data, 60)
    task = ["task.name=file", f"task.options={{path: '{data}', fields: {{prompt: q, answer: target, solution: cot}}}}",
            "sft.traces=0.5"]
    assert main(["run", "recipes/demo.yaml", "--out", str(tmp_path / "ok"), *tiny_overrides, *task,
                 "rl.steps=1"]) == 0
    assert (tmp_path / "ok" / "eval.json").is_file()

    bad = tmp_path / "bad.jsonl"
    _write_jsonl(bad, 20, bad_line=4)
    task[1] = task[1].replace(str(data), str(bad))
    assert main(["sft", "recipes/demo.yaml", "--out", str(tmp_path / "bad"), *tiny_overrides, *task]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl" in err and "line 4" in err


def test_countdown_backtracking_recipe_runs(tmp_path, tiny_overrides):
    from coldstart.tasks.countdown import count_backtracks

    out = tmp_path / "cd"
    assert main(["sft", "recipes/countdown.yaml", "--out", str(out), *tiny_overrides, "task.name=countdown",
                 "task.options={backtracks: 2, max_target: 30}", "model.max_len=256", "sft.max_new_tokens=64"]) == 0
    from coldstart.config import load_recipe
    from coldstart.infra.stage import build_task_from
    from coldstart.sft import select_traces

    recipe = load_recipe(out / "sft" / "config.yaml")
    traces = select_traces(build_task_from(recipe).examples("train", 32, 0), 32)
    assert all(count_backtracks(ex.solution) == 2 for ex in traces)


def _reference_loss(model, inputs):
    """The loss over every position's logits, as before positions were selected."""
    logits = model(**{k: v for k, v in inputs.items() if k != "labels"}, use_cache=False).logits[:, :-1].float()
    target = inputs["labels"][:, 1:]
    n = int((target != -100).sum())
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                             ignore_index=-100, reduction="sum") / n


class IgnoresKeep(torch.nn.Module):
    """A causal LM whose forward takes `logits_to_keep` but returns every position (like some remote code)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.config = inner, inner.config

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False, logits_to_keep=0):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=use_cache)


def _gpt2(vocab: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=vocab, n_positions=64,
                                      bos_token_id=2, eos_token_id=2, resid_pdrop=0.0, embd_pdrop=0.0,
                                      attn_pdrop=0.0))  # no dropout: two passes must agree


@pytest.mark.parametrize("arch", ["qwen2", "llama", "gpt2"])
@pytest.mark.parametrize("pack", [True, False])
def test_loss_on_kept_positions_matches_full_logits(pack, arch):
    from coldstart.sft import keeps_logit_positions

    tok = build_char_tokenizer()
    torch.manual_seed(0)
    model = _gpt2(len(tok)) if arch == "gpt2" else build_tiny_model(len(tok), arch=arch, hidden_size=32, layers=2,
                                                                      heads=2)
    seqs = [Encoded(list(range(5, 5 + n)), p) for n, p in ((7, 3), (12, 6), (9, 2))]
    inputs = collate(seqs, pack, 0)
    assert keeps_logit_positions(model)
    for m in (model, IgnoresKeep(model)):
        loss, n = masked_lm_loss(m, inputs)
        assert n == sum(len(e.ids) - e.n_prompt for e in seqs)
        grads = torch.autograd.grad(loss, list(model.parameters()))
        ref = _reference_loss(model, inputs)
        ref_grads = torch.autograd.grad(ref, list(model.parameters()))
        assert torch.allclose(loss, ref, atol=1e-6)
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads, ref_grads))
    assert not keeps_logit_positions(IgnoresKeep(model))


def test_pack_only_when_cheaper():
    from coldstart.sft import pack_is_cheaper

    tok = build_char_tokenizer()
    model = build_tiny_model(len(tok), hidden_size=32, layers=2, heads=2)
    assert not pack_is_cheaper(model, [50] * 16)  # equal lengths: padding wastes nothing, packing's mask is dense
    assert pack_is_cheaper(model, [200] + [3] * 15)  # one long sequence: padding wastes 15 × 197 tokens
    assert not pack_is_cheaper(model, [])
    model.config._attn_implementation = "flash_attention_2"  # variable-length kernel: no dense mask
    assert pack_is_cheaper(model, [50] * 16)
