import json
import math

import pytest
import torch

from coldstart.algorithms.preference import dpo_loss, simpo_loss
from coldstart.cli import main
from coldstart.config import load_recipe
from coldstart.dpo import Pair, build_pairs, completion_logps, pairs_from_samples, read_pairs
from coldstart.models import build_char_tokenizer, build_tiny_model
from coldstart.tasks import build_task
from coldstart.types import Example


def _nls(x: float) -> float:  # −log σ(x)
    return math.log1p(math.exp(-x))


def test_dpo_loss_hand_computed():
    chosen, rejected = torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -1.0])
    ref_c, ref_r = torch.tensor([-1.5, -2.0]), torch.tensor([-1.5, -2.0])
    lens = torch.tensor([3, 3])
    loss, m = dpo_loss(chosen, rejected, lens, lens, ref_chosen_logp=ref_c, ref_rejected_logp=ref_r, beta=0.5)
    # rewards: chosen 0.5·0.5 = 0.25, 0.5·(−1) = −0.5; rejected 0.5·(−0.5) = −0.25, 0.5·1 = 0.5 → margins 0.5, −1
    assert float(loss) == pytest.approx((_nls(0.5) + _nls(-1.0)) / 2, abs=1e-6)
    assert m["pref/accuracy"] == 0.5
    assert m["pref/margin"] == pytest.approx(-0.25)
    assert m["pref/chosen_reward"] == pytest.approx(-0.125)


def test_dpo_loss_gradient_raises_chosen_and_needs_reference():
    chosen = torch.tensor([-2.0], requires_grad=True)
    rejected = torch.tensor([-2.0], requires_grad=True)
    one = torch.tensor([1])
    loss, _ = dpo_loss(chosen, rejected, one, one, ref_chosen_logp=torch.tensor([-2.0]),
                       ref_rejected_logp=torch.tensor([-2.0]), beta=1.0)
    loss.backward()
    assert float(loss.detach()) == pytest.approx(math.log(2))
    assert float(chosen.grad) == pytest.approx(-0.5) and float(rejected.grad) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="reference"):
        dpo_loss(chosen, rejected, one, one)


def test_simpo_loss_hand_computed():
    # chosen −4 over 4 tokens → −1; rejected −3 over 1 token → −3; β = 2: rewards −2, −6; margin 4 − γ(1) = 3
    loss, m = simpo_loss(torch.tensor([-4.0]), torch.tensor([-3.0]), torch.tensor([4]), torch.tensor([1]),
                         beta=2.0, gamma=1.0)
    assert float(loss) == pytest.approx(_nls(3.0), abs=1e-6)
    assert m["pref/accuracy"] == 1.0 and m["pref/margin"] == pytest.approx(4.0)
    # the reference log-probs are ignored: same value with them
    loss2, _ = simpo_loss(torch.tensor([-4.0]), torch.tensor([-3.0]), torch.tensor([4]), torch.tensor([1]),
                          ref_chosen_logp=torch.tensor([0.0]), ref_rejected_logp=torch.tensor([9.0]),
                          beta=2.0, gamma=1.0)
    assert float(loss2) == float(loss)


def test_read_pairs_errors_name_file_and_line(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"prompt": "1+1", "chosen": "a", "rejected": "b"}) + "\n{oops\n")
    with pytest.raises(ValueError, match=r"pairs\.jsonl:2: not valid JSON"):
        read_pairs(path)
    path.write_text(json.dumps({"prompt": "1+1", "chosen": "a"}) + "\n")
    with pytest.raises(ValueError, match=r"pairs\.jsonl:1: .*rejected"):
        read_pairs(path)
    path.write_text(json.dumps({"prompt": "1+1", "chosen": "a", "rejected": "b"}) + "\n\n")
    assert read_pairs(path) == [Pair("1+1", "a", "b")]


def test_pairs_from_samples_uses_the_verifier():
    task = build_task("arithmetic", {"digits": 1})
    exs = [Example("2+3", "5", "2+3=5"), Example("1+1", "2", "1+1=2")]
    texts = ["<answer>6</answer>", "<answer>5</answer>", "<answer>2</answer>", "<answer>2</answer>"]
    pairs = pairs_from_samples(exs, texts, 2, task.verify, gold=False)
    assert pairs == [Pair("2+3", "<answer>5</answer>", "<answer>6</answer>")]  # 1+1 has no wrong sample
    gold = pairs_from_samples(exs, texts, 2, task.verify, gold=True)
    assert gold == [Pair("2+3", "<think>2+3=5</think><answer>5</answer>", "<answer>6</answer>")]


def test_completion_logps_counts_completion_tokens_only():
    tok = build_char_tokenizer()
    model = build_tiny_model(len(tok), hidden_size=32, layers=1, heads=2, max_len=64, pad_id=tok.pad_token_id,
                             bos_id=tok.bos_token_id, eos_id=tok.eos_token_id, seed=0).eval()
    prompts, comps = [[10, 11, 12], [13]], [[20, 21], [22, 23, 24, 25]]
    with torch.no_grad():
        logp, lengths = completion_logps(model, prompts, comps, tok.pad_token_id, "cpu")
        for i in range(2):  # unpadded, one row at a time
            ids = torch.tensor([prompts[i] + comps[i]])
            lp = model(input_ids=ids).logits[0, :-1].log_softmax(-1).gather(-1, ids[0, 1:, None])[:, 0]
            assert float(logp[i]) == pytest.approx(float(lp[len(prompts[i]) - 1 :].sum()), abs=1e-4)
    assert lengths.tolist() == [2, 4]


def test_budget_splits_sft_traces_and_pairs():
    r = load_recipe(None, ["dpo.budget=50", "dpo.sft_fraction=0.2", "run.stages=[sft, dpo, eval]"])
    assert (r.sft.traces, r.dpo.max_pairs, r.run.stages) == (10, 40, ["sft", "dpo", "eval"])
    r = load_recipe(None, ["dpo.budget=50", "dpo.sft_fraction=0", "run.stages=[sft, dpo, eval]"])
    assert (r.dpo.max_pairs, r.run.stages) == (50, ["dpo", "eval"])


DPO_TINY = ["dpo.max_steps=3", "dpo.batch_size=4", "dpo.samples=4", "dpo.max_new_tokens=40", "dpo.save_every=2",
            "eval.samples=0"]


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_dpo_stage_from_file_pairs_and_resume(tmp_path, tiny_overrides):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"{a}+1", "chosen": f"<answer>{a + 1}</answer>",
                                         "rejected": f"<answer>{a}</answer>"}) + "\n" for a in range(10)))
    common = [str(_recipe(tmp_path)), *tiny_overrides, *DPO_TINY, f"dpo.pairs={pairs}", "run.stages=[dpo]",
              "dpo.loss=dpo", "dpo.lr=1e-2", "dpo.max_steps=4",
              "dpo.batch_size=10", "dpo.schedule=constant", "dpo.warmup=0"]  # full batch: the loss must fall
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), *common]) == 0
    rows = _rows(out / "dpo" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)  # policy = reference at step 1
    assert rows[-1]["loss"] < rows[0]["loss"] and rows[-1]["pref/margin"] > 0  # chosen gained on rejected
    assert (out / "dpo" / "complete.json").exists() and (out / "dpo" / "model.safetensors").exists()
    # killed after step 2 (simulated: a run of 2 steps whose finished marker is removed), then resumed
    out2 = tmp_path / "run2"
    assert main(["dpo", "--out", str(out2), *common, "dpo.max_steps=2", "dpo.save_every=1"]) == 0
    (out2 / "dpo" / "complete.json").unlink()
    assert main(["dpo", "--out", str(out2), *common, "--resume"]) == 0
    rows2 = _rows(out2 / "dpo" / "metrics.jsonl")
    assert [r["step"] for r in rows2] == [1, 2, 3, 4]


def test_dpo_stage_bad_pairs_file_exits_2(tmp_path, tiny_overrides, capsys):
    pairs = tmp_path / "bad.jsonl"
    pairs.write_text('{"prompt": "1+1", "chosen": "2"}\n')
    rc = main(["dpo", str(_recipe(tmp_path)), "--out", str(tmp_path / "r"), *tiny_overrides, f"dpo.pairs={pairs}"])
    assert rc == 2
    assert "bad.jsonl:1" in capsys.readouterr().err.replace("\n", "")


def _recipe(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("run: {seed: 0}\n")
    return path


def test_sft_then_dpo_from_rollouts_and_simpo(tmp_path, tiny_overrides):
    out = tmp_path / "run"
    # 1-digit sums after a short SFT: the model is right on some samples and wrong on others
    args = ["run", str(_recipe(tmp_path)), "--out", str(out), *tiny_overrides, *DPO_TINY,
            "task.options={digits: 1, ops: '+'}", "task.train_size=60", "task.val_size=2", "task.test_size=2",
            "sft.traces=60", "sft.max_steps=150", "sft.lr=1e-2", "run.stages=[sft, dpo]", "dpo.pairs=rollouts",
            "dpo.loss=simpo", "dpo.beta=2.0", "dpo.max_prompts=24", "dpo.samples=6"]
    assert main(args) == 0
    pairs = read_pairs(out / "dpo" / "pairs.jsonl")
    task = build_task("arithmetic", {"digits": 1, "ops": "+"})
    for p in pairs:
        a, b = map(int, p.prompt.split("+"))
        ex = Example(p.prompt, str(a + b))
        assert task.verify(ex, p.chosen) == 1.0 and task.verify(ex, p.rejected) == 0.0
    assert pairs
    assert json.loads((out / "dpo" / "complete.json").read_text())["pairs"] == len(pairs)


def test_built_pairs_do_not_depend_on_the_sampling_chunks(tiny_overrides):
    """Per-prompt seeds: the first `limit` pairs are the same whatever the chunk size (or process count)."""
    tok = build_char_tokenizer()
    model = build_tiny_model(len(tok), hidden_size=32, layers=1, heads=2, max_len=96, pad_id=tok.pad_token_id,
                             bos_id=tok.bos_token_id, eos_id=tok.eos_token_id, seed=0)
    task = build_task("arithmetic", {"digits": 1, "ops": "+"})
    pool = task.examples("train", 12, 0)
    found = []
    for batch in (2, 6, 64):  # 1, 3 or all 12 prompts per sampling call
        recipe = load_recipe(None, [*tiny_overrides, "dpo.pairs=task", "dpo.samples=2", "dpo.max_new_tokens=12",
                                    f"eval.batch_size={batch}"])
        found.append(build_pairs(model, tok, task, pool, recipe, limit=5))
    assert len(found[0]) == 5 and found[0] == found[1] == found[2]
    recipe = load_recipe(None, [*tiny_overrides, "dpo.pairs=task", "dpo.samples=2", "dpo.max_new_tokens=12",
                                "run.seed=1"])
    assert build_pairs(model, tok, task, pool, recipe, limit=5) != found[0]  # the seed drives the samples
