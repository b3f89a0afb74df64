import json

import pytest
import torch

from coldstart.algorithms import policy_loss
from coldstart.cli import main
from coldstart.config import PromptConfig
from coldstart.envs import build_env
from coldstart.models import build_char_tokenizer, build_tiny_model
from coldstart.multiturn import MultiTurnRollout, Turns, credit_advantages, observation_template
from coldstart.rl import sequence_logprobs
from coldstart.rollout import SamplingParams, build_sampler
from coldstart.tasks import build_task


@pytest.fixture(scope="module")
def setup():
    tok = build_char_tokenizer()
    model = build_tiny_model(len(tok), hidden_size=32, layers=1, heads=2, max_len=256, pad_id=tok.pad_token_id,
                             bos_id=tok.bos_token_id, eos_id=tok.eos_token_id, seed=0)
    task = build_task("guess", {"low": 1, "high": 8})
    games = MultiTurnRollout(build_env("guess", {}, task), build_sampler("torch", tok), tok, max_turns=3,
                             prompt=PromptConfig(system=False))
    params = SamplingParams(n=2, max_new_tokens=6, temperature=1.0, eos_ids=[tok.eos_token_id])
    ro, scores, result, turns = games(model, task.examples("train", 3, 0), params, torch.Generator().manual_seed(0))
    return tok, model, task, ro, scores, result, turns


def test_observation_template_from_chat_template():
    assert observation_template(build_char_tokenizer()) == ("<|user|>", "<|assistant|>")


def test_observation_tokens_are_masked_and_aligned(setup):
    tok, _model, _task, ro, scores, result, turns = setup
    N = ro.completion_ids.shape[0]
    assert N == 6 and result.turns == [int(m.sum()) for m in turns.mask]
    for i in range(N):
        L = int((turns.token_turn[i] >= 0).nonzero().max()) + 1  # the last model token ends the trajectory
        ids, m = ro.completion_ids[i, :L], ro.completion_mask[i, :L]
        assert torch.equal(m, turns.token_turn[i, :L] >= 0)
        assert (ro.logprobs[i, :L][~m] == 0).all() and (ro.logprobs[i, :L][m] < 0).all()
        obs = tok.decode(ids[~m])
        if result.turns[i] > 1:  # every observation is a user turn of the chat template
            assert obs.count("<|user|>") == result.turns[i] - 1 and "Guess my number from" in obs
        else:
            assert obs == ""
        assert len(turns.rewards[i][turns.mask[i]]) == result.turns[i]
    # the score is the sum of the turn rewards: 1 on the correct guess, −0.1 on each other turn
    expect = (turns.rewards * turns.mask).sum(1)
    assert torch.allclose(scores, expect)


def test_trainer_logprobs_match_sampler_through_observations(setup):
    _tok, model, _task, ro, *_ = setup
    with torch.no_grad():
        logp = sequence_logprobs(model, ro, 1.0)[0]
    m = ro.completion_mask
    assert (logp - ro.logprobs)[m].abs().max() < 1e-4


def test_observation_tokens_carry_no_loss(setup):
    _tok, model, _task, ro, *_ = setup
    logp = sequence_logprobs(model, ro, 1.0)[0].detach().requires_grad_(True)
    adv = torch.ones_like(logp) * ro.completion_mask
    loss, _ = policy_loss(logp, ro.logprobs, adv, ro.completion_mask)
    loss.backward()
    assert (logp.grad[~ro.completion_mask] == 0).all() and (logp.grad[ro.completion_mask] != 0).all()


def test_credit_advantages_and_turns_cat(setup):
    *_, turns = setup
    both = Turns.cat([turns.select(torch.tensor([0])), turns.select(torch.tensor([1, 2]))])
    assert torch.equal(both.rewards, turns.rewards[:3]) and torch.equal(both.token_turn, turns.token_turn[:3])
    adv = (turns.token_turn >= 0).float() * 2.0
    out, _ = credit_advantages(adv, turns, "em", 0.8)
    on = turns.token_turn >= 0
    for i in range(out.shape[0]):
        assert float(out[i][on[i]].mean()) == pytest.approx(2.0, abs=1e-5)
        assert (out[i][~on[i]] == 0).all()


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


MT = ["rl.steps=2", "rl.prompts_per_step=2", "rl.group_size=2", "rl.max_new_tokens=12", "rl.max_turns=3",
      "rl.save_every=0", "rl.eval_every=2", "task.val_size=4", "model.max_len=256", "run.stages=[rl]"]


def test_rl_with_guess_env(tmp_path, tiny_overrides):
    out = tmp_path / "run"
    args = ["rl", str(_recipe(tmp_path)), "--out", str(out), *tiny_overrides, *MT, "task.name=guess",
            "task.options={low: 1, high: 8, history: 1}", "task.train_size=50", "rl.env=guess", "rl.turn_credit=r2g",
            "rl.trajectory_score=r2g"]
    assert main(args) == 0
    rows = _rows(out / "rl" / "metrics.jsonl")
    assert len(rows) == 2 and all(1 <= r["turns/mean"] <= 3 for r in rows)
    assert 1 <= rows[-1]["val/turns/mean"] <= 3 and 0 <= rows[-1]["val/turns/solved"] <= 1


def test_rl_with_tool_env(tmp_path, tiny_overrides):
    out = tmp_path / "run"
    args = ["rl", str(_recipe(tmp_path)), "--out", str(out), *tiny_overrides, *MT, "rl.env=tool",
            "rl.turn_credit=em", "rl.filter=none"]
    assert main(args) == 0
    rows = _rows(out / "rl" / "metrics.jsonl")
    assert len(rows) == 2 and all(1 <= r["turns/mean"] <= 3 for r in rows)
    assert (out / "rl" / "complete.json").exists()


def _recipe(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("run: {seed: 0}\n")
    return path


def test_context_limit_ends_trajectories():
    tok = build_char_tokenizer()
    model = build_tiny_model(len(tok), hidden_size=32, layers=1, heads=2, max_len=80, pad_id=tok.pad_token_id,
                             bos_id=tok.bos_token_id, eos_id=tok.eos_token_id, seed=0)
    task = build_task("guess", {"low": 1, "high": 8, "history": 0})
    games = MultiTurnRollout(build_env("guess", {}, task), build_sampler("torch", tok), tok, max_turns=10)
    params = SamplingParams(n=2, max_new_tokens=8, temperature=1.0, eos_ids=[tok.eos_token_id])
    ro, _, result, _ = games(model, task.examples("train", 2, 0), params, torch.Generator().manual_seed(0))
    used = ro.prompt_mask.sum(1) + (ro.completion_ids != tok.pad_token_id).cumsum(1).argmax(1) + 1
    assert (used <= 80).all() and ro.truncated.any() and max(result.turns) < 10
    long = task.examples("train", 1, 0)[0]
    long.prompt = "x" * 90
    with pytest.raises(ValueError, match=r"raise model\.max_len"):
        games(model, [long], params)
