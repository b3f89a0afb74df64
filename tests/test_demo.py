"""The README's main job: `coldstart demo --quick` must show the cold-start ordering (a few minutes on CPU)."""

import json

import pytest

from coldstart.cli import main
from coldstart.tools.demo import conclusion


@pytest.mark.slow
def test_quick_demo_shows_cold_start_ordering(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    arms = results["arms"]
    assert set(arms) == {"base", "sft", "rl", "sft_rl", "sft_more"}
    for arm in arms.values():
        assert {"accuracy", "pass@k", "seconds", "zero_std_frac"} <= arm.keys()
    assert arms["sft_rl"]["accuracy"] > arms["sft"]["accuracy"]
    assert arms["sft_rl"]["accuracy"] > arms["rl"]["accuracy"]
    assert arms["rl"]["zero_std_frac"] >= 0.9
    assert (out / "demo.png").stat().st_size > 10_000


def test_conclusion_is_computed_from_the_numbers():
    arms = {"base": {"accuracy": 0.0}, "sft": {"accuracy": 0.5}, "sft_more": {"accuracy": 0.55},
            "rl": {"accuracy": 0.0, "zero_std_frac": 1.0}, "sft_rl": {"accuracy": 0.8, "zero_std_frac": 0.4}}
    text = conclusion(arms)
    assert "80.0%" in text and "+30.0 points over SFT alone" in text and "100% of its groups" in text
    arms["sft_rl"]["accuracy"] = 0.4
    assert "does not show the cold-start effect" in conclusion(arms)
