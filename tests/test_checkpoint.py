import json

import torch

from coldstart.infra.checkpoint import (
    finalize_stage,
    is_complete,
    latest_checkpoint,
    load_trainer_state,
    save_checkpoint,
)
from coldstart.models import build_char_tokenizer, build_tiny_model


def tiny():
    tok = build_char_tokenizer()
    return build_tiny_model(len(tok), hidden_size=32, layers=1, heads=2), tok


def test_save_resume_restores_everything(tmp_path):
    model, tok = tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.tensor([[5, 6, 7]])).logits.sum().backward()
    opt.step()
    gen = torch.Generator().manual_seed(3)
    torch.manual_seed(11)
    ck = save_checkpoint(tmp_path, 5, model, tok, {"cursor": 42}, opt, None, {"sampler": gen})
    expected_rand, expected_gen = torch.rand(3), torch.rand(3, generator=gen)
    assert latest_checkpoint(tmp_path) == ck and ck.name == "step-000005"
    opt2 = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen2 = torch.Generator()
    state = load_trainer_state(ck, opt2, None, {"sampler": gen2})
    assert state == {"cursor": 42, "step": 5}
    assert torch.equal(torch.rand(3), expected_rand) and torch.equal(torch.rand(3, generator=gen2), expected_gen)
    assert opt2.state_dict()["state"][0]["step"] == 1


def test_half_written_checkpoint_is_never_latest(tmp_path):
    model, tok = tiny()
    good = save_checkpoint(tmp_path, 1, model, tok, {})
    # a kill mid-save leaves a hidden temp folder, never a step-* name
    (tmp_path / "checkpoints" / ".tmp-abc").mkdir()
    (tmp_path / "checkpoints" / ".tmp-abc" / "model.safetensors").write_bytes(b"garbage")
    # a step folder without its trainer state is not whole either
    (tmp_path / "checkpoints" / "step-000009").mkdir()
    assert latest_checkpoint(tmp_path) == good
    assert not (tmp_path / "checkpoints" / ".tmp-abc").exists()


def test_prunes_to_keep_and_finalize_loads(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = tiny()
    for step in (1, 2, 3):
        last = save_checkpoint(tmp_path, step, model, tok, {}, keep=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*")) == ["step-000002", "step-000003"]
    assert not is_complete(tmp_path)
    finalize_stage(tmp_path, last, {"stage": "sft"})
    assert is_complete(tmp_path) and json.loads((tmp_path / "complete.json").read_text())["stage"] == "sft"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert torch.equal(loaded.model.embed_tokens.weight, model.model.embed_tokens.weight)
    assert AutoTokenizer.from_pretrained(tmp_path).decode([10, 11]) == tok.decode([10, 11])


def test_named_resave_swaps_whole(tmp_path):
    model, tok = tiny()
    save_checkpoint(tmp_path, 1, model, tok, {"v": 1}, name="best")
    save_checkpoint(tmp_path, 2, model, tok, {"v": 2}, name="best")
    assert json.loads((tmp_path / "checkpoints" / "best" / "trainer_state" / "state.json").read_text())["v"] == 2
    assert latest_checkpoint(tmp_path) is None  # "best" is not a resume point


class _RunsCode:
    """Unpickling this runs `touch <path>`: what a malicious trainer state could do."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.path}",)


def test_trainer_state_with_pickled_objects_is_refused(tmp_path):
    import pytest

    from coldstart.infra.checkpoint import UnsafeCheckpointError

    model, tok = tiny()
    ck = save_checkpoint(tmp_path, 1, model, tok, {})
    marker = tmp_path / "code-ran"
    blob = torch.load(ck / "trainer_state" / "states.pt", weights_only=True)
    torch.save({**blob, "python_rng": _RunsCode(marker)}, ck / "trainer_state" / "states.pt")
    with pytest.raises(UnsafeCheckpointError, match=r"states\.pt: refused to load"):
        load_trainer_state(ck)
    assert not marker.exists()


def test_scheduler_value_head_and_rng_states_load_with_weights_only(tmp_path):
    """Everything the trainers save passes torch.load(weights_only=True), the python RNG tuple included."""
    import random

    model, tok = tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 ** step)
    head = torch.nn.Linear(4, 1)
    model(torch.tensor([[5, 6, 7]])).logits.sum().backward()
    opt.step()
    sched.step()
    random.seed(7)
    ck = save_checkpoint(tmp_path, 1, model, tok, {}, opt, sched, extra_modules={"value_head": head})
    expected = random.random()
    opt2 = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda step: 0.5 ** step)
    head2 = torch.nn.Linear(4, 1)
    load_trainer_state(ck, opt2, sched2, extra_modules={"value_head": head2})
    assert random.random() == expected and sched2.last_epoch == 1 and opt2.param_groups[0]["lr"] == 5e-4
    assert torch.equal(head2.weight, head.weight)


def test_models_load_only_safetensors(tmp_path):
    import pytest

    from coldstart.models import load_model

    model, _ = tiny()
    model.save_pretrained(tmp_path / "safe")
    assert torch.equal(load_model(tmp_path / "safe").model.embed_tokens.weight, model.model.embed_tokens.weight)
    model.config.save_pretrained(tmp_path / "pickled")  # a folder with the weights as a pickle only
    torch.save(model.state_dict(), tmp_path / "pickled" / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"model.path: cannot load the model from the folder .*safetensors"):
        load_model(tmp_path / "pickled")
