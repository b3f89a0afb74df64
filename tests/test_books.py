"""The stage books (coldstart/infra/books.py): sft, rsft, dpo and rl keep them alike. A NaN step is skipped and
counted and K in a row stop the stage with its last checkpoint intact; keep_best picks the exported model;
the best is kept by `val/accuracy`; state.json written before the record existed still resumes."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from coldstart.cli import main
from coldstart.infra.books import StageRun, StageState
from coldstart.infra.stage import Stage
from coldstart.models import build_char_tokenizer, build_tiny_model


def test_stage_state_reads_the_state_json_of_each_stage_before_the_record():
    sft = {"step": 8, "best": 0.5, "bad_evals": 1, "elapsed": 2.0, "traces": 32, "nonfinite_run": 0,
           "nonfinite_total": 1}
    assert StageState.from_dict(sft).to_dict() == sft
    dpo = StageState.from_dict({"step": 3, "best": None, "elapsed": 1.0, "pairs": 10})
    assert (dpo.step, dpo.bad_evals, dpo.counters) == (3, 0, {"pairs": 10})
    rsft = StageState.from_dict({"round": 2, "step": 2, "cursor": 16, "best": None, "elapsed": 3.0, "kept_total": 5})
    assert (rsft.step, rsft.counters) == (2, {"cursor": 16, "kept_total": 5})


def _stage(tmp_path, ckpt=None) -> Stage:
    tok = build_char_tokenizer()
    torch.manual_seed(0)
    model = build_tiny_model(len(tok), hidden_size=16, layers=1, heads=2, max_len=32)
    return Stage(tmp_path / "sft", torch.device("cpu"), None, tmp_path / "base", ckpt, tok, model)


def _nudge(model) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)


@pytest.mark.parametrize("keep_best", [True, False])
def test_books_save_cadence_best_and_export(tmp_path, keep_best):
    st = _stage(tmp_path)
    opt = torch.optim.AdamW(st.model.parameters(), lr=1e-3)
    books = StageRun("sft", st, StageState(counters={"traces": 4}), optimizer=opt, keep_best=keep_best,
                     save_every=2, max_nonfinite=2)
    weights = {}
    for acc in (0.5, 0.75, 0.5, 0.25, 0.75):  # best at step 2; step 5 only ties it
        _nudge(st.model)
        books.advance()
        books.track_best(acc)
        books.save_if_due(total=5)
        weights[books.state.step] = {k: v.clone() for k, v in st.model.state_dict().items()}
    assert books.state.best == 0.75
    assert sorted(p.name for p in (st.dir / "checkpoints").glob("step-*")) == ["step-000002", "step-000004"]
    best_state = json.loads((st.dir / "checkpoints" / "best" / "trainer_state" / "state.json").read_text())
    assert best_state["step"] == 2
    assert books.finish({"traces": 4}) == st.dir
    summary = json.loads((st.dir / "complete.json").read_text())
    assert summary["steps"] == 5 and summary["best_val_accuracy"] == 0.75 and summary["traces"] == 4
    exported = load_file(st.dir / "model.safetensors")
    want = weights[2 if keep_best else 5]
    assert all(torch.equal(exported[k], want[k]) for k in exported)
    # the last step was saved once by finish, and step checkpoints hold what resume restores
    resumed = StageRun("sft", _stage(tmp_path, ckpt=st.dir / "checkpoints" / "step-000005"), StageState(),
                       optimizer=torch.optim.AdamW(st.model.parameters(), lr=1e-3))
    assert (resumed.state.step, resumed.state.best, resumed.state.counters) == (5, 0.75, {"traces": 4})


def test_books_skip_and_count_nonfinite_steps_then_stop(tmp_path):
    books = StageRun("dpo", _stage(tmp_path), StageState(), max_nonfinite=2)
    assert books.skip_step(False) and books.nonfinite_total == 1
    books.advance()
    assert not books.skip_step(True)
    books.advance()
    books.save()
    assert books.skip_step(False)
    with pytest.raises(FloatingPointError, match=r"dpo: 2 steps in a row.*step 3.*step-000002"):
        books.skip_step(False)


def _pairs(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"{a}+1", "chosen": f"<answer>{a + 1}</answer>",
                                        "rejected": f"<answer>{a}</answer>"}) + "\n" for a in range(8)))
    return path


# lr 1e30: the first step is finite but throws the weights to ±1e30; every later loss is NaN
EXPLODING = {
    "sft": ["sft.lr=1e30", "sft.warmup=0", "sft.save_every=1"],
    "dpo": ["dpo.lr=1e30", "dpo.warmup=0", "dpo.save_every=1", "dpo.max_steps=8", "dpo.batch_size=2",
            "dpo.loss=simpo"],
    "rsft": ["rsft.lr=1e30", "rsft.rounds=1", "rsft.prompts_per_round=8", "rsft.samples_per_prompt=2",
             "rsft.keep_per_prompt=2", "rsft.min_reward=0", "rsft.batch_size=2", "rsft.epochs=1",
             "rsft.max_new_tokens=20"],
}


@pytest.mark.parametrize("stage", sorted(EXPLODING))
def test_every_stage_skips_nan_steps_and_stops_after_k_in_a_row(stage, tmp_path, tiny_overrides, capsys):
    out = tmp_path / "run"
    extra = [f"dpo.pairs={_pairs(tmp_path)}", "dpo.init=model"] if stage == "dpo" else []
    extra += ["rsft.init=model"] if stage == "rsft" else []
    code = main([stage, "recipes/demo.yaml", "--out", str(out), *tiny_overrides, *EXPLODING[stage], *extra,
                 "run.max_nonfinite_steps=3", "eval.samples=0"])
    err = capsys.readouterr().err.replace("\n", "")  # rich wraps long lines
    assert code == 3, err[-2000:]
    assert f"{stage}: 3 steps in a row had a NaN or inf loss or gradient" in err
    assert "non-finite loss or gradient; step skipped (1 in a row, 1 in all)" in err
    assert not (out / stage / "complete.json").exists()
    for ckpt in (out / stage / "checkpoints").glob("*"):  # nothing saved holds a NaN
        assert all(torch.isfinite(w).all() for w in load_file(str(ckpt / "model.safetensors")).values())


KEEP_BEST = {
    "sft": ["sft.eval_every=2", "sft.max_steps=6", "sft.save_every=0"],
    "dpo": ["dpo.eval_every=2", "dpo.max_steps=6", "dpo.save_every=0", "dpo.lr=1e-2", "dpo.batch_size=4",
            "dpo.init=model", "run.stages=[dpo]", "dpo.max_new_tokens=40"],
}


@pytest.mark.parametrize("stage", sorted(KEEP_BEST))
@pytest.mark.parametrize("keep_best", [True, False])
def test_keep_best_picks_the_exported_checkpoint(stage, keep_best, tmp_path, tiny_overrides):
    out = tmp_path / "run"
    extra = [f"dpo.pairs={_pairs(tmp_path)}"] if stage == "dpo" else []
    assert main([stage, "recipes/demo.yaml", "--out", str(out), *tiny_overrides, *KEEP_BEST[stage], *extra,
                 f"{stage}.keep_best={str(keep_best).lower()}", "eval.samples=0"]) == 0
    rows = [json.loads(line) for line in (out / stage / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "val/accuracy" in r] == [2, 4, 6]
    exported = load_file(out / stage / "model.safetensors")
    best = load_file(out / stage / "checkpoints" / "best" / "model.safetensors")
    last = load_file(out / stage / "checkpoints" / "step-000006" / "model.safetensors")
    assert not all(torch.equal(best[k], last[k]) for k in best)  # the test can tell them apart
    want = best if keep_best else last
    assert all(torch.equal(exported[k], want[k]) for k in exported)


def test_a_fresh_run_into_a_used_folder_exports_its_own_model(tmp_path, tiny_overrides):
    """#22 point 1: run 1 kept a best checkpoint at step 4; a fresh run 2 without evaluation must export its own
    last step, not run 1's best; and --resume after it resumes run 2 (its checkpoints only)."""
    base = [*tiny_overrides, "sft.save_every=4"]
    assert main(["sft", "recipes/demo.yaml", "--out", str(tmp_path), *base, "sft.eval_every=4"]) == 0
    assert (tmp_path / "sft" / "checkpoints" / "best").is_dir()
    assert main(["sft", "recipes/demo.yaml", "--out", str(tmp_path), *base, "sft.eval_every=0",
                 "sft.max_steps=12", "sft.lr=1e-2"]) == 0
    sft = tmp_path / "sft"
    assert not (sft / "checkpoints" / "best").exists() and (sft / "checkpoints.previous" / "best").is_dir()
    summary = json.loads((sft / "complete.json").read_text())
    assert summary["steps"] == 12
    exported = load_file(str(sft / "model.safetensors"))
    last = load_file(str(sft / "checkpoints" / "step-000012" / "model.safetensors"))
    assert all(torch.equal(exported[k], last[k]) for k in exported)
