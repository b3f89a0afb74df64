import math

import pytest
import torch

from coldstart.models import build_char_tokenizer, build_tiny_model, load_model
from coldstart.prompts import render_prompt
from coldstart.rewards import REWARDS, build_reward
from coldstart.rewards.kat import mode_rewards, think_mode
from coldstart.rewards.mt import format_blocks, metric_score
from coldstart.rewards.rlt import continuation_logprobs, explanation, rlt_score
from coldstart.tasks import build_task
from coldstart.types import Example


def test_registry_names():
    assert {"reft", "mt", "kat", "rlt"} <= set(REWARDS)


def test_reft_is_accuracy_with_a_partial_reward_for_a_wrong_extracted_answer():
    reft = build_reward([{"name": "reft"}])
    same = build_reward([{"name": "accuracy", "options": {"partial": 0.1}}])
    completions = ["<think>6*7</think><answer>42</answer>", "<answer>41</answer>", "\\boxed{42.0}", "no answer",
                   "<answer> </answer>"]
    assert reft(["q"] * 5, completions, answer=["42"] * 5).total == [1.0, 0.1, 1.0, 0.0, 0.0]
    assert same(["q"] * 5, completions, answer=["42"] * 5).total == [1.0, 0.1, 1.0, 0.0, 0.0]
    assert build_reward([{"name": "reft", "options": {"partial": 0.2}}])(["q"], ["<answer>1</answer>"],
                                                                        answer=["2"]).total == [0.2]


def test_mt_bleu_and_chrf_by_hand():
    # hypothesis "a b c d", reference "a b c e": n-gram precisions 3/4, 2/3, 1/2 and 0/1, which sacrebleu's
    # exp smoothing turns into 1/2; equal lengths, so no brevity penalty
    bleu = (3 / 4 * 2 / 3 * 1 / 2 * 1 / 2) ** (1 / 4)
    assert metric_score("a b c d", "a b c e", "bleu") == pytest.approx(bleu)
    # chrF on "abcd" vs "abce" (spaces dropped): char 1..4-gram precision = recall = 3/4, 2/3, 1/2, 0
    chrf = (3 / 4 + 2 / 3 + 1 / 2 + 0) / 4
    assert metric_score("a b c d", "a b c e", "chrf") == pytest.approx(chrf)
    assert metric_score("a b c d", "a b c e", "mix") == pytest.approx(bleu + chrf)
    assert metric_score("x y", "a b c e", "mix") == 0.0


def test_mt_reward_gates_on_the_format():
    reward = build_reward([{"name": "mt"}])
    good = "<think>translate word by word</think>\n<answer>a b c d</answer>"
    bad = ["a b c d", "<answer>a b c d</answer>", "<think>x</think><answer>a</answer><answer>b</answer>",
           "<think>x</think>so <answer>a b c d</answer>"]
    out = reward(["q"] * 5, [good, *bad], answer=["a b c e"] * 5).total
    assert out[0] == pytest.approx(1 + 0.594603557501 + 23 / 48)
    assert out[1:] == [-2.0] * 4
    paper = build_reward([{"name": "mt", "options": {"answer_tag": "translate", "format_penalty": -1.0,
                                                     "metric": "bleu"}}])
    out = paper(["q"] * 2, ["<think>t</think><translate>a b c e</translate>", good], answer=["a b c e"] * 2)
    assert out.total[0] == pytest.approx(2.0) and out.total[1] == -1.0
    assert format_blocks(" <think>t</think> <answer>x y</answer> ") == "x y"
    with pytest.raises(ValueError, match="metric"):
        build_reward([{"name": "mt", "options": {"metric": "comet"}}])


def test_kat_mode_and_preferred_mode_by_hand():
    assert [think_mode(t) for t in ["<think_off><answer>1</answer>", "<think_on><think>x</think>",
                                    "<think>x</think><answer>1</answer>", "<think>\n</think><answer>1</answer>",
                                    "<answer>1</answer>"]] == ["off", "on", "on", "off", "off"]
    # group a: on 1/2 correct, off 2/2 -> off preferred; group b: on 1/1, off 0/1 -> on; group c: one mode only;
    # group d: tie (1/1 each) -> off, the cheaper mode
    modes = ["on", "on", "off", "off", "on", "off", "on", "on", "on", "off"]
    correct = [1, 0, 1, 1, 1, 0, 1, 1, 1, 1]
    groups = ["a"] * 4 + ["b"] * 2 + ["c"] * 2 + ["d"] * 2
    assert mode_rewards(modes, correct, groups) == [0, 0, 1, 1, 1, 0, 0, 0, 0, 1]


def test_kat_reward_uses_the_task_verifier_per_prompt_group():
    task = build_task("arithmetic", {"digits": 2, "ops": "+"})
    ex = Example("12+30", "42", None, {"op": "+"})
    reward = build_reward([{"name": "kat"}], task=task)
    completions = ["<think>2+0=2 c0 2\n1+3=4 42</think><answer>42</answer>", "<answer>41</answer>",
                   "<think_off><answer>42</answer>", "<think>so</think><answer>40</answer>"]
    # think-on: 1 of 2 correct; think-off: 1 of 2 correct -> tie -> off preferred
    out = reward(["12+30"] * 4, completions, answer=["42"] * 4, example=[ex] * 4)
    assert out.total == [0.0, 1.0, 1.0, 0.0]
    # think-on 1/1 beats think-off 0/1 -> on; a second prompt in the batch is its own group (one mode: no signal)
    out = reward(["12+30", "12+30", "1+1"], [*completions[:2], "<answer>2</answer>"], answer=["42", "42", "2"],
                 example=[ex, ex, Example("1+1", "2", None, {"op": "+"})])
    assert out.total == [1.0, 0.0, 0.0]


def test_rlt_score_by_hand():
    # r_SS = mean(-1, -3) + 0.01 * min = -2.03;  r_KL = mean(0.5, 1.5) + 0.01 * max = 1.015
    assert rlt_score(torch.tensor([-1.0, -3.0]), torch.tensor([0.5, 1.5])) == pytest.approx(-2.03 - 3 * 1.015)
    assert rlt_score(torch.tensor([-2.0]), torch.zeros(0), alpha=0.5, lam=10) == pytest.approx(-3.0)
    assert explanation("<think>a</think><think>b</think>") == "a" and explanation("<answer>1</answer>") == ""


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    tok = build_char_tokenizer()
    model = build_tiny_model(len(tok), hidden_size=32, layers=1, heads=2, max_len=128, pad_id=tok.pad_token_id,
                             bos_id=tok.bos_token_id, eos_id=tok.eos_token_id, seed=0)
    path = tmp_path_factory.mktemp("student")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path, tok


def test_continuation_logprobs_score_each_target_token_after_its_prefix(student):
    path, tok = student
    model = load_model(path).eval()
    lp = continuation_logprobs(model, tok, "12+", "30")
    assert lp.shape == (2,)
    for i, target in enumerate("30"):  # token i is predicted from the context and the target tokens before it
        ids = tok("12+" + "30"[:i], add_special_tokens=False).input_ids
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
        want = torch.log_softmax(logits, -1)[tok(target, add_special_tokens=False).input_ids[0]]
        assert float(lp[i]) == pytest.approx(float(want), abs=1e-5)


def test_rlt_reward_combines_the_student_terms(student):
    path, tok = student
    reward = build_reward([{"name": "rlt", "options": {"student": str(path)}}])
    completions = ["<think>2+0=2</think><answer>9</answer>", "<answer>9</answer>"]
    out = reward(["12+30", "12+30"], completions, answer=["42", "42"])
    model = load_model(path).eval()
    head = render_prompt(tok, "12+30", "think", False) + "<think>"
    ss = continuation_logprobs(model, tok, head + "2+0=2</think><answer>", "42")
    kl = -continuation_logprobs(model, tok, head, "2+0=2")
    assert out.errors == 0
    assert out.total[0] == pytest.approx(float(ss.mean() + 0.01 * ss.min() - 3 * (kl.mean() + 0.01 * kl.max())),
                                         abs=1e-5)
    ss_empty = continuation_logprobs(model, tok, head + "</think><answer>", "42")
    assert out.total[1] == pytest.approx(float(ss_empty.mean() + 0.01 * ss_empty.min()), abs=1e-5)
    assert all(math.isfinite(x) and x < 0 for x in out.total)
