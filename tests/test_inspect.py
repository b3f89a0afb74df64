"""coldstart inspect: what RL would see from its starting model, and the recipe's agreement checks."""

import json

from coldstart.cli import main
from coldstart.models import CHAT_TEMPLATE, load_tokenizer


def _inspect(out, overrides, *args):
    assert main(["inspect", "recipes/demo.yaml", "--out", str(out), *overrides, *args]) == 0
    return json.loads((out / "inspect.json").read_text())


def test_untrained_model_all_zero_groups_say_run_sft_first(tmp_path, tiny_overrides):
    report = _inspect(tmp_path, tiny_overrides, "--prompts", "6", "--k", "3")
    g = report["groups"]
    assert report["start_is_base"] and report["start"] == str(tmp_path / "base")
    assert (report["prompts"], report["k"], g["groups"]) == (6, 3, 6)
    assert sum(g["histogram"].values()) == 6 and list(g["histogram"]) == ["0", "1", "2", "3"]
    assert g["all0_frac"] == 1.0 and g["zero_std_frac"] == 1.0
    assert report["gold"]["verifier_fail_frac"] == 0 and report["gold"]["reward_on_targets"] == {"task": 1.0}
    lens = report["lengths"]
    assert 0 < lens["prompt_tokens"]["p50"] <= lens["prompt_tokens"]["max"] and lens["over_max_len_frac"] == 0
    assert lens["response_tokens"]["max"] <= 40
    errors = [v["message"] for v in report["verdict"] if v["level"] == "error"]
    assert any("100% of groups are all-0" in m and "run SFT first" in m for m in errors)


def test_format_reward_for_another_tag_and_too_short_context_are_errors(tmp_path, tiny_overrides):
    report = _inspect(tmp_path, [*tiny_overrides, "model.max_len=30",
                                 "rl.rewards=[{name: task}, {name: format, options: {tag: plan}}]"],
                      "--prompts", "4", "--k", "2")
    assert report["gold"]["reward_on_targets"] == {"task": 1.0, "format": 0.0}
    messages = " ".join(v["message"] for v in report["verdict"] if v["level"] == "error")
    assert "reward part 'format' gives the SFT targets only 0.00" in messages
    need = report["lengths"]["prompt_tokens"]["max"] + 40
    assert report["lengths"]["over_max_len_frac"] == 1.0 and f"raise model.max_len to {need}" in messages


def test_template_that_opens_think(tmp_path, tiny_overrides):
    """A generation prompt that writes <think> (Qwen3-Thinking, R1-distill): coldstart's format reward and the
    SFT target account for it; a user reward that does not is an error whose advice passes the check."""
    builtin = [*tiny_overrides, "rl.rewards=[{name: task}, {name: format}]"]
    _inspect(tmp_path, builtin, "--prompts", "2", "--k", "2")  # builds DIR/base
    tok = load_tokenizer(tmp_path / "base")
    tok.chat_template = CHAT_TEMPLATE.replace("<|assistant|>{% endif %}", "<|assistant|><think>{% endif %}")
    tok.save_pretrained(tmp_path / "base")
    report = _inspect(tmp_path, builtin, "--prompts", "2", "--k", "2")
    fmt = report["format"]
    assert fmt["template_opens_tag"] and fmt["completion_prefix"] == "<think>"
    assert not fmt["sft_continuation"].startswith("<think>") and fmt["reward_on_continuation"]["format"] == 1.0
    assert not any("already writes" in v["message"] for v in report["verdict"])

    user = [*tiny_overrides, "rl.rewards=[{name: task}, {name: 'tests.fixtures.rewards:think_format'}]"]
    report = _inspect(tmp_path, user, "--prompts", "2", "--k", "2")
    errors = [v["message"] for v in report["verdict"] if v["level"] == "error"]
    assert any("already writes '<think>'" in m and "completion_prefix" in m and "model.chat_template" in m
               for m in errors), errors
    (tmp_path / "plain.jinja").write_text(CHAT_TEMPLATE)  # the advice: a template that opens nothing
    report = _inspect(tmp_path, [*user, f"model.chat_template={tmp_path / 'plain.jinja'}"], "--prompts", "2",
                      "--k", "2")
    assert not report["format"]["template_opens_tag"]
    assert report["format"]["reward_on_continuation"]["tests.fixtures.rewards:think_format"] == 1.0
    assert not any("already writes" in v["message"] for v in report["verdict"])


def test_inspect_starts_from_the_finished_sft_stage(tmp_path, tiny_overrides):
    assert main(["sft", "recipes/demo.yaml", "--out", str(tmp_path), *tiny_overrides]) == 0
    report = _inspect(tmp_path, tiny_overrides, "--prompts", "3", "--k", "2")
    assert report["start"] == str(tmp_path / "sft") and not report["start_is_base"]
    assert not any("run SFT first" in v["message"] for v in report["verdict"])


def test_inspect_bad_input_exits_2(tmp_path, tiny_overrides, capsys):
    assert main(["inspect", "recipes/demo.yaml", "--out", str(tmp_path), *tiny_overrides, "--prompts", "0"]) == 2
    assert main(["inspect", "recipes/nope.yaml", "--out", str(tmp_path)]) == 2
    assert "recipes/nope.yaml" in capsys.readouterr().err
