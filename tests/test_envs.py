import pytest

from coldstart.envs import build_env
from coldstart.envs.guess import GuessEnv, parse_guess
from coldstart.envs.tool import ToolEnv, safe_eval
from coldstart.models import build_char_tokenizer
from coldstart.multiturn import observation_template
from coldstart.prompts import render_prompt
from coldstart.tasks import build_task
from coldstart.types import Example


def test_guess_env_binary_search_game():
    env = GuessEnv(turn_cost=0.1)
    ex = Example("Guess my number from 1 to 16.", "8", "1 to 16", {"lo": 1, "hi": 16, "secret": 11})
    assert env.reset(ex) == "Guess my number from 1 to 16."
    assert env.step("<answer>8</answer>") == ("Higher. Guess my number from 9 to 16.", -0.1, False)
    assert env.step("12") == ("Lower. Guess my number from 9 to 11.", -0.1, False)
    assert env.step("hmm") == ("Say a number. Guess my number from 9 to 11.", -0.1, False)
    assert env.step("<answer>4</answer>")[0] == "Higher. Guess my number from 9 to 11."  # never widens
    assert env.step("<think>9 to 11</think><answer>11</answer>") == ("Correct.", 1.0, True)
    assert parse_guess("<answer>x</answer> 5") is None  # an answer block without a number is no guess


def test_guess_task_states_and_verify():
    task = build_task("guess", {"low": 1, "high": 8, "history": 0})
    train, test = task.examples("train", None, 0), task.examples("test", None, 0)
    key = lambda e: (e.meta["lo"], e.meta["hi"], e.meta["secret"])  # noqa: E731
    assert not {key(e) for e in train} & {key(e) for e in test}
    for e in train:
        lo, hi = e.meta["lo"], e.meta["hi"]
        assert lo <= e.meta["secret"] <= hi and e.answer == str((lo + hi) // 2)
        assert e.prompt.endswith(f"Guess my number from {lo} to {hi}.") and e.solution == f"{lo} to {hi}"
    e = train[0]
    assert task.verify(e, f"<answer>{e.answer}</answer>") == 1.0 and task.verify(e, "<answer>99</answer>") == 0.0
    assert task.examples("train", 5, 0) == train[:5]


def test_guess_dialogues_tokenize_like_a_multiturn_conversation():
    tok = build_char_tokenizer()
    task = build_task("guess", {"low": 1, "high": 16, "history": 3})
    exs = task.examples("train", 40, 0)
    key = lambda e: (e.prompt, e.meta["secret"])  # noqa: E731
    assert task.examples("train", 10, 0) == exs[:10] and not set(map(key, exs)) & set(
        map(key, task.examples("test", 10, 0)))
    assert any("<|end|>" in e.prompt for e in exs) and any("<|end|>" not in e.prompt for e in exs)
    before, after = observation_template(tok)
    for e in exs:
        # replay the dialogue in the environment: the same observations, the same state, the same text
        env = GuessEnv()
        turns = e.prompt.split("<|assistant|>")
        text = render_prompt(tok, env.reset(Example(turns[0], "", meta={"lo": 1, "hi": 16,
                                                                       "secret": e.meta["secret"]})), system=False)
        for t in turns[1:]:
            model_turn = t.split("<|end|>")[0]
            obs, _, done = env.step(model_turn)
            assert not done
            text += model_turn + "<|end|>" + before + obs + after
        assert text == render_prompt(tok, e, system=False)
        assert (env.lo, env.hi) == (e.meta["lo"], e.meta["hi"]) and e.answer == str((env.lo + env.hi) // 2)
        ids = tok(text, add_special_tokens=False).input_ids
        assert ids.count(tok.convert_tokens_to_ids("<|user|>")) == len(turns)  # role markers stay single tokens


@pytest.mark.parametrize("history,other", [(0, "random"), (3, "random"), (3, "low")])
def test_guess_imperfect_teacher_on_train_only(history, other):
    exact = build_task("guess", {"low": 1, "high": 16, "history": history})
    mixed = build_task("guess", {"low": 1, "high": 16, "history": history, "bisect": 0.5, "other_guess": other})
    train, perfect = mixed.examples("train", 400, 0), exact.examples("train", 400, 0)
    if not history:  # the same states in the same order, only the teacher's turn changes
        assert [e.prompt for e in train] == [e.prompt for e in perfect]
    mid = [e.answer == str((e.meta["lo"] + e.meta["hi"]) // 2) for e in train]
    assert 0.5 <= sum(mid) / len(mid) <= 0.7  # half bisect, the other half is random (some land on the midpoint)
    assert all(e.meta["lo"] <= int(e.answer) <= e.meta["hi"] for e in train)
    if other == "low":  # a linear scan: every turn that does not bisect names the interval's low end
        assert all(e.answer == str(e.meta["lo"]) for e, m in zip(train, mid) if not m)
    assert all(e.solution == f"{e.meta['lo']} to {e.meta['hi']}" for e in train)
    assert mixed.examples("val", 30, 0) == exact.examples("val", 30, 0)  # verify still scores the midpoint
    with pytest.raises(ValueError, match="bisect"):
        build_task("guess", {"bisect": 1.5})
    with pytest.raises(ValueError, match="other_guess"):
        build_task("guess", {"other_guess": "high"})


def test_safe_eval_accepts_arithmetic_only():
    assert safe_eval("(3+4)*12 - 2**3") == 76 and safe_eval("7 // 2") == 3 and safe_eval("-1.5") == -1.5
    for bad in ["__import__('os')", "a+1", "2**1000", "1/0", "[1]", "(lambda: 1)()", "9**9**9", "1e300*1e300"]:
        with pytest.raises(ValueError):
            safe_eval(bad)


def test_tool_env_calls_then_answers():
    task = build_task("arithmetic", {"digits": 2})
    env = build_env("tool", {}, task)()
    assert isinstance(env, ToolEnv) and env.stop == ["</tool>"]
    ex = Example("12+34", "46")
    assert env.reset(ex) == "12+34"
    assert env.step("<tool>12+34</tool>") == ("Result: 46", 0.0, False)
    assert env.step("<tool>12+</tool>")[0].startswith("Error: not an arithmetic expression")
    assert env.step("<answer>46</answer>") == ("", 1.0, True)
    env.reset(ex)
    assert env.step("<answer>45</answer>") == ("", 0.0, True)
    with pytest.raises(ValueError, match="unknown environment"):
        build_env("chess", {}, task)
    with pytest.raises(ValueError, match="turn_cost"):
        build_env("guess", {"cost": 1}, task)
