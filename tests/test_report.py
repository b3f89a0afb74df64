"""coldstart report (HTML page, plots, alarms) and the metric sinks (TensorBoard, W&B) it shares rows with."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
from PIL import Image

from coldstart.cli import main
from coldstart.infra.runtime import MetricsLog, progress
from coldstart.tools.report import alarms, build_report
from tests.conftest import TINY


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A real tiny sft → rl → eval run with the TensorBoard sink on."""
    out = tmp_path_factory.mktemp("report") / "run"
    assert main(["run", "recipes/demo.yaml", "--out", str(out), *TINY, "sft.eval_every=4", "rl.eval_every=3",
                 "rl.kl_coef=0.01", "run.log_to=[tensorboard]"]) == 0
    return out


def test_report_page_has_plots_alarms_eval_and_samples(run_dir):
    assert main(["report", str(run_dir)]) == 0
    page = (run_dir / "report.html").read_text()
    assert page.count('<img alt="') >= 8 and page.count("data:image/png;base64,") == page.count("<img")
    for title in ("reward", "val accuracy", "SFT loss", "entropy", "KL to the reference",
                  "zero-std share of groups", "clip fractions"):
        assert f'alt="{title}"' in page, title
    # an untrained tiny model: every group flat, which the alarms must say
    assert "had reward std 0 on average" in page
    evals = json.loads((run_dir / "eval.json").read_text())
    assert set(evals) == {"base", "sft", "rl"} and "reward" in evals["rl"]["examples"][0]
    assert "<h3>samples: rl</h3>" in page and "pass@1" in page


def _chromium():
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        if os.environ.get("COLDSTART_REQUIRE_CHROMIUM") == "1":
            pytest.fail("COLDSTART_REQUIRE_CHROMIUM=1 but no chromium on PATH")
        pytest.skip("chromium not installed")
    return exe


def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    exe = _chromium()
    page = build_report(run_dir)
    flags = [exe, "--headless", "--disable-gpu", "--no-sandbox", "--disable-dev-shm-usage",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*flags, "--virtual-time-budget=5000", "--dump-dom", page.as_uri()], capture_output=True,
                         text=True, timeout=120).stdout
    n = page.read_text().count("<img")
    assert f'data-images="{n}/{n}"' in dom  # set by the page's load handler: images with naturalWidth > 0
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, "--window-size=1200,1600", f"--screenshot={shot}", page.as_uri()], capture_output=True,
                   timeout=120, cwd=tmp_path)
    img = Image.open(shot).convert("RGB")
    colours = img.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # plots, text and tables, not a blank page


def test_report_copes_with_missing_stages_keys_and_nones(tmp_path):
    rl = tmp_path / "rl"
    rl.mkdir()
    rows = [{"step": i, "reward/mean": 0.1 * i, "kl": None, "entropy": 2.0 if i < 8 else 0.1,
             "length/truncated_frac": 0.5, "logprob_gap": 0.001 if i < 10 else 0.2} for i in range(1, 21)]
    (rl / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 21, "rew')
    page = build_report(tmp_path).read_text()
    assert 'alt="reward"' in page and 'alt="KL to the reference"' not in page and 'alt="SFT loss"' not in page
    assert "entropy collapse" in page and "truncated at max_new_tokens" in page and "log-prob gap grew" in page
    assert "evaluation (test split)" not in page


def test_report_errors_name_the_folder(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert main(["report", str(tmp_path)]) == 2
    assert str(tmp_path) in capsys.readouterr().err.replace("\n", "")


def test_alarms_quiet_on_a_healthy_run():
    rows = [{"step": i, "entropy": 1.0 - 0.01 * i, "groups/zero_std_frac": 0.3, "length/truncated_frac": 0.05,
             "logprob_gap": 0.002, "reward/errors": 0} for i in range(1, 41)]
    assert alarms({"rl": rows}) == []
    assert "reward scores failed" in alarms({"rl": [{"step": 1, "reward/errors": 3}]})[0]
    mostly = alarms({"rl": [{"step": i, "reward/errors": 12, "reward/failed/my:fn": 0.75} for i in range(3)]})
    assert any("reward 'my:fn' failed on 75% of the samples" in a for a in mostly)


def test_tensorboard_sink_holds_the_metrics_rows(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for stage, key in (("rl", "reward/mean"), ("rl", "entropy"), ("sft", "loss")):
        acc = EventAccumulator(str(run_dir / stage / "tb"))
        acc.Reload()
        rows = [json.loads(x) for x in (run_dir / stage / "metrics.jsonl").read_text().splitlines()]
        events = acc.Scalars(key)
        assert [e.step for e in events] == [r["step"] for r in rows]
        assert [e.value for e in events] == pytest.approx([r[key] for r in rows], rel=1e-6)


def test_unknown_sink_in_stage_config_is_an_error(tmp_path):
    (tmp_path / "config.yaml").write_text("run: {log_to: [mlflow]}\n")
    with pytest.raises(ValueError, match=r"config.yaml: run.log_to: unknown sink"):
        MetricsLog(tmp_path / "metrics.jsonl")


def test_missing_wandb_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # what an environment without wandb looks like to import
    with pytest.raises(ValueError, match=r"pip install coldstart\[wandb\]"):
        MetricsLog(tmp_path / "metrics.jsonl", log_to=["wandb"])


@pytest.mark.slow
def test_wandb_sink_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    log = MetricsLog(tmp_path / "metrics.jsonl", log_to=["wandb"])
    log.write({"step": 1, "train_loss_xyz": 1.0, "kl": None})
    log.write({"step": 2, "train_loss_xyz": 0.5})
    log.close()
    files = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1
    # wandb-core writes the offline file from its own process; on a loaded machine the records can land a
    # moment after finish() returns (two clean-clone CI runs once saw only the header), so wait for them.
    deadline = time.monotonic() + 30
    while files[0].read_bytes().count(b"train_loss_xyz") < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert files[0].read_bytes().count(b"train_loss_xyz") >= 2


def test_progress_bar_shows_an_eta():
    from rich.progress import TimeRemainingColumn

    assert any(isinstance(c, TimeRemainingColumn) for c in progress(quiet=True).columns)


def test_tensorboard_resume_drops_steps_past_the_checkpoint(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = MetricsLog(tmp_path / "metrics.jsonl", log_to=["tensorboard"])
    for i in range(1, 6):  # a run killed after step 5, its last checkpoint at step 3
        log.write({"step": i, "x": float(i)})
    log.close()
    log = MetricsLog(tmp_path / "metrics.jsonl", resume_step=3, log_to=["tensorboard"])
    for i in range(4, 7):
        log.write({"step": i, "x": 10.0 * i})
    log.close()
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("x")] == [(1, 1), (2, 2), (3, 3), (4, 40), (5, 50), (6, 60)]


def test_stage_folders_are_found_in_pipeline_order_also_inside_demo_arms(tmp_path):
    from coldstart.tools.report import load_metrics

    for folder in ("rl", "sft", "sft_rl/rl", "sft_rl/sft", "rl_only/rl"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "metrics.jsonl").write_text('{"step": 1, "reward/mean": 0.5}\n')
    assert list(load_metrics(tmp_path)) == ["sft", "rl", "rl_only/rl", "sft_rl/sft", "sft_rl/rl"]
    assert 'alt="reward"' in build_report(tmp_path).read_text()


def test_eval_results_reach_the_sinks(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "eval" / "tb"))
    acc.Reload()
    results = json.loads((run_dir / "eval.json").read_text())
    for stage in ("base", "sft", "rl"):
        assert acc.Scalars(f"eval/{stage}/accuracy")[0].value == pytest.approx(results[stage]["accuracy"])


def test_plain_progress_lines_when_output_is_not_a_terminal(tmp_path, capsys):
    """Redirected to a file, a stage prints a line now and then instead of a bar that shows nothing."""
    from coldstart.infra.runtime import LineProgress

    assert isinstance(progress(quiet=False), LineProgress)  # pytest's stderr is not a terminal
    assert main(["sft", "recipes/demo.yaml", "--out", str(tmp_path), *[o for o in TINY if o != "run.quiet=true"],
                 "sft.max_steps=20"]) == 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("sft ")]
    steps = [int(ln.split()[1].split("/")[0]) for ln in lines]
    assert steps[0] == 1 and steps[-1] == 20 and 3 <= len(steps) <= 12, lines
    assert all("/20 · loss " in ln and ln.endswith(" s") for ln in lines)


def test_messages_keep_bracketed_text(capsys):
    from coldstart.infra.runtime import console

    console.print("error: pip install coldstart[wandb] and set rl.stages=[sft, rl]")
    assert "coldstart[wandb] and set rl.stages=[sft, rl]" in capsys.readouterr().err


def test_a_hub_id_without_network_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    assert main(["sft", "recipes/demo.yaml", "--out", str(tmp_path / "run"), "model.init=pretrained",
                 "model.path=Qwen/Qwen2.5-0.5B-Instruct"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert err[-1].startswith("error: model.path: the hub id 'Qwen/Qwen2.5-0.5B-Instruct' could not be loaded")
    assert "local folder" in err[-1] and not any("Traceback" in ln for ln in err)
