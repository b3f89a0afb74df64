import json

import torch
from safetensors.torch import load_file

from coldstart.cli import main
from tests.conftest import kill_when_saved

REQUIRED = ["step", "reward/mean", "reward/std", "groups/zero_std_frac", "entropy", "kl", "clip/low_frac",
            "clip/high_frac", "length/mean", "length/max", "length/truncated_frac", "logprob_gap",
            "time/generate_s", "time/reward_s", "time/train_s", "tokens_per_s", "reward/errors"]


def rows(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_run_sft_rl_eval_end_to_end(tmp_path, tiny_overrides):
    out = tmp_path / "run"
    code = main(["run", "recipes/demo.yaml", "--out", str(out), *tiny_overrides, "rl.kl_coef=0.01",
                 "rl.eval_every=3", "rl.eval_samples=2",
                 "rl.rewards=[{name: task}, {name: format, weight: 0.1}]"])
    assert code == 0
    metrics = rows(out / "rl" / "metrics.jsonl")
    assert [r["step"] for r in metrics] == [1, 2, 3]
    for key in [*REQUIRED, "reward/task", "reward/format", "val/accuracy", "val/pass@2", "val/maj@2",
                "val/length/mean", "val/reflections/mean"]:
        assert key in metrics[-1], key
    evals = json.loads((out / "eval.json").read_text())
    assert set(evals) == {"base", "sft", "rl"}
    for stage in evals.values():
        assert {"accuracy", "pass@1", "pass@2", "maj@2", "mean@2", "length/mean"} <= stage.keys()
        assert 0.0 <= stage["pass@1"] <= stage["pass@2"] <= 1.0
    # a second `run` skips the finished stages
    assert main(["run", "recipes/demo.yaml", "--out", str(out), *tiny_overrides]) == 0
    assert len(rows(out / "rl" / "metrics.jsonl")) == 3


def test_rl_from_untrained_model_says_groups_are_flat(tmp_path, tiny_overrides, capsys):
    out = tmp_path / "flat"
    assert main(["rl", "recipes/demo.yaml", "--out", str(out), *tiny_overrides, "rl.init=model"]) == 0
    metrics = rows(out / "rl" / "metrics.jsonl")
    assert all(r["groups/zero_std_frac"] == 1.0 for r in metrics)
    assert all(r["rows/trained"] == 0 for r in metrics)
    assert "reward std 0" in capsys.readouterr().err


def test_a_reward_failing_on_every_item_stops_the_run(tmp_path, tiny_overrides, capsys):
    """Training on zeros teaches nothing: a reward that raises on every item stops the run, naming it."""
    out = tmp_path / "boom"
    rewards = "rl.rewards=[{name: task}, {name: 'tests.fixtures.rewards:sometimes_raises'}]"
    assert main(["rl", "recipes/demo.yaml", "--out", str(out), *tiny_overrides, "rl.init=model", "rl.filter=none",
                 rewards]) == 3
    said = " ".join(capsys.readouterr().err.split())
    assert "tests.fixtures.rewards:sometimes_raises" in said and "every one of the 16 completions" in said
    assert "item-level failure" in said and not (out / "rl" / "complete.json").exists()


def test_a_reward_failing_on_most_items_is_counted_loudly_and_training_goes_on(tmp_path, tiny_overrides, caplog):
    out = tmp_path / "mostly"
    rewards = "rl.rewards=[{name: task}, {name: 'tests.fixtures.rewards:fails_mostly'}]"
    assert main(["rl", "recipes/demo.yaml", "--out", str(out), *tiny_overrides, "rl.init=model", "rl.filter=none",
                 rewards]) == 0
    metrics = rows(out / "rl" / "metrics.jsonl")
    assert len(metrics) == 3 and all(r["reward/errors"] == 12 for r in metrics)
    assert all(r["reward/failed/tests.fixtures.rewards:fails_mostly"] == 0.75 for r in metrics)
    assert "failed on 12 of 16 completions" in caplog.text


def test_sigkill_mid_rl_then_resume_gives_identical_weights(tmp_path, tiny_overrides):
    base = tmp_path / "sft-once"
    assert main(["sft", "recipes/demo.yaml", "--out", str(base), *tiny_overrides]) == 0
    args = ["rl", "recipes/demo.yaml", *tiny_overrides, f"rl.init={base / 'sft'}", "rl.steps=8",
            "rl.save_every=1", "rl.temperature=1.5"]
    assert main([*args, "--out", str(tmp_path / "straight")]) == 0

    killed = tmp_path / "killed"
    kill_when_saved([*args, "--out", str(killed)], killed / "rl" / "checkpoints" / "step-000004")
    assert main([*args, "--out", str(killed), "--resume"]) == 0
    a, b = load_file(str(tmp_path / "straight" / "rl" / "model.safetensors")), load_file(
        str(killed / "rl" / "model.safetensors"))
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [r["step"] for r in rows(killed / "rl" / "metrics.jsonl")] == list(range(1, 9))


def test_other_architectures_from_a_model_folder(tmp_path, tiny_overrides):
    """A user's own Hugging Face folder (GPT-2 and Llama here, built locally) runs sft → rl → eval."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from coldstart.models import build_char_tokenizer, build_tiny_model

    tok = build_char_tokenizer()
    folders = {"gpt2": tmp_path / "gpt2", "llama": tmp_path / "llama"}
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2, n_positions=128,
                               eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)).save_pretrained(
        folders["gpt2"])
    build_tiny_model(len(tok), arch="llama", hidden_size=32, layers=1, heads=2).save_pretrained(folders["llama"])
    for name, folder in folders.items():
        tok.save_pretrained(folder)
        out = tmp_path / f"run-{name}"
        assert main(["run", "recipes/demo.yaml", "--out", str(out), *tiny_overrides, "model.init=pretrained",
                     f"model.path={folder}", "rl.steps=2", "rl.filter=none"]) == 0, name
        assert set(json.loads((out / "eval.json").read_text())) == {"base", "sft", "rl"}


def test_lora_sft_then_rl_with_kl_from_the_disabled_adapter(tmp_path, tiny_overrides, capsys):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "lora"
    lora = "model.lora={r: 4, alpha: 8, target_modules: [q_proj, v_proj]}"
    assert main(["run", "recipes/demo.yaml", "--out", str(out), *tiny_overrides, lora, "rl.kl_coef=0.05",
                 "rl.filter=none", "sft.lr=0.01"]) == 0
    err = capsys.readouterr().err
    assert "trainable parameters of" in err and "(LoRA)" in err
    for stage in ("sft", "rl"):
        assert (out / stage / "adapter" / "adapter_config.json").is_file()
        merged = AutoModelForCausalLM.from_pretrained(out / stage)  # a plain HF folder, adapter merged in
        assert not any("lora" in k for k in merged.state_dict())
    metrics = rows(out / "rl" / "metrics.jsonl")
    assert all(r["kl"] is not None and r["kl"] >= 0 for r in metrics)
    base = AutoModelForCausalLM.from_pretrained(out / "base").state_dict()
    sft = AutoModelForCausalLM.from_pretrained(out / "sft").state_dict()
    assert torch.equal(base["model.embed_tokens.weight"], sft["model.embed_tokens.weight"])  # frozen
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(base[q], sft[q])


def test_reasoning_gym_task_rl_and_sft_without_traces(tmp_path, tiny_overrides, capsys):
    gym = ["task.name=gym:chain_sum", "task.options={}", "task.train_size=40", "prompt.system=true",
           "model.max_len=256", "rl.steps=1", "rl.filter=none", "rl.rewards=[{name: task}, {name: accuracy}]"]
    out = tmp_path / "gym"
    assert main(["rl", "recipes/demo.yaml", "--out", str(out), *tiny_overrides, *gym]) == 0
    row = rows(out / "rl" / "metrics.jsonl")[0]
    assert {"reward/task", "reward/accuracy"} <= row.keys()
    assert main(["sft", "recipes/demo.yaml", "--out", str(out), *tiny_overrides, *gym]) == 2
    assert "no traces" in capsys.readouterr().err


def test_dupo_and_pad_filters_train(tmp_path, tiny_overrides):
    """From a checkpoint that solves some problems, so groups are informative; reward is 1 for short outputs."""
    base = tmp_path / "sft"
    assert main(["sft", "recipes/demo.yaml", "--out", str(base), *tiny_overrides]) == 0
    length = "rl.rewards=[{name: 'tests.fixtures.rewards:length_bonus'}]"
    for flt in ("dupo", "pad"):
        out = tmp_path / flt
        assert main(["rl", "recipes/demo.yaml", "--out", str(out), *tiny_overrides, f"rl.init={base / 'sft'}",
                     f"rl.filter={flt}", length, "rl.temperature=2.0"]) == 0
        metrics = rows(out / "rl" / "metrics.jsonl")
        assert len(metrics) == 3 and all(r["rows/trained"] > 0 for r in metrics), flt
        if flt == "pad":
            assert all(r["pad/kept"] == 8 for r in metrics)  # rho 0.5 of 16 rows, all with |adv| > 0
            taus = [r["pad/tau"] for r in metrics]
            assert taus[0] == 1.0 and abs(taus[-1] - 0.3) < 1e-9
    # dupo: only group 0 of 4 is informative; it is duplicated into the other 3 slots
    out = tmp_path / "dupo-one"
    assert main(["rl", "recipes/demo.yaml", "--out", str(out), *tiny_overrides, f"rl.init={base / 'sft'}",
                 "rl.filter=dupo", "rl.rewards=[{name: 'tests.fixtures.rewards:first_row_only'}]"]) == 0
    for r in rows(out / "rl" / "metrics.jsonl"):
        assert r["groups/zero_std_frac"] == 0.75 and r["groups/duplicated"] == 3 and r["rows/trained"] == 16


def test_entropy_targeted_temperature(tmp_path, tiny_overrides):
    from coldstart.temperature import pick_temperature

    assert pick_temperature(lambda t: 0.5 * t, [1.0, 0.6, 0.4], 0.3)[0] == 0.6
    assert pick_temperature(lambda t: 0.3, [1.0, 0.6], 0.3)[0] == 0.6  # ties: the lower temperature
    out = tmp_path / "temp"
    assert main(["rl", "recipes/demo.yaml", "--out", str(out), *tiny_overrides, "rl.init=model",
                 "rl.target_entropy=3.0", "rl.temperature_candidates=[0.5, 1.0, 2.0]",
                 "rl.temperature_retune_every=2", "rl.probe_prompts=4"]) == 0
    metrics = rows(out / "rl" / "metrics.jsonl")
    probes = {k: v for k, v in metrics[0].items() if k.startswith("temperature/entropy@")}
    assert set(probes) == {"temperature/entropy@0.5", "temperature/entropy@1", "temperature/entropy@2"}
    # a random model: hotter sampling, higher entropy; the pick is the measurement nearest the target
    assert probes["temperature/entropy@0.5"] < probes["temperature/entropy@1"] < probes["temperature/entropy@2"]
    nearest = min((abs(h - 3.0), float(k.split("@")[1])) for k, h in probes.items())[1]
    assert metrics[0]["temperature"] == nearest
    assert "temperature/entropy@1" not in metrics[1] and "temperature/entropy@1" in metrics[2]  # re-tuned at 2


def test_pass_rate_prefilter(tmp_path, tiny_overrides, capsys):
    out = tmp_path / "pre"
    pre = "rl.prefilter={k: 2, min_pass: 0.0, max_pass: 0.0, max_prompts: 8}"
    assert main(["rl", "recipes/demo.yaml", "--out", str(out), *tiny_overrides, "rl.init=model", pre]) == 0
    assert "prefilter kept 8 of 8 prompts" in capsys.readouterr().err  # the untrained model solves none
    state = json.loads((out / "rl" / "trainer_state" / "state.json").read_text())
    assert state["pool_ids"] == list(range(8))
    pre = "rl.prefilter={k: 2, min_pass: 0.5, max_prompts: 8}"
    assert main(["rl", "recipes/demo.yaml", "--out", str(tmp_path / "none"), *tiny_overrides, "rl.init=model",
                 pre]) == 2
    assert "widen the window" in capsys.readouterr().err
