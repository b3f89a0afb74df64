"""Phased curricula and retrospective sampling (coldstart.curriculum, docs/algorithms.md §18): phase split, step
schedule, reward tracking, difficulty-weighted carry-over, the pool per step, and a run that survives --resume."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from coldstart.cli import main
from coldstart.config import CurriculumConfig
from coldstart.curriculum import (
    curriculum_pool,
    difficulty_weights,
    phase_at,
    phase_ends,
    record_rewards,
    retrospective_select,
    sort_key,
    split_phases,
)
from coldstart.types import Example
from tests.conftest import kill_when_saved


def test_sort_key_by_length_and_difficulty():
    assert sort_key(Example("12+3", "15", "2+3=5"), "length") == 9.0
    assert sort_key(Example("12+3", "15"), "length") == 4.0
    assert sort_key(Example("q", "a", meta={"difficulty": 3}), "difficulty") == 3.0
    assert sort_key(Example("q", "a", meta={"digits": "2"}), "difficulty", "digits") == 2.0
    with pytest.raises(ValueError, match="meta\\['difficulty'\\]"):
        sort_key(Example("q", "a"), "difficulty")


def test_split_phases_by_bounds_and_by_count():
    keys = [5.0, 1.0, 3.0, 9.0, 7.0, 3.0]
    assert split_phases(keys, [3, 7]) == [[1, 2, 5], [0, 4]]  # 9 is above the last bound: not used
    assert split_phases(keys, [3, None]) == [[1, 2, 5], [0, 3, 4]]
    assert split_phases(keys, [None]) == [[0, 1, 2, 3, 4, 5]]
    assert split_phases(keys, 2) == [[1, 2, 5], [0, 3, 4]]  # sorted 1 3 3 | 5 7 9
    assert split_phases(keys, 3) == [[1, 2, 5], [0], [3, 4]]  # cut after 3 (2nd), 5 (4th): the tie stays together
    with pytest.raises(ValueError, match="increase"):
        split_phases(keys, [7, 3])
    with pytest.raises(ValueError, match="increase"):
        split_phases(keys, [None, 3])
    with pytest.raises(ValueError, match=">= 1"):
        split_phases(keys, 0)


def test_phase_schedule():
    assert phase_ends(10, [1, 1]) == [5, 10]
    assert phase_ends(10, [1, 3]) == [2, 10]  # 2.5 rounds to 2 (banker's rounding)
    assert phase_ends(9, [0.2, 0.3, 0.5]) == [2, 4, 9]  # 1.8 → 2, 4.5 → 4, last = 9
    assert [phase_at(s, [2, 10]) for s in (0, 1, 2, 9, 10)] == [0, 0, 1, 1, 1]
    with pytest.raises(ValueError, match="shares"):
        phase_ends(10, [1, 0])


def test_record_rewards_accumulates_per_prompt():
    table: dict[str, list[float]] = {}
    record_rewards(table, ["a", "b"], torch.tensor([1.0, 0.0, 0.0, 0.0, 0.5, 1.0]), 3)
    record_rewards(table, ["a"], torch.tensor([1.0, 1.0, 0.0]), 3)
    assert table == {"a": [3.0, 6], "b": [1.5, 3]}


def test_difficulty_weights_and_retrospective_selection():
    assert difficulty_weights(torch.tensor([0.0, 0.4, 0.9, -1.0])).tolist() == pytest.approx([10.0, 2.0, 1.0, 10.0])
    # hard_below 1 drops the solved example 7; two hard ones fit within count 3: both, sorted
    assert retrospective_select([9, 7, 4], [0.2, 1.0, 0.0], 3, 1.0) == [4, 9]
    assert retrospective_select([9, 7, 4], [0.2, 1.0, 0.0], 0, 1.0) == []
    assert retrospective_select([9, 7, 4], [0.2, 1.0, 0.0], 2, 0.1) == [4]
    # one of {0: mean 0, 1: mean 0.5}: weights 10 and 1/0.6, so example 0 with p = 10 / (10 + 5/3) = 6/7
    gen = torch.Generator().manual_seed(0)
    picks = [retrospective_select([0, 1], [0.0, 0.5], 1, 1.0, gen)[0] for _ in range(2000)]
    assert picks.count(0) / 2000 == pytest.approx(6 / 7, abs=0.03)


def test_curriculum_pool_phases_carry_hard_examples_and_survive_a_json_round_trip():
    pool = [Example(f"q{d}", "a", meta={"difficulty": d}) for d in (4, 1, 6, 2, 5, 3)]
    cfg = CurriculumConfig(by="difficulty", phases=[2, 4, None], retrospective=0.5)
    state = {"step": 0}
    got, metrics = curriculum_pool(pool, state, cfg, 6, seed=0)  # ends [2, 4, 6]
    assert [e.prompt for e in got] == ["q1", "q2"]
    assert metrics == {"curriculum/phase": 1, "curriculum/pool": 2, "curriculum/carried": 0}
    record_rewards(state["curriculum"]["rewards"], ["q1", "q2"], torch.tensor([0.0, 0.0, 1.0, 1.0]), 2)
    state["step"] = 2  # phase 2: q4, q3 plus ⌈0.5·2⌉ = 1 carried example; q2 is solved, so q1
    got, metrics = curriculum_pool(pool, state, cfg, 6, seed=0)
    assert [e.prompt for e in got] == ["q4", "q3", "q1"]
    assert metrics == {"curriculum/phase": 2, "curriculum/pool": 3, "curriculum/carried": 1}
    state = json.loads(json.dumps(state))  # what a checkpoint stores and --resume reads
    state["step"] = 3
    assert [e.prompt for e in curriculum_pool(pool, state, cfg, 6, seed=0)[0]] == ["q4", "q3", "q1"]
    with pytest.raises(ValueError, match="phase 1 of"):
        curriculum_pool(pool, {"step": 0}, CurriculumConfig(by="difficulty", phases=[0, None]), 6, seed=0)
    with pytest.raises(ValueError, match="shares"):
        curriculum_pool(pool, {"step": 0}, CurriculumConfig(by="difficulty", steps=[1, 1, 1]), 6, seed=0)


def test_curriculum_runs_in_the_demo_recipe_and_survives_resume(tmp_path, tiny_overrides):
    base = tmp_path / "sft-once"
    assert main(["sft", "recipes/demo.yaml", "--out", str(base), *tiny_overrides]) == 0
    args = ["rl", "recipes/demo.yaml", *tiny_overrides, f"rl.init={base / 'sft'}", "rl.steps=6", "rl.save_every=1",
            "rl.curriculum={by: length, phases: 2, retrospective: 0.25}"]
    straight = tmp_path / "straight"
    assert main([*args, "--out", str(straight)]) == 0
    rows = [json.loads(x) for x in (straight / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert [r["curriculum/phase"] for r in rows] == [1, 1, 1, 2, 2, 2]
    assert rows[0]["curriculum/carried"] == 0 and rows[-1]["curriculum/carried"] > 0
    assert rows[-1]["curriculum/pool"] > rows[-1]["curriculum/carried"]
    # killed after step 2 (phase 1): the resumed run needs the saved per-prompt rewards to carry the same examples
    killed = tmp_path / "killed"
    kill_when_saved([*args, "--out", str(killed)], killed / "rl" / "checkpoints" / "step-000002")
    assert main([*args, "--out", str(killed), "--resume"]) == 0
    resumed = [json.loads(x) for x in (killed / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert [r["curriculum/carried"] for r in resumed] == [r["curriculum/carried"] for r in rows]
    a, b = (load_file(str(d / "rl" / "model.safetensors")) for d in (straight, killed))
    assert all(torch.equal(a[k], b[k]) for k in a)
