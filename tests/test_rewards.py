"""Tests of coldstart.rewards: accuracy (math-verify), exact, format, task, overlong, user functions
and the weighted combination with its error handling."""

from __future__ import annotations

import doctest
import logging
import math
import textwrap
from concurrent.futures import ThreadPoolExecutor

import pytest

from coldstart.rewards import (
    REWARDS,
    GoldAnswerError,
    RewardPart,
    answers_match,
    basic,
    build_reward,
    combine,
    extract,
    import_reward,
    make_accuracy,
    make_exact,
    make_format,
    make_overlong,
    make_task,
    verify_answer,
)
from coldstart.rewards import accuracy as accuracy_module
from coldstart.types import Example

# (predicted answer, gold answer, expected): each row is a decision documented in accuracy.py.
TRICKY = [
    # fractions and decimals
    ("1/2", "0.5", 1), ("\\frac{1}{2}", "0.5", 1), ("0.5", "\\frac12", 1), ("\\dfrac{1}{2}", "1/2", 1),
    ("2/4", "1/2", 1), ("0.50", "1/2", 1), ("1/3", "0.333", 0), ("1/3", "0.3333333", 1),
    # percentages: a percentage matches its number and its fraction; the number and fraction differ
    ("50\\%", "50", 1), ("50%", "0.5", 1), ("50", "50\\%", 1), ("0.5", "50\\%", 1),
    ("0.5", "50", 0), ("50", "0.5", 0),
    # sets: order-free, element-exact
    ("\\{1,2\\}", "\\{2,1\\}", 1), ("2, 1", "1,2", 1), ("\\{1,2,3\\}", "\\{1,2\\}", 0),
    # roots
    ("\\sqrt{2}", "2^{1/2}", 1), ("2\\sqrt{2}", "\\sqrt{8}", 1), ("\\sqrt{3}", "2^{1/2}", 0),
    # thousands separators
    ("1,000", "1000", 1), ("1000", "1,000", 1), ("1{,}000", "1000", 1), ("1 000", "1000", 1),
    ("1\\,000", "1000", 1), ("1 000 000", "1000000", 1), ("1 000", "0", 0),
    # negative numbers
    ("-3", "-3", 1), ("-3", "3", 0), ("3", "-3", 0), ("\u22123", "-3", 1), ("- 3", "-3", 1),
    ("-\\frac{1}{2}", "-0.5", 1),
    # intervals: the brackets matter; a comma list in brackets stays an interval
    ("(1,2]", "(1, 2]", 1), ("(1,2)", "(1,2]", 0), ("x \\in (1,2)", "(1,2)", 1),
    ("(-\\infty, 0)", "(-\\infty,0)", 1), ("[1,100]", "[1, 100]", 1), ("(2,3)", "(3,2)", 0),
    # integers with spaces: outer spaces are fine, inner ones are not a number
    (" 42 ", "42", 1), ("4 2", "42", 0), ("4 2", "8", 0), ("4 2", "6", 0),
    # polynomials and equations
    ("x^2+2x+1", "(x+1)^2", 1), ("x^2-1", "(x-1)(x+1)", 1), ("x=2", "2", 1), ("2", "x=2", 1),
    # number formats
    ("3.0", "3", 1), ("1e3", "1000", 1), ("2.5e-3", "0.0025", 1), ("30^\\circ", "30", 1), ("30°", "30", 1),
    ("\\pi", "3.14159", 0), ("\\infty", "\\infty", 1),
    # words: a word gold is compared as a case-folded string, not as a product of symbols
    ("banana", "3", 0), ("ananab", "banana", 0), ("Banana", "banana", 1), ("\\text{yes}", "Yes", 1),
    ("yes", "no", 0), ("The answer is 5", "5", 0), ("3", "banana", 0),
    # multiple choice letters, empty prediction
    ("A", "A", 1), ("B", "A", 0), ("(A)", "A", 1), ("", "3", 0),
]


@pytest.mark.parametrize(("pred", "gold", "expected"), TRICKY)
def test_answers_match_tricky_pairs(pred, gold, expected):
    assert answers_match(pred, gold) is bool(expected)


@pytest.mark.parametrize("gold", ["", "   ", "\\frac{", "@#", "}{", "4 2", None])
def test_unusable_gold_raises_in_reward_and_scores_zero_in_verify_answer(gold, caplog):
    accuracy_module.GOLD_ERRORS.clear()
    with pytest.raises(GoldAnswerError):
        make_accuracy()(["q"], ["<answer>3</answer>"], answer=[gold])
    # raised even when the completion has no answer: a bad gold is always reported
    with pytest.raises(GoldAnswerError):
        make_accuracy()(["q"], ["nothing"], answer=[gold])
    with caplog.at_level(logging.WARNING, logger="coldstart.rewards"):
        assert verify_answer("<answer>3</answer>", gold) == 0.0
    assert sum(accuracy_module.GOLD_ERRORS.values()) == 1
    assert "gold answer" in caplog.text


def test_gold_longer_than_max_chars_raises():
    with pytest.raises(GoldAnswerError, match="max_chars=10"):
        answers_match("1", "1+" * 10, max_chars=10)
    assert not answers_match("1+" * 10 + "1", "11", max_chars=10)  # a long prediction is just wrong


@pytest.mark.parametrize(("completion", "score"), [
    ("\\boxed{3} then <answer>4</answer>", 1.0),          # <answer> wins over a \boxed outside it
    ("<answer>\\boxed{4}</answer>", 1.0),                 # \boxed inside <answer> is unwrapped
    ("<answer>3</answer> <answer>4</answer>", 1.0),       # the last <answer> counts
    ("<answer>4</answer> <answer>3</answer>", 0.0),
    ("\\boxed{4} and <answer>3", 1.0),                    # unclosed <answer>: fall back to \boxed
    ("the answer is 4", 0.0),                             # nothing extractable
    ("<answer></answer>", 0.0),
])
def test_verify_answer_extraction_precedence(completion, score):
    assert verify_answer(completion, "4") == score


def test_accuracy_partial_reward_reft():
    completions = ["<answer>12</answer>", "<answer>13</answer>", "no answer", "<answer> </answer>"]
    assert make_accuracy()(["q"] * 4, completions, answer=["12"] * 4) == [1.0, 0.0, 0.0, 0.0]
    assert make_accuracy(partial=0.1)(["q"] * 4, completions, answer=["12"] * 4) == [1.0, 0.1, 0.0, 0.0]


@pytest.mark.parametrize("options", [{"partial": 1.0}, {"partial": -0.1}, {"timeout_s": 0}, {"timeout_s": 0.5}])
def test_accuracy_bad_options(options):
    with pytest.raises(ValueError, match="accuracy"):
        make_accuracy(**options)


def test_accuracy_ignores_unknown_columns():
    reward = make_accuracy()
    out = reward(["q"], ["<answer>2</answer>"], answer=["2"], solution=[None], completion_length=[5],
                 truncated=[False], example=[Example("q", "2")], difficulty=[3])
    assert out == [1.0]


def test_accuracy_from_another_thread():
    """math-verify's signal timeout cannot run off the main thread: we switch it off there."""
    assert accuracy_module._timeout(5) == 5
    reward = make_accuracy()
    with ThreadPoolExecutor(2) as pool:
        assert pool.submit(accuracy_module._timeout, 5).result() is None
        out = pool.submit(reward, ["q"] * 3, ["\\boxed{1/2}", "\\boxed{\\{2,1\\}}", "\\boxed{7}"],
                          answer=["0.5", "\\{1,2\\}", "8"]).result()
    assert out == [1.0, 1.0, 0.0]


def test_exact():
    completions = ["<answer>  New   York </answer>", "\\boxed{new york}", "New York", "<answer>NY</answer>"]
    gold = ["New York"] * 4
    assert make_exact()(["q"] * 4, completions, answer=gold) == [1.0, 0.0, 0.0, 0.0]
    assert make_exact(casefold=True)(["q"] * 4, completions, answer=gold) == [1.0, 1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="empty"):
        make_exact()(["q"], ["<answer>x</answer>"], answer=["  "])


@pytest.mark.parametrize(("completion", "strict", "score"), [
    ("<think>2+2</think><answer>4</answer>", True, 1.0),
    ("\n <think>\n2+2\n</think>\n\n<answer>4</answer>\n", True, 1.0),
    ("<think></think><answer></answer>", True, 1.0),                  # content is not judged here
    ("<answer>4</answer>", True, 0.0),                                # no think block
    ("<think>2+2</think>", True, 0.0),                                # no answer block
    ("<answer>4</answer><think>2+2</think>", True, 0.0),              # wrong order
    ("<think>a</think><think>b</think><answer>4</answer>", True, 0.0),  # two think blocks
    ("<think>a</think><answer>4</answer><answer>5</answer>", True, 0.0),
    ("<think>a <answer>4</answer></think><answer>4</answer>", True, 0.0),
    ("<think>a</think><answer>4</answer> trailing", True, 0.0),
    ("<think>a</think><answer>4</answer> trailing", False, 1.0),
    ("Sure! <think>a</think> so: <answer>4</answer>", False, 1.0),
    ("<think>a</think>", False, 0.0),
    ("<think>a</think><answer>4", True, 0.0),                         # truncated
])
def test_format(completion, strict, score):
    assert make_format(strict=strict)(["q"], [completion]) == [score]


def test_format_other_tags():
    completion = "<knowledge>area = wh</knowledge><answer>6</answer>"
    assert make_format(tag="knowledge")(["q"], [completion]) == [1.0]
    assert make_format(tag="think")(["q"], [completion]) == [0.0]
    with pytest.raises(ValueError, match="think, plan, code, knowledge, examples"):
        make_format(tag="reasoning")


class _ParityTask:
    """A task whose verifier gives 1 when the completion's number has the parity in example.meta."""

    name = "parity"

    def examples(self, split, n, seed):
        return []

    def verify(self, example, completion):
        return float(int(completion) % 2 == example.meta["parity"])


def test_task_reward_uses_the_task_verifier():
    examples = [Example("q", "", meta={"parity": 0}), Example("q", "", meta={"parity": 1})]
    reward = make_task(task=_ParityTask())
    assert reward(["q"] * 4, ["4", "4", "3", "3"], example=examples + examples[::-1]) == [1.0, 0.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="'example' column"):
        reward(["q"], ["4"], answer=["4"])
    with pytest.raises(ValueError, match="needs a task"):
        make_task(task=None)


def test_overlong_dapo_soft_punishment():
    # max_len 100, cache 20: free up to 80, then (80 - L) / 20 down to -1 at 100, -1 beyond
    reward = make_overlong(max_len=100, cache_len=20)
    lengths = [0, 80, 81, 90, 99, 100, 150]
    assert reward(["q"] * 7, ["a"] * 7, completion_length=lengths) == [0.0, 0.0, -0.05, -0.5, -0.95, -1.0, -1.0]
    assert make_overlong(max_len=50)(["q"], ["a"], completion_length=[45]) == [-0.5]  # cache_len 10
    with pytest.raises(ValueError, match="completion_length"):
        reward(["q"], ["a"])
    for bad in [{"max_len": 10, "cache_len": 0}, {"max_len": 10, "cache_len": 11}, {"max_len": 10.5}]:
        with pytest.raises(ValueError, match="overlong"):
            make_overlong(**bad)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(textwrap.dedent("""
        NOT_A_FUNCTION = 3

        def length_bonus(prompts, completions, scale=1.0, **columns):
            return [scale * len(c) for c in completions]
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_rewards"


def test_import_reward(user_module):
    assert import_reward(f"{user_module}:length_bonus")(["q"] * 2, ["ab", "abcd"]) == [2, 4]
    with_scale = import_reward(f"{user_module}:length_bonus", scale=0.5)
    assert with_scale(prompts=["q"], completions=["ab"], answer=["x"]) == [1.0]  # called by keyword, as TRL does
    with pytest.raises(ValueError, match="clash"):
        with_scale(prompts=["q"], completions=["ab"], scale=[2])
    for name, why in [(f"{user_module}:missing", "no attribute 'missing'"),
                      (f"{user_module}:NOT_A_FUNCTION", "not a function"),
                      ("no_such_module_xyz:f", "cannot import"), (user_module, "package.module:function"),
                      (":f", "package.module:function")]:
        with pytest.raises(ValueError, match=why):
            import_reward(name)


def test_build_reward_weighted_sum_and_names(user_module):
    reward = build_reward([
        {"name": "accuracy", "weight": 1.0, "options": {"partial": 0.1}},
        {"name": "format", "weight": 0.5},
        {"name": "format", "weight": 0.25, "options": {"tag": "plan"}},
        {"name": f"{user_module}:length_bonus", "weight": 0.0},
    ])
    completions = ["<think>x</think><answer>2</answer>", "<plan>x</plan><answer>3</answer>", "2"]
    result = reward(["1+1?"] * 3, completions, answer=["2"] * 3, truncated=[False] * 3)
    assert list(result.parts) == ["accuracy", "format", "format_2", f"{user_module}:length_bonus"]
    assert result.parts["accuracy"] == [1.0, 0.1, 0.0]
    assert result.parts["format"] == [1.0, 0.0, 0.0]
    assert result.parts["format_2"] == [0.0, 1.0, 0.0]
    assert result.total == pytest.approx([1.5, 0.35, 0.0])
    assert result.errors == 0 and result.error_messages == []
    metrics = result.metrics()
    assert metrics["reward/total"] == pytest.approx(1.85 / 3)
    assert metrics["reward/format_2"] == pytest.approx(1 / 3) and metrics["reward/errors"] == 0.0


def test_build_reward_bad_specs():
    with pytest.raises(ValueError, match="unknown reward 'acc'; valid: accuracy, code, exact, format, "):
        build_reward([{"name": "acc"}])
    with pytest.raises(ValueError, match="bad options"):
        build_reward([{"name": "accuracy", "options": {"partail": 0.1}}])
    with pytest.raises(ValueError, match="bad options"):
        build_reward([{"name": "overlong"}])  # max_len is required
    with pytest.raises(ValueError, match="unknown spec keys"):
        build_reward([{"name": "format", "wieght": 2}])
    with pytest.raises(ValueError, match="weight"):
        build_reward([{"name": "format", "weight": float("nan")}])
    with pytest.raises(ValueError, match="needs a task"):
        build_reward([{"name": "task"}])
    with pytest.raises(ValueError, match="non-empty list"):
        build_reward([])
    assert {"accuracy", "code", "exact", "format", "overlong", "task"} <= set(REWARDS)


def test_combined_reward_counts_and_zeroes_failures(caplog):
    calls = []

    def flaky(prompts, completions, **columns):
        """Raises on the batch when any completion says 'boom'; NaN for 'nan'; a string for 'str'."""
        calls.append(len(completions))
        if "boom" in completions:
            raise RuntimeError("boom!")
        return [{"nan": math.nan, "str": "1"}.get(c, 1.0) for c in completions]

    reward = build_reward([{"name": "format", "weight": 2.0}])
    reward.parts.append(RewardPart("flaky", 1.0, flaky))
    good = "<think>a</think><answer>1</answer>"
    with caplog.at_level(logging.WARNING, logger="coldstart.rewards"):
        result = reward(["q"] * 4, [good, "boom", "nan", "str"])
    assert calls == [4, 1, 1, 1, 1]  # the batch, then item by item
    assert result.parts["flaky"] == [1.0, 0.0, 0.0, 0.0]
    assert result.total == [3.0, 0.0, 0.0, 0.0]
    assert result.errors == 3
    assert result.error_messages[0] == "flaky[1]: RuntimeError: boom!"
    assert "flaky[2]" in result.error_messages[1] and "flaky[3]" in result.error_messages[2]
    assert "boom!" in caplog.text

    # without a raising item the batch result is kept and only the bad items are errors
    calls.clear()
    result = reward(["q"] * 3, [good, "nan", good])
    assert calls == [3] and result.parts["flaky"] == [1.0, 0.0, 1.0] and result.errors == 1


def test_combined_reward_wrong_length_and_bad_gold():
    def short(prompts, completions, **columns):
        return [1.0] * (len(completions) - 1)  # always one short: every item fails

    reward = build_reward([{"name": "accuracy"}], stop_on_failure=False)
    reward.parts.append(RewardPart("short", 1.0, short))
    result = reward(["q"] * 3, ["\\boxed{2}", "\\boxed{2}", "\\boxed{2}"], answer=["2", "\\frac{", "3"])
    assert result.parts["accuracy"] == [1.0, 0.0, 0.0]  # the bad gold scores 0, never 1
    assert result.parts["short"] == [0.0, 0.0, 0.0]
    assert result.errors == 4
    assert any("accuracy[1]: GoldAnswerError" in m for m in result.error_messages)
    assert len(result.error_messages) == 4


def test_combined_reward_checks_column_lengths():
    reward = build_reward([{"name": "accuracy"}])
    with pytest.raises(ValueError, match="'answer' must be a list of 2"):
        reward(["q"] * 2, ["a", "b"], answer=["1"])
    with pytest.raises(ValueError, match="'prompts'"):
        reward(["q"], ["a", "b"], answer=["1", "2"])


@pytest.mark.parametrize("module", [accuracy_module, basic, combine, extract], ids=lambda m: m.__name__)
def test_doctests(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
