import pytest

from coldstart.config import ConfigError, load_recipe, save_recipe
from coldstart.tasks import build_task


def write(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


def test_defaults_and_overrides(tmp_path):
    p = write(tmp_path, "rl:\n  steps: 7\n")
    r = load_recipe(p, ["rl.group_size=4", "sft.traces=0.5", "task.options.digits=2"])
    assert r.rl.steps == 7 and r.rl.group_size == 4
    assert r.sft.traces == 0.5 and isinstance(r.sft.traces, float)
    assert r.task.options == {"digits": 2}


def test_unknown_key_names_key_and_file(tmp_path):
    p = write(tmp_path, "rl:\n  stepz: 7\n")
    with pytest.raises(ConfigError) as e:
        load_recipe(p)
    assert "rl.stepz" in str(e.value) and "unknown key" in str(e.value) and str(p) in str(e.value)


def test_wrong_type_names_key_and_expected(tmp_path):
    p = write(tmp_path, "sft:\n  batch_size: lots\n")
    with pytest.raises(ConfigError) as e:
        load_recipe(p)
    msg = str(e.value)
    assert "sft.batch_size" in msg and "integer" in msg and "'lots'" in msg


def test_unknown_section_and_bad_override(tmp_path):
    with pytest.raises(ConfigError, match="trainer: unknown key"):
        load_recipe(write(tmp_path, "trainer: {}\n"))
    with pytest.raises(ConfigError, match="key=value"):
        load_recipe(None, ["rl.steps"])
    with pytest.raises(ConfigError, match=r"rl\.advantage"):
        load_recipe(None, ["rl.advantage=ppo2"])


def test_missing_and_malformed_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_recipe(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(write(tmp_path, "rl: [unclosed\n"))
    with pytest.raises(ConfigError, match="mapping"):
        load_recipe(write(tmp_path, "- a\n- b\n"))


def test_saved_recipe_round_trips(tmp_path):
    r = load_recipe(None, ["rl.steps=3", "rl.rewards=[{name: accuracy, weight: 2}]"])
    save_recipe(r, tmp_path / "config.yaml")
    again = load_recipe(tmp_path / "config.yaml")
    assert again == r and again.rl.rewards[0].weight == 2


def test_demo_recipe_validates():
    r = load_recipe("recipes/demo.yaml")
    assert r.model.init == "tiny" and r.task.name == "arithmetic"


def test_every_shipped_recipe_validates():
    from pathlib import Path

    paths = sorted(Path("recipes").glob("*.yaml")) + sorted(Path("recipes/real").glob("*.yaml"))
    for path in paths:
        recipe = load_recipe(path)
        if recipe.model.init == "tiny":  # the embedded tasks: their options are checked when the task is built
            build_task(recipe.task.name, recipe.task.options, recipe.run.seed).examples("val", 2, 0)

