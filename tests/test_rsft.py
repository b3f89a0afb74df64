import json
import math

import pytest
import torch
from safetensors.torch import load_file

from coldstart.cli import main
from coldstart.config import load_recipe
from coldstart.infra.stage import build_task_from, previous_stages, stage_start
from coldstart.models import load_model, load_tokenizer
from coldstart.rewards import build_reward
from coldstart.rl import prompt_seed
from coldstart.rsft import sample_round, score_texts, select_completions
from coldstart.types import Example
from tests.conftest import TINY, kill_when_saved

RSFT = ["rsft.rounds=2", "rsft.prompts_per_round=8", "rsft.samples_per_prompt=4", "rsft.max_new_tokens=40",
        "rsft.batch_size=8", "rsft.epochs=1"]


@pytest.fixture(scope="module")
def sft_model(tmp_path_factory):
    """A tiny model that writes `<think>…</think><answer>…</answer>` and sometimes gets 2-digit sums right."""
    out = tmp_path_factory.mktemp("sft")
    assert main(["sft", "recipes/demo.yaml", "--out", str(out), *TINY, "model.hidden_size=64", "sft.max_steps=150",
                 "sft.traces=64", "sft.lr=3e-3", "sft.save_every=0"]) == 0
    return out / "sft"


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_select_completions_keeps_distinct_correct_ones_per_prompt():
    texts = ["a", "b", " a", "c",  # prompt 0: a, b, a (duplicate of a) correct; c wrong
             "x", "y", "z", None,  # prompt 1: nothing correct (None: no completion)
             "p", "q", "r", "s"]  # prompt 2: all correct, capped at 2
    scores = [1, 1, 1, 0.5, 0, 0, 0, 1, 1, 1, 1, 1]
    s = select_completions(texts, scores, k=4, keep_per_prompt=2, min_reward=1.0)
    assert s.kept == [(0, "a"), (0, "b"), (2, "p"), (2, "q")]
    assert (s.correct, s.duplicates, s.solved) == (7, 1, 2)
    s = select_completions(texts, scores, k=4, keep_per_prompt=4, min_reward=0.5)
    assert s.kept == [(0, "a"), (0, "b"), (0, "c"), (2, "p"), (2, "q"), (2, "r"), (2, "s")]
    assert (s.correct, s.duplicates, s.solved) == (8, 1, 2)
    with pytest.raises(ValueError):
        select_completions(texts, scores, k=5, keep_per_prompt=1, min_reward=1.0)


def test_score_texts_uses_the_recipe_rewards_and_fails_missing_completions(tiny_overrides):
    recipe = load_recipe("recipes/demo.yaml", tiny_overrides)
    task = build_task_from(recipe)
    reward = build_reward([{"name": "task"}, {"name": "format", "weight": 0.5}], task=task)
    from coldstart.models import build_char_tokenizer

    ex = [Example("12+30", "42", "2+0=2 c0 2\n1+3=4 42", {"op": "+"})]
    texts = ["<think>x</think><answer>42</answer>", "<answer>42</answer>", "<think>x</think><answer>41</answer>",
             None]
    scores, _ = score_texts(reward, ex, texts, 4, build_char_tokenizer())
    assert scores[:3] == [1.5, 1.0, 0.5] and scores[3] == -math.inf


def test_run_sft_rsft_rl_eval_end_to_end(tmp_path, tiny_overrides):
    out = tmp_path / "run"
    assert main(["run", "recipes/demo.yaml", "--out", str(out), *tiny_overrides, "run.stages=[sft,rsft,rl,eval]",
                 *RSFT, "rsft.min_reward=0", "rl.steps=2"]) == 0
    assert json.loads((out / "rsft" / "complete.json").read_text())["rounds"] == 2
    metrics = rows(out / "rsft" / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2]
    for m in metrics:  # min_reward 0 keeps every distinct completion: 8 prompts × 4 samples, at most 4 kept each
        assert m["rsft/pass_rate"] == 1.0 and m["rsft/kept"] + m["rsft/duplicates"] == 32
        assert m["loss"] > 0 and 0 <= m["val/accuracy"] <= 1
        assert len(rows(out / "rsft" / "data" / f"round-{m['step']:03d}.jsonl")) == m["rsft/kept"]
    recipe = load_recipe(out / "config.yaml")
    assert previous_stages(recipe, "rl") == ("sft", "rsft")
    assert stage_start(out, "auto", out / "base", previous_stages(recipe, "rl")) == out / "rsft"
    assert stage_start(out, "auto", out / "base", previous_stages(recipe, "rsft")) == out / "sft"
    assert set(json.loads((out / "eval.json").read_text())) == {"base", "sft", "rsft", "rl"}


def test_rsft_keeps_only_verified_distinct_completions(tmp_path, tiny_overrides, sft_model):
    out = tmp_path / "run"
    assert main(["rsft", "recipes/demo.yaml", "--out", str(out), *tiny_overrides, "model.hidden_size=64",
                 f"rsft.init={sft_model}", *RSFT, "rsft.samples_per_prompt=8", "rsft.keep_per_prompt=2",
                 "rsft.prompts_per_round=16"]) == 0
    task = build_task_from(load_recipe(out / "config.yaml"))
    metrics = rows(out / "rsft" / "metrics.jsonl")
    assert sum(m["rsft/kept"] for m in metrics) > 0, "the SFT model should solve some 2-digit sums"
    for m in metrics:
        data = rows(out / "rsft" / "data" / f"round-{m['step']:03d}.jsonl")
        assert len(data) == m["rsft/kept"] <= m["rsft/pass_rate"] * 16 * 8
        assert all(task.verify(Example(d["prompt"], d["answer"]), d["completion"]) == 1.0 for d in data)
        per_prompt = {}
        for d in data:
            per_prompt.setdefault(d["prompt"], []).append(" ".join(d["completion"].split()))
        assert all(len(v) == len(set(v)) <= 2 for v in per_prompt.values())


def test_hint_rft_continues_after_a_library_hint(tmp_path, tiny_overrides, sft_model):
    out = tmp_path / "run"
    hint = "Wait, let me check."
    assert main(["rsft", "recipes/demo.yaml", "--out", str(out), *tiny_overrides, "model.hidden_size=64",
                 f"rsft.init={sft_model}", *RSFT, "rsft.rounds=1", "rsft.min_reward=0", "rsft.hints=true",
                 f"rsft.hint_library=['{hint}']", "rsft.keep_per_prompt=4"]) == 0
    (m,) = rows(out / "rsft" / "metrics.jsonl")
    assert m["rsft/hinted"] > 0
    data = rows(out / "rsft" / "data" / "round-001.jsonl")
    assert len(data) == m["rsft/kept"] > 0
    assert all(d["completion"].startswith("<think>") and f"\n{hint}\n" in d["completion"] for d in data)


def test_rsft_resume_after_a_kill_matches_a_straight_run(tmp_path, tiny_overrides):
    args = ["rsft", "recipes/demo.yaml", *tiny_overrides, "rsft.init=base", *RSFT, "rsft.rounds=3",
            "rsft.prompts_per_round=16", "rsft.min_reward=0", "rsft.keep_best=false"]
    assert main([*args, "--out", str(tmp_path / "straight")]) == 0
    killed = tmp_path / "killed"
    kill_when_saved([*args, "--out", str(killed)], killed / "rsft" / "checkpoints" / "step-000001")
    assert main([*args, "--out", str(killed), "--resume"]) == 0
    a = load_file(tmp_path / "straight" / "rsft" / "model.safetensors")
    b = load_file(killed / "rsft" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert rows(tmp_path / "straight" / "rsft" / "metrics.jsonl")[-1]["rsft/kept"] == \
        rows(killed / "rsft" / "metrics.jsonl")[-1]["rsft/kept"]
    assert [m["step"] for m in rows(killed / "rsft" / "metrics.jsonl")] == [1, 2, 3]


def test_a_prompts_samples_and_hints_do_not_depend_on_the_other_prompts(tiny_overrides, sft_model):
    """What lets each process sample its share of a round: per-prompt seeds, hints included."""
    recipe = load_recipe("recipes/demo.yaml", [*tiny_overrides, "model.hidden_size=64", *RSFT, "rsft.hints=true",
                                               "rsft.hint_library=['Wait, let me check.', 'Hmm, again.']",
                                               "eval.batch_size=8"])
    examples = build_task_from(recipe).examples("train", 6, 0)
    model, tokenizer = load_model(sft_model), load_tokenizer(sft_model)
    seeds = [prompt_seed(7, c) for c in range(6)]
    texts, hinted = sample_round(model, tokenizer, examples, recipe, seeds)
    tail, tail_hinted = sample_round(model, tokenizer, examples[3:], recipe, seeds[3:])
    assert tail == texts[3 * 4 :] and 0 < tail_hinted <= hinted
    again, _ = sample_round(model, tokenizer, examples[3:], recipe, [s + 1 for s in seeds[3:]])
    assert again != tail  # the seeds do drive the samples
