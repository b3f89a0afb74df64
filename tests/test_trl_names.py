"""TRL config names in a recipe point at their recipe keys; typos get the closest key; the table cannot rot."""

import pytest

from coldstart.config import TRL_NAMES, ConfigError, load_recipe
from coldstart.tools.reference import sections


def error_line(override: str) -> str:
    with pytest.raises(ConfigError) as e:
        load_recipe(None, [override])
    lines = str(e.value).splitlines()
    assert len(lines) == 2, lines
    return lines[1]


@pytest.mark.parametrize("name, key", [
    ("num_generations", "rl.group_size"),
    ("beta", "rl.kl_coef"),
    ("epsilon_high", "rl.eps_high"),
    ("max_completion_length", "rl.max_new_tokens"),
    ("num_iterations", "rl.epochs"),
    ("mask_truncated_completions", "rl.overlong_filter"),
])
def test_a_trl_name_in_rl_names_its_key(name, key):
    line = error_line(f"rl.{name}=1")
    assert line.startswith(f"  rl.{name}: unknown key; TRL's {name} is {key} (")
    assert TRL_NAMES[name][1] in line


def test_a_trl_name_elsewhere_points_at_the_right_section():
    assert error_line("report_to=[wandb]").startswith("  report_to: unknown key; TRL's report_to is run.log_to (")
    assert "TRL's num_generations is rl.group_size (" in error_line("sft.num_generations=4")
    assert "TRL's learning_rate is dpo.lr (" in error_line("dpo.learning_rate=1e-5")  # the key of its own section
    assert "TRL's beta is rl.kl_coef or dpo.beta (" in error_line("beta=0.1")  # top level: every key
    assert "TRL's use_vllm has no recipe key (" in error_line("rl.use_vllm=true")


def test_a_typo_gets_the_closest_key_of_its_section():
    assert error_line("rl.group_sise=4") == "  rl.group_sise: unknown key; did you mean rl.group_size?"
    assert error_line("rl.pad.rhoo=1") == "  rl.pad.rhoo: unknown key; did you mean rl.pad.rho?"
    assert error_line("rl.rewards=[{name: task, weigth: 2}]").endswith("did you mean rl.rewards.0.weight?")
    assert error_line("rll.steps=3") == "  rll: unknown key; did you mean rl?"
    assert error_line("rl.zzzz=1") == "  rl.zzzz: unknown key"  # nothing close: no hint
    assert error_line("sft.kl_coef=0.1") == "  sft.kl_coef: unknown key; did you mean rl.kl_coef?"  # elsewhere


def test_every_key_in_the_table_exists():
    keys = {f"{prefix}.{name}" for prefix, model in sections() for name in model.model_fields}
    targets = {k for keys_, _ in TRL_NAMES.values() if keys_ for k in keys_.split(", ")}
    assert targets <= keys, f"TRL_NAMES names keys the recipe does not have: {targets - keys}"
    assert all(note for _, note in TRL_NAMES.values())
