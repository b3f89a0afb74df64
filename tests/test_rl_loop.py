"""The RL loop below the CLI: registries against the config, user-registered algorithms, and the refill loop
of a refilling filter on a stub sampler whose completions (and so rewards) are fixed per prompt."""

from __future__ import annotations

import importlib
import json
import typing

import pytest
import torch

from coldstart.algorithms import ADVANTAGES, AGGREGATIONS, FILTERS, Estimator, Filter
from coldstart.algorithms.turn_credit import TRAJECTORY_SCORES, TURN_CREDITS
from coldstart.cli import main
from coldstart.config import ConfigError, RLConfig, load_recipe
from coldstart.rl import Algorithms, TrainerState
from coldstart.rl.sample import PlainSource, SampleSettings, sample_step
from coldstart.rollout import SamplingParams
from coldstart.types import Example, Rollouts


def literal_values(field: str) -> set[str]:
    return set(typing.get_args(RLConfig.model_fields[field].annotation))


def test_every_config_name_has_a_registry_entry_and_back():
    assert literal_values("loss_agg") == set(AGGREGATIONS)
    assert literal_values("turn_credit") == set(TURN_CREDITS)
    assert literal_values("trajectory_score") == set(TRAJECTORY_SCORES)
    for name, entry in ADVANTAGES.items():
        assert Algorithms.from_config(RLConfig(advantage=name)).estimator is entry
    for name, entry in FILTERS.items():
        assert Algorithms.from_config(RLConfig(filter=name)).filter is entry
    with pytest.raises(ValueError, match="unknown 'gpro'; choose one of grpo"):
        RLConfig(advantage="gpro")
    with pytest.raises(ConfigError, match=r"rl\.filter: .*unknown 'dynamc'"):
        load_recipe("recipes/demo.yaml", ["rl.filter=dynamc"])


def test_the_stage_registry_is_the_one_list_of_stages():
    from coldstart.config import TRAINING_STAGES, RunConfig
    from coldstart.infra.distributed import fsdp_refusals

    (item,) = typing.get_args(RunConfig.model_fields["stages"].annotation)
    assert typing.get_args(item) == (*TRAINING_STAGES, "eval")  # run.stages accepts exactly the registry
    recipe = load_recipe("recipes/demo.yaml")
    for name, entry in TRAINING_STAGES.items():
        module, fn = entry.train.split(":")
        assert callable(getattr(importlib.import_module(module), fn)), name
        assert (fsdp_refusals(recipe, name) == []) == entry.fsdp, name


def test_capabilities_match_what_each_algorithm_does():
    # the whole-batch estimators whiten over every masked token of the batch: split batches would differ
    # (each family's own entries are checked by name, so a new entry needs no edit here)
    assert [ADVANTAGES[n].batch_normalised for n in ("grpo", "dr_grpo", "rloo", "reinforce_pp", "gae")] == [
        False, False, False, True, True]
    assert [n for n in ("grpo", "dr_grpo", "rloo", "reinforce_pp", "gae") if ADVANTAGES[n].needs_values] == ["gae"]
    assert [n for n in ("grpo", "dr_grpo", "rloo", "reinforce_pp", "gae") if ADVANTAGES[n].std_normalised] == [
        "grpo"]
    assert {n for n, f in FILTERS.items() if f.refills} == {"dynamic"}
    assert {n for n, f in FILTERS.items() if f.acts_on == "sequences"} == {"pad"}
    assert {n for n, a in AGGREGATIONS.items() if a.normaliser == "tokens"} == {"token_mean"}


def test_user_estimator_and_filter_from_a_module_are_resolved_and_run(tmp_path, tiny_overrides):
    cfg = RLConfig(advantage="tests.fixtures.algos:centered", filter="tests.fixtures.algos:first_group")
    algos = Algorithms.from_config(cfg)
    assert isinstance(algos.estimator, Estimator) and not algos.estimator.batch_normalised
    assert isinstance(algos.filter, Filter) and algos.filter.acts_on == "groups"
    with pytest.raises(ValueError, match=r"rl\.advantage: cannot import module .no_such_module."):
        Algorithms.from_config(RLConfig(advantage="no_such_module:fn"))
    out = tmp_path / "user"
    assert main(["rl", "recipes/demo.yaml", "--out", str(out), *tiny_overrides, "rl.init=model", "rl.steps=1",
                 "rl.advantage=tests.fixtures.algos:centered", "rl.filter=tests.fixtures.algos:first_group"]) == 0
    row = json.loads((out / "rl" / "metrics.jsonl").read_text().splitlines()[0])
    assert row["custom/estimator_calls"] == 1.0 and row["groups/custom_kept"] == 1.0


class FixedSampler:
    """A stub sampler: prompt p's g-th completion is one token, id (p[0] + g) % 2 + 5 when p[0] is even (an
    informative group), else always 5 (a flat group); log-probs fixed at −0.5. Counts its calls."""

    def __init__(self):
        self.calls, self.tokenizer = 0, None

    def sample(self, model, prompts, params, generator=None, seeds=None) -> Rollouts:
        self.calls += 1
        ids = [[(p[0] + g) % 2 + 5 if p[0] % 2 == 0 else 5] for p in prompts for g in range(params.n)]
        N = len(ids)
        return Rollouts(prompt_ids=torch.tensor([p for p in prompts for _ in range(params.n)]),
                        prompt_mask=torch.ones(N, 1, dtype=torch.bool), completion_ids=torch.tensor(ids),
                        completion_mask=torch.ones(N, 1, dtype=torch.bool), logprobs=torch.full((N, 1), -0.5),
                        truncated=torch.zeros(N, dtype=torch.bool), texts=[str(i[0]) for i in ids])


class TokenReward:
    """Reward 1 for completion '6', else 0: prompt groups whose completions differ are informative."""

    def __call__(self, prompts, completions, **columns):
        from coldstart.rewards import CombinedReward, RewardPart

        six = lambda completions, **k: [float(x == "6") for x in completions]  # noqa: E731
        return CombinedReward([RewardPart("t", 1.0, six)])(prompts, completions, **columns)


def run_refill(pool: list[Example], max_rounds: int, B: int = 4, G: int = 2):
    sampler = FixedSampler()
    source = PlainSource(sampler, TokenReward(), lambda exs: [[int(e.prompt)] for e in exs], G)
    state = TrainerState()
    batch = sample_step(None, source, FILTERS["dynamic"], pool, state, SampleSettings(B, G, max_rounds, 0, False),
                        SamplingParams(n=G), torch.Generator().manual_seed(0), pad_id=0)
    return batch, state, sampler


def test_dynamic_refill_advances_the_cursor_and_stops_at_max_resample():
    # half the prompts informative: rounds continue until B = 4 informative groups are kept
    pool = [Example(str(i), "") for i in range(16)]
    batch, state, sampler = run_refill(pool, max_rounds=8)
    assert len(batch.examples) == 4 and all(int(e.prompt) % 2 == 0 for e in batch.examples)
    assert state.cursor == 4 * sampler.calls and batch.metrics["groups/resample_rounds"] == sampler.calls - 1
    assert sampler.calls >= 2  # one round of 4 prompts cannot hold 4 informative ones in expectation
    assert batch.rollouts.completion_ids.shape[0] == 8 and batch.scores.tolist().count(1.0) == 4
    assert batch.first.rollouts.completion_ids.shape[0] == 8  # the first round, before the filter
    # only flat prompts: every round is spent (1 + max_resample), nothing is kept, the cursor still moves
    flat = [Example(str(2 * i + 1), "") for i in range(8)]
    batch, state, sampler = run_refill(flat, max_rounds=3)
    assert sampler.calls == 3 and state.cursor == 12 and batch.examples == []
    assert batch.metrics["groups/zero_std_frac"] == 1.0 and batch.metrics["groups/resample_rounds"] == 2
    # a filter that does not refill samples once whatever it keeps
    batch, state, sampler = run_refill(flat, max_rounds=1)
    assert sampler.calls == 1 and state.cursor == 4


def test_trainer_state_reads_and_writes_the_old_state_json_keys():
    old = {"step": 3, "cursor": 96, "best": 0.5, "elapsed": 1.5, "flat_steps": 1, "nonfinite_run": 0,
           "nonfinite_total": 2, "temperature": 0.85, "pool_ids": [0, 2]}
    state = TrainerState.from_dict(old)
    assert state.temperature == 0.85 and state.nonfinite == {"nonfinite_run": 0, "nonfinite_total": 2}
    assert state.to_dict() == old
    assert "temperature" not in TrainerState().to_dict()  # untuned: no key, so resume tunes at step 1
