"""A TRL user's data and reward functions, unchanged: the call GRPOTrainer makes (TRL 1.16 `_calculate_rewards`),
None as "not applicable", async rewards, logging hooks, conversational data files and SFT formats."""

import asyncio
import functools
import json
import math
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from coldstart.config import PromptConfig
from coldstart.models import build_char_tokenizer
from coldstart.prompts import chat_format
from coldstart.rewards import build_reward
from coldstart.rewards.combine import CombinedReward, RewardPart, RewardState, reward_inputs, score_rows
from coldstart.rl.sample import fill_unscorable
from coldstart.tasks import build_task
from coldstart.types import Example

SYSTEM = "You are a careful calculator."


def conversational(i: int, completion: bool = False) -> dict:
    row = {"prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"{i}+{i}"}],
           "solution": str(2 * i), "level": i % 3}
    if completion:  # TRL's conversational prompt-completion format: an SFT target
        text = f"<think>{i}+{i}={2 * i}</think><answer>{2 * i}</answer>"
        row["completion"] = [{"role": "assistant", "content": text}]
    return row


# ---- TRL-style reward functions, as written for GRPOTrainer (docs/source/grpo_trainer.md) ---------------------
def format_reward(completions, **kwargs):
    pattern = r"^<think>.*?</think>\s*<answer>.*?</answer>$"
    return [1.0 if re.match(pattern, c[0]["content"], re.DOTALL) else 0.0 for c in completions]


def accuracy_reward(completions, solution, **kwargs):
    return [1.0 if f"<answer>{s}</answer>" in c[0]["content"] else 0.0 for c, s in zip(completions, solution)]


def level_reward(prompts, completions, completion_ids, trainer_state, level, log_metric=None, log_extra=None,
                 **kwargs):
    """Reads every argument TRL passes; None (not applicable) for level 0."""
    assert all(p[0] == {"role": "system", "content": SYSTEM} for p in prompts)
    assert all(isinstance(i, list) and all(isinstance(t, int) for t in i) for i in completion_ids)
    log_metric("custom/level", sum(level) / len(level))
    log_extra("level_seen", list(level))
    return [None if lv == 0 else 0.5 * trainer_state.global_step / trainer_state.max_steps for lv in level]


def _rows(n: int = 6) -> list[Example]:
    return [Example(conversational(i)["prompt"], str(2 * i), record=conversational(i)) for i in range(n)]


def test_rewards_are_called_by_keyword_as_trl_calls_them():
    rows = _rows()
    texts = [f"<think>{i}+{i}</think><answer>{2 * i if i % 2 else 99}</answer>" for i in range(6)]
    reward = CombinedReward([RewardPart("format", 1.0, format_reward), RewardPart("accuracy", 1.0, accuracy_reward),
                             RewardPart("level", 2.0, level_reward)])
    result = score_rows(reward, rows, texts, completion_ids=[[5, 6, 7]] * 6,
                        trainer_state=RewardState(global_step=3, max_steps=6))
    assert result.errors == 0, result.error_messages
    assert result.parts["format"] == [1.0] * 6
    assert result.parts["accuracy"] == [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    level = result.parts["level"]
    assert math.isnan(level[0]) and math.isnan(level[3]) and level[1] == 0.25  # None: left out of the sum
    assert result.total == [1.0, 2.5, 1.5, 2.0, 1.5, 2.5]
    assert result.extra_metrics == {"custom/level": 1.0} and result.extra_columns["level_seen"] == [0, 1, 2] * 2
    m = result.metrics()
    assert m["reward/level"] == 0.25 and m["custom/level"] == 1.0 and m["reward/errors"] == 0


def test_reward_inputs_match_trl():
    rows = [*_rows(2), Example("3+3", "6", record={"prompt": "3+3", "solution": "6", "level": 1})]
    prompts, completions, columns = reward_inputs(rows, ["a", "b", "c"], completion_ids=[[1], [2, 3], [4]],
                                                  truncated=[False, True, False])
    assert prompts[0][0]["role"] == "system" and prompts[2] == "3+3"
    assert completions[:2] == [[{"role": "assistant", "content": "a"}], [{"role": "assistant", "content": "b"}]]
    assert completions[2] == "c"  # a string prompt gets string completions
    assert columns["solution"] == ["0", "2", "6"] and columns["level"] == [0, 1, 1]  # each column by its own name
    assert "prompt" not in columns and columns["completion_ids"] == [[1], [2, 3], [4]]
    assert columns["completion_length"] == [1, 2, 1] and columns["truncated"] == [False, True, False]
    assert columns["trainer_state"].global_step == 0


def test_an_answer_column_of_the_data_never_shadows_the_gold_for_builtins():
    ex = Example("q", "7", record={"prompt": "q", "answer": "not the gold", "gold": "7"})
    result = score_rows(build_reward([{"name": "accuracy"}]), [ex], ["<answer>7</answer>"])
    assert result.parts["accuracy"] == [1.0]


def test_every_part_none_is_unscorable_and_gets_the_group_mean():
    def never(completions, **kwargs):
        return [None] * len(completions)

    def some(completions, **kwargs):
        return [1.0, None, 0.0, None]

    reward = CombinedReward([RewardPart("never", 1.0, never), RewardPart("some", 1.0, some)])
    result = reward(["q"] * 4, ["a"] * 4)
    assert math.isnan(result.total[1]) and result.unscorable == 2 and result.errors == 0
    assert result.metrics()["reward/unscorable"] == 2 and "reward/never" not in result.metrics()
    assert fill_unscorable(torch.tensor(result.total), 2).tolist() == [1.0, 1.0, 0.0, 0.0]


def test_async_rewards_partials_and_callable_objects():
    started = []

    async def slow(completions, delay=0.2, **kwargs):
        started.append(len(completions))
        await asyncio.sleep(delay)
        return [1.0] * len(completions)

    class Judge:
        async def __call__(self, completions, **kwargs):
            await asyncio.sleep(0.2)
            return [0.5] * len(completions)

    reward = CombinedReward([RewardPart("slow", 1.0, slow),
                             RewardPart("partial", 1.0, functools.partial(slow, delay=0.2)),
                             RewardPart("judge", 1.0, Judge())])
    assert all(p.is_async for p in reward.parts)
    import time

    t0 = time.perf_counter()
    result = reward(["q"] * 3, ["a"] * 3)
    assert time.perf_counter() - t0 < 0.5  # the three ran together
    assert result.total == [2.5] * 3 and result.errors == 0

    async def raises(completions, **kwargs):
        raise RuntimeError("judge offline")

    reward = CombinedReward([RewardPart("ok", 1.0, slow), RewardPart("down", 1.0, raises)], stop_on_failure=False)
    result = reward(["q"] * 2, ["a"] * 2)
    assert result.failed == {"down": 2} and "judge offline" in result.error_messages[0]


def test_a_wrong_signature_fails_loudly_instead_of_silently():
    def positional_only(completions):  # TRL calls by keyword with more arguments: TypeError on every item
        return [1.0] * len(completions)

    reward = CombinedReward([RewardPart("bad", 1.0, positional_only)])
    with pytest.raises(RuntimeError, match="reward 'bad' failed on every one of the 2 completions"):
        reward(["q"] * 2, ["a"] * 2)


def test_builtin_rewards_accept_conversational_completions_and_the_prefix():
    fmt = build_reward([{"name": "format"}, {"name": "accuracy"}])
    ex = Example([{"role": "user", "content": "1+1"}], "2")
    result = score_rows(fmt, [ex], ["1+1</think><answer>2</answer>"], prefix="<think>")
    assert result.parts == {"format": [1.0], "accuracy": [1.0]}


# ---- conversational data, rendered with the model's template ----------------------------------------------------
def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_conversational_prompt_keeps_its_system_message(tmp_path):
    task = build_task("file", {"path": str(_jsonl(tmp_path / "d.jsonl", [conversational(i) for i in range(40)]))})
    ex = task.examples("train", 1, 0)[0]
    assert ex.conversational and ex.answer == ex.record["solution"]
    tok = build_char_tokenizer()
    text = chat_format(tok, PromptConfig()).text(ex)
    assert SYSTEM in text and "Reason step by step" not in text  # as given: no strategy system prompt on top
    mine = PromptConfig(system_prompt="Answer in <answer> tags.")
    assert "Answer in <answer> tags." in chat_format(tok, mine).text("1+1")
    assert chat_format(tok, mine).text(ex).count(SYSTEM) == 1 and "Answer in" not in chat_format(tok, mine).text(ex)


def test_trl_sft_formats(tmp_path):
    rows = [{"prompt": [{"role": "user", "content": "2+2"}],
             "completion": [{"role": "assistant", "content": "<think>2+2=4</think><answer>4</answer>"}]},
            {"prompt": "3+3", "completion": "3+3 is \\boxed{6}"},
            {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "5+5"},
                          {"role": "assistant", "content": "<answer>10</answer>"}]}]
    task = build_task("file", {"path": str(_jsonl(tmp_path / "sft.jsonl", rows)), "val_frac": 0, "test_frac": 0})
    by_answer = {e.answer: e for e in task.examples("train", None, 0)}
    assert by_answer["4"].target == "<think>2+2=4</think><answer>4</answer>" and by_answer["4"].conversational
    assert by_answer["6"].target == "3+3 is \\boxed{6}" and by_answer["6"].prompt == "3+3"
    assert by_answer["10"].prompt == rows[2]["messages"][:2] and by_answer["10"].target == "<answer>10</answer>"
    bad = _jsonl(tmp_path / "bad.jsonl", [{"prompt": [{"content": "no role"}], "answer": "1"}])
    with pytest.raises(ValueError, match=r"bad.jsonl, line 1: field 'prompt' \(fields.prompt\), message 0"):
        build_task("file", {"path": str(bad)})
    none = _jsonl(tmp_path / "none.jsonl", [{"prompt": "q", "completion": "no answer here"}])
    with pytest.raises(ValueError, match=r"none.jsonl, line 1: .*set fields.answer"):
        build_task("file", {"path": str(none)})


# ---- the whole run, as a new user would: `coldstart run` with rewards beside the recipe -------------------------
TRL_REWARDS = '''
import json, os, re

def format_reward(completions, **kwargs):
    pattern = r"^<think>.*?</think>\\s*<answer>.*?</answer>$"
    return [1.0 if re.match(pattern, c[0]["content"], re.DOTALL) else 0.0 for c in completions]

def accuracy_reward(completions, solution, **kwargs):
    out = []
    for c, s in zip(completions, solution):
        m = re.search(r"<answer>(.*?)</answer>", c[0]["content"])
        out.append(None if s is None else float(m is not None and m.group(1).strip() == s))
    return out

def spy(prompts, completions, completion_ids, trainer_state, solution, **kwargs):
    with open(os.environ["SPY"], "a") as f:
        f.write(json.dumps({"system": prompts[0][0], "completion": completions[0], "ids": completion_ids[0],
                            "step": trainer_state.global_step, "max_steps": trainer_state.max_steps,
                            "solution": solution[0], "keys": sorted(kwargs)}) + "\\n")
    return [0.0] * len(completions)
'''


def test_coldstart_run_with_trl_data_and_rewards_unchanged(tmp_path):
    from tests.conftest import TINY

    work = tmp_path / "project"
    work.mkdir()
    (work / "my_rewards.py").write_text(TRL_REWARDS)
    data = _jsonl(work / "train.jsonl", [conversational(i, completion=i % 2 == 0) for i in range(1, 60)])
    recipe = work / "recipe.yaml"
    recipe.write_text(textwrap.dedent(f"""
        task: {{name: file, options: {{path: '{data}'}}}}
        rl:
          rewards: [{{name: 'my_rewards:format_reward'}}, {{name: 'my_rewards:accuracy_reward'}},
                    {{name: 'my_rewards:spy'}}]
    """))
    overrides = [o for o in TINY if not o.startswith("task.")] + [
        "task.val_size=4", "task.test_size=4", "run.stages=[sft,rl]", "sft.max_steps=2", "sft.traces=16"]
    script = Path(sys.executable).with_name("coldstart")  # the console script: no working directory on sys.path
    cmd = [str(script)] if script.exists() else [sys.executable, "-c", "import sys; from coldstart.cli import main; "
                                                 "sys.path.remove('') if '' in sys.path else None; sys.exit(main())"]
    spy = tmp_path / "spy.jsonl"
    done = subprocess.run([*cmd, "run", str(recipe), "--out", str(tmp_path / "out"), *overrides],
                          cwd=tmp_path, capture_output=True, text=True, env={**__import__("os").environ,
                                                                              "SPY": str(spy)}, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = [json.loads(line) for line in (tmp_path / "out" / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 3 and all(r["reward/errors"] == 0 for r in metrics)
    calls = [json.loads(line) for line in spy.read_text().splitlines()]
    assert calls[0]["system"] == {"role": "system", "content": SYSTEM}
    assert calls[0]["completion"][0]["role"] == "assistant" and all(isinstance(t, int) for t in calls[0]["ids"])
    assert [c["step"] for c in calls] == [0, 1, 2] and calls[0]["max_steps"] == 3
    assert calls[0]["solution"].isdigit() and {"level", "log_extra", "log_metric", "example"} <= set(calls[0]["keys"])


def test_sys_exit_in_a_reward_is_a_failure_not_an_exit():
    import sys as _sys

    def exits(completions, **kwargs):
        _sys.exit(0)

    reward = CombinedReward([RewardPart("exits", 1.0, exits)], stop_on_failure=False)
    result = reward(["q"] * 2, ["a"] * 2)
    assert result.failed == {"exits": 2} and "SystemExit(0)" in result.error_messages[0]
    assert "exits" in result.all_failed
