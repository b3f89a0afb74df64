"""The recipe reference generated from the schema, and the README block that must equal it."""

from pathlib import Path

import pytest

from coldstart.config import Recipe
from coldstart.tools.reference import block_of, main, recipe_reference, rows, sections, trl_table

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_block_is_the_generated_reference():
    assert block_of(README.read_text()) == recipe_reference().strip(), (
        "README.md's recipe reference is out of date: python -m coldstart.tools.reference --write README.md")


def test_every_section_and_field_is_documented():
    found = dict(sections())
    top = set(Recipe.model_fields)
    assert top <= set(found) and {"rl.pad", "rl.prefilter", "model.lora", "rl.rewards[]"} <= set(found)
    missing = [f"{prefix}.{key}" for prefix, model in found.items() for key, _, _, desc in rows(prefix, model)
               if not desc]
    assert not missing, f"add a trailing `# comment` to these fields in coldstart/config.py: {missing}"
    ref = recipe_reference()
    for prefix, model in found.items():
        assert f"#### `{prefix}`" in ref
        for key in model.model_fields:
            assert f"| `{key}` |" in ref


def test_types_defaults_and_multiline_comments_come_from_the_source():
    table = {k: (t, d, desc) for k, t, d, desc in rows("rl", dict(sections())["rl"])}
    assert table["filter"][0] == "str" and table["filter"][1] == "none"  # a registry key or package.module:name
    assert table["filter"][2].startswith("none | dynamic (DAPO")  # a comment block above the field, joined
    assert table["prefilter"][1] == "null" and table["pad"][1] == "(section below)"
    run = {k: (t, d, desc) for k, t, d, desc in rows("run", dict(sections())["run"])}
    assert run["stages"][1].startswith("[sft, rl") and run["log_to"][1] == "[]"


def test_write_and_check(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- recipe-reference:begin -->\nstale\n<!-- recipe-reference:end -->\nmid\n"
                      "<!-- trl-names:begin -->\nstale-trl\n<!-- trl-names:end -->\nafter\n")
    assert main(["--check", str(readme)]) == 1
    assert main(["--write", str(readme)]) == 0
    assert main(["--check", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("after\n") and "stale" not in text
    assert "\nmid\n" in text and block_of(text, "trl-names") == trl_table().strip()
    readme.write_text(text.replace("| `num_generations` |", "| `num_gens` |"))
    assert main(["--check", str(readme)]) == 1
    assert "out of date (trl-names)" in capsys.readouterr().err.splitlines()[-1]
    readme.write_text("no markers")
    with pytest.raises(ValueError, match=r"README\.md: needs exactly one"):
        main(["--write", str(readme)])


def test_readme_trl_table_is_generated_from_trl_names():
    assert block_of(README.read_text(), "trl-names") == trl_table().strip(), (
        "README.md's TRL table is out of date: python -m coldstart.tools.reference --write README.md")
    assert "| `num_generations` | `rl.group_size` |" in trl_table()
