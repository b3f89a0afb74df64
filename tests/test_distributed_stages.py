"""Two CPU processes (gloo) through `accelerate launch`: rsft and dpo give the single-process weights.

Each launched stage checks after every optimizer step (dpo) or round (rsft) that both ranks hold identical
weights (a float64 checksum gathered from each rank; a mismatch raises) and logs it as `dist/param_checksum`.
The pure helpers that split the work over ranks are checked at the bottom."""

from __future__ import annotations

import json

import pytest
import torch

from coldstart.dpo import read_pairs
from coldstart.infra.distributed import contiguous_share, strided_share
from coldstart.rsft import Selection, merge_selections, select_completions
from tests.test_distributed import launch, metrics, weights

RECIPE = "recipes/demo.yaml"
# odd sizes on purpose: 5 prompts split 3 / 2, batches of 7 sequences and 5 pairs split 4 / 3 and 3 / 2;
# eval.batch_size=6 makes dpo sample 3 prompts per call, so the pair limit (8) falls inside a chunk
STAGES = ["run.stages=[rsft, dpo]", "eval.batch_size=6", "rsft.init=base", "rsft.rounds=2",
          "rsft.prompts_per_round=5", "rsft.samples_per_prompt=4", "rsft.max_new_tokens=24", "rsft.min_reward=0",
          "rsft.batch_size=7", "rsft.epochs=1", "rsft.lr=3e-3", "rsft.keep_best=false", "dpo.pairs=task",
          "dpo.loss=dpo", "dpo.beta=0.5", "dpo.samples=2", "dpo.max_new_tokens=24", "dpo.max_prompts=12",
          "dpo.max_pairs=8", "dpo.batch_size=5", "dpo.max_steps=3", "dpo.lr=3e-3", "dpo.schedule=constant",
          "dpo.warmup=0", "dpo.save_every=0"]


def assert_weights_close(a_dir, b_dir, what: str) -> float:
    """Max abs difference of two saved models' weights; fails above 1e-4."""
    a, b = weights(a_dir), weights(b_dir)
    assert a.keys() == b.keys()
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert diff < 1e-4, f"{what}: weights differ by {diff}"
    assert any(not torch.equal(a[k], weights(b_dir.parent / "base")[k]) for k in a), f"{what}: nothing trained"
    return diff


@pytest.mark.slow
def test_two_processes_match_one_in_rsft_and_dpo_and_resume(tmp_path, tiny_overrides):
    one, two = tmp_path / "one", tmp_path / "two"
    launch(["run", RECIPE, "--out", str(one), *tiny_overrides, *STAGES], 1)
    # two ranks: one rsft round, marked unfinished (as if killed), then `run --resume` finishes rsft from its
    # round-1 checkpoint and runs dpo for 2 steps; a second resume (pairs reread) takes dpo to step 3
    launch(["rsft", RECIPE, "--out", str(two), *tiny_overrides, *STAGES, "rsft.rounds=1"], 2)
    (two / "rsft" / "complete.json").unlink()
    launch(["run", RECIPE, "--out", str(two), "--resume", *tiny_overrides, *STAGES, "dpo.max_steps=2"], 2)
    (two / "dpo" / "complete.json").unlink()
    launch(["dpo", RECIPE, "--out", str(two), "--resume", *tiny_overrides, *STAGES], 2)

    for stage in ("rsft", "dpo"):
        print(f"{stage}: max |w2 - w1| = {assert_weights_close(one / stage, two / stage, stage):.2e}")
    ra, rb = metrics(one / "rsft"), metrics(two / "rsft")
    assert [r["step"] for r in ra] == [r["step"] for r in rb] == [1, 2]
    for a, b in zip(ra, rb):  # the same samples were drawn, kept and trained on
        for key in ("rsft/kept", "rsft/pass_rate", "rsft/duplicates", "rsft/solved_frac", "steps", "val/accuracy"):
            assert b[key] == a[key], (key, a["step"])
        assert a["rsft/kept"] > 0 and b["loss"] == pytest.approx(a["loss"], abs=1e-4)
        assert "dist/param_checksum" in b
    for r in (1, 2):
        data = [(two if i else one) / "rsft" / "data" / f"round-{r:03d}.jsonl" for i in (0, 1)]
        assert data[0].read_text() == data[1].read_text()
    assert read_pairs(two / "dpo" / "pairs.jsonl") == read_pairs(one / "dpo" / "pairs.jsonl")
    assert len(read_pairs(one / "dpo" / "pairs.jsonl")) == 8
    da, db = metrics(one / "dpo"), metrics(two / "dpo")
    assert [r["step"] for r in da] == [r["step"] for r in db] == [1, 2, 3]
    for a, b in zip(da, db):
        for key in ("loss", "pref/margin", "pref/accuracy", "grad_norm"):
            assert b[key] == pytest.approx(a[key], abs=1e-4), (key, a["step"])
        assert "dist/param_checksum" in b
    assert da[0]["loss"] == pytest.approx(0.6931, abs=1e-3)  # policy = reference at step 1
    assert json.loads((two / "dpo" / "complete.json").read_text())["steps"] == 3


def test_contiguous_shares_cover_every_item_once_in_rank_order():
    for n in range(0, 12):
        for world in (1, 2, 3, 8):
            parts = [contiguous_share(n, r, world) for r in range(world)]
            assert [i for p in parts for i in range(n)[p]] == list(range(n))
            sizes = [p.stop - p.start for p in parts]
            assert max(sizes) - min(sizes) <= 1


def test_strided_shares_partition_the_batch_or_give_a_zero_weight_item():
    batch = [10, 11, 12, 13, 14]
    shares = [strided_share(batch, r, 2) for r in range(2)]
    assert shares == [([10, 12, 14], 1.0), ([11, 13], 1.0)]
    assert strided_share(batch, 0, 1) == (batch, 1.0)
    assert [strided_share([10, 11], r, 3) for r in range(3)] == [([10], 1.0), ([11], 1.0), ([10], 0.0)]


def test_merged_rank_selections_equal_the_single_process_selection():
    texts = ["a", "a ", "b", "c", None, "d", "e", "e", "f", "g", "h", "i"]  # 4 prompts × 3 samples
    scores = [1, 1, 0, 1, 1, 0.5, 1, 1, 1, 0, 0, 0]
    whole = select_completions(texts, scores, k=3, keep_per_prompt=2, min_reward=1)
    for cut in (0, 1, 3, 4):  # rank 0 takes prompts [0, cut), rank 1 the rest
        parts = [(0, select_completions(texts[: cut * 3], scores[: cut * 3], 3, 2, 1)),
                 (cut, select_completions(texts[cut * 3 :], scores[cut * 3 :], 3, 2, 1))]
        assert merge_selections(parts) == whole
    assert whole == Selection([(0, "a"), (1, "c"), (2, "e"), (2, "f")], 6, 2, 3)

