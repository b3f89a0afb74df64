"""Fuzzing with hypothesis (bounded: a few hundred inputs per target, the file runs in well under a minute).

- data files of the `file` task: broken JSON, wrong types, missing fields, huge fields, non-UTF-8 bytes,
  deep nesting, empty files, JSON / JSONL / CSV / TSV / Parquet → the task loads, or a ValueError names
  the file; never another exception type;
- recipes (`load_recipe`): random YAML, wrong types, unknown keys, non-UTF-8, bad overrides → a Recipe or
  a ConfigError naming the file or the override;
- model outputs, pathological LaTeX included, into every reward and answer extractor → a float in the
  documented range (or the documented type), within ITEM_BOUND_S, never an exception.
"""

import json
import string
import time

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from coldstart.config import ConfigError, load_recipe
from coldstart.rewards import build_reward, extract_answer, extract_program, last_boxed, make_accuracy
from coldstart.rewards.basic import make_exact, make_format
from coldstart.tasks import arithmetic, countdown, files
from coldstart.types import Example

ITEM_BOUND_S = 2.5  # per call; the accuracy reward here has timeout_s=1, the file task verify the default 2
FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)

# ---------------------------------------------------------------------------------------------- model outputs
FRAGMENTS = ["\\frac{", "{", "}", "\\boxed{", "^{", "^", "_", "10", "2", "9", "0", "\\sqrt{", "\\sqrt[", "]", "[",
             "<answer>", "</answer>", "<think>", "</think>", "\\left(", "\\right)", "(", ")", "!", "=", "\\infty",
             "x", "\\pi", "e", ".", ",", "-", "+", "*", "**", "/", " ", "\\\\", "$", "\\text{", "\\{", "\\}",
             "\\cdot", "\\times", "1e9", "%", "\\%", "°", "\u2212", "\\int", "\\sum_{", "\\log", "\\sin", "&",
             "\\begin{pmatrix}", "\\end{pmatrix}", "\\fbox{", "```python\n", "```", "\n", "\\dfrac", "\\mathrm{",
             "\\lim_{", "\\to", "\\ne", "<", ">", "\\le", "\\cup", "i", "\\!", "\\,", "\x00", "\ud7ff", "🙂"]
LATEXISH = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.integers(0, 10**40).map(str)), max_size=60).map("".join)
COMPLETIONS = st.one_of(st.text(max_size=300), LATEXISH, LATEXISH.map(lambda s: f"<answer>{s}</answer>"),
                        LATEXISH.map(lambda s: f"<think>t</think>\\boxed{{{s}}}"))
NESTED = [
    "<answer>2^{2^{2^{100}}}</answer>", "<answer>10^{10^{10}}</answer>", "<answer>9^{9^{9^{9}}}</answer>",
    "\\boxed{10^{10^{10^{10}}}-10^{10^{10^{10}}}}", "<answer>(10^{100})!</answer>", "<answer>1e100000000</answer>",
    "<answer>x^{10^{100}}</answer>", "<answer>2**2**2**100</answer>", "<answer>100000!</answer>",
    "<answer>" + "\\frac{1}{" * 200 + "2" + "}" * 200 + "</answer>", "<answer>" + "{" * 5000 + "</answer>",
    "\\boxed{" * 2000, "\\boxed{" + "1" * 100_000, "<answer>" + "x^" * 500 + "2</answer>", "<answer>" * 3000,
    "a" * 200_000, "<answer>" + "(" * 3000 + "1" + ")" * 3000 + "</answer>", "<answer>e^{x^{x}}</answer>",
    "<answer>\\sqrt[10^{100}]{2}</answer>", "<answer>\\int_0^{10^{10}} e^{x^{x}} dx</answer>",
    "<answer>" + "9" * 5000 + "</answer>", "<answer>10^{-10^{10}}</answer>",
]


def _timed(fn, *args):
    start = time.monotonic()
    out = fn(*args)
    elapsed = time.monotonic() - start
    assert elapsed < ITEM_BOUND_S, f"{elapsed:.2f} s on {args!r:.200}"
    return out


def _with_examples(test):
    for text in NESTED:
        test = example(text)(test)
    return test


GOLDS = ["2", "\\frac{1}{2}", "10^{10^{10}}", "x+1", "yes", "\\{1,2\\}", "[0, 1)", "3.14", "-7", "1000"]
ACCURACY = make_accuracy(partial=0.1, timeout_s=1)
EXACT = make_exact(casefold=True)
FORMAT = [make_format(strict=True), make_format(tag="plan", strict=False)]
ARITH = arithmetic.build({"digits": 2})
ARITH_EXAMPLE = ARITH.examples("train", 1, 0)[0]
COUNTDOWN = countdown.build({"numbers": 3})
COUNTDOWN_EXAMPLE = COUNTDOWN.examples("train", 1, 0)[0]
FILE_TASK = files.FileTask(splits={"train": [Example("q", "\\frac{1}{2}")], "val": [], "test": []})


@_with_examples
@given(completion=COMPLETIONS)
@FUZZ
def test_rewards_and_extractors_never_raise_and_stay_in_range(completion):
    for gold in (GOLDS[0], GOLDS[2]):
        [score] = _timed(ACCURACY, ["q"], [completion], [gold])
        assert score in (0.0, 0.1, 1.0)
    [score] = _timed(EXACT, ["q"], [completion], ["new york"])
    assert score in (0.0, 1.0)
    for fmt in FORMAT:
        assert _timed(fmt, ["q"], [completion]) in ([0.0], [1.0])
    for task, ex in ((ARITH, ARITH_EXAMPLE), (COUNTDOWN, COUNTDOWN_EXAMPLE), (FILE_TASK, Example("q", "0.5"))):
        score = _timed(task.verify, ex, completion)
        assert isinstance(score, float) and 0.0 <= score <= 1.0
    for extract in (extract_answer, last_boxed, extract_program):
        out = _timed(extract, completion)
        assert out is None or isinstance(out, str)


@given(completions=st.lists(COMPLETIONS, min_size=1, max_size=3), golds=st.lists(
    st.one_of(st.sampled_from(GOLDS), LATEXISH, st.text(max_size=30), st.none(), st.integers()), min_size=3,
    max_size=3))
@settings(FUZZ, max_examples=60)
def test_combined_reward_never_raises_whatever_the_gold(completions, golds):
    """Gold answers from data can be anything: an unusable one scores 0 and is counted, never raises."""
    reward = build_reward([{"name": "accuracy", "options": {"timeout_s": 1}}, {"name": "exact"},
                           {"name": "format", "weight": 0.5}])
    n = len(completions)
    start = time.monotonic()
    result = reward(["q"] * n, completions, answer=golds[:n])
    assert time.monotonic() - start < 2 * ITEM_BOUND_S * n
    assert all(0.0 <= t <= 2.5 for t in result.total) and 0 <= result.errors <= 2 * n


# ------------------------------------------------------------------------------------------------- data files
def _record():
    text = st.text(max_size=40)
    value = st.one_of(text, st.integers(), st.floats(allow_nan=True, allow_subnormal=False), st.none(), st.booleans(),
                      st.lists(st.integers(), max_size=3), st.dictionaries(st.sampled_from("ab"), text, max_size=2))
    good = st.fixed_dictionaries({"prompt": text.filter(str.strip), "answer": st.one_of(text, st.integers())})
    return st.one_of(good, good, st.dictionaries(st.sampled_from(["prompt", "answer", "solution", "x"]), value),
                     st.fixed_dictionaries({"prompt": st.just("p" * 100_000), "answer": st.just("1")}))


def _jsonl_line():
    return st.one_of(_record().map(lambda r: json.dumps(r).encode()), st.binary(max_size=40),
                     st.text(max_size=40).map(str.encode), st.just(b""), st.just(b"[" * 5000 + b"]" * 5000),
                     st.just(b'{"prompt": "p", "answer": ' + b"1" * 5000 + b"}"), st.just(b"\xff\xfe{}"),
                     st.just(b"[1, 2]"), st.just(b"null"), st.just(b'{"prompt": "p", "answer": NaN}'))


def _csv_content(sep: str):
    cell = st.text(alphabet=string.printable + "é\x00\"", max_size=20)
    header = st.sampled_from([f"prompt{sep}answer", f"answer{sep}prompt{sep}solution", f"question{sep}x", "",
                              "\ufeffprompt" + sep + "answer"])
    rows = st.lists(st.lists(cell, min_size=0, max_size=4).map(lambda cs: sep.join(cs)), max_size=6)
    return st.tuples(header, rows, st.sampled_from([b"", b"\xff\xfe", b'"' + b"x" * 200_000 + b'"'])).map(
        lambda t: ("\n".join([t[0], *t[1]]) + "\n").encode("utf-8", "surrogatepass") + t[2])


FILES = st.one_of(
    st.tuples(st.just(".jsonl"), st.lists(_jsonl_line(), max_size=6).map(b"\n".join)),
    st.tuples(st.just(".json"), st.one_of(
        st.lists(_record(), max_size=4).map(lambda rs: json.dumps(rs).encode()),
        st.lists(_record(), max_size=4).map(lambda rs: json.dumps({"data": rs}).encode()),
        _jsonl_line(), st.binary(max_size=60))),
    st.tuples(st.just(".csv"), _csv_content(",")),
    st.tuples(st.just(".tsv"), _csv_content("\t")),
    st.tuples(st.sampled_from([".parquet", ".csv", ".jsonl", ".json"]), st.binary(max_size=100)),
)


@given(spec=FILES)
@example(spec=(".jsonl", b""))
@example(spec=(".json", b"[" * 100_000))
@example(spec=(".csv", b"prompt,answer\n\"" + b"x" * 200_000 + b"\",1\n"))
@example(spec=(".jsonl", b'{"prompt": "p", "answer": "1"}\n\xff\n'))
@settings(FUZZ, max_examples=150)
def test_data_files_load_or_name_the_file(tmp_path_factory, spec):
    suffix, content = spec
    path = tmp_path_factory.mktemp("data") / f"fuzz{suffix}"
    path.write_bytes(content)
    try:
        task = files.build({"path": str(path), "val_frac": 0.0, "test_frac": 0.0})
    except ValueError as e:
        assert str(path) in str(e), f"error does not name the file: {e!r}"
        return
    for ex in task.splits["train"]:
        assert isinstance(ex.prompt, str) and ex.prompt.strip() and isinstance(ex.answer, str) and ex.answer.strip()


# ----------------------------------------------------------------------------------------------------- recipes
SECTIONS = ["run", "model", "task", "prompt", "sft", "rl", "eval", "dpo", "rsft", "nope"]
KEYS = ["seed", "steps", "lr", "stages", "init", "hidden_size", "name", "options", "rewards", "batch_size",
        "threads", "max_len", "samples", "temperature", "path", "lora", "filter", "unknown_key"]
# no subnormal floats: runtime.setup flushes denormals process-wide, which hypothesis refuses to work under
YAML_VALUES = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20),
                                     st.floats(allow_subnormal=False), st.text(max_size=10)),
                           lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                   st.dictionaries(st.sampled_from(KEYS), inner, max_size=3)),
                           max_leaves=8)
RECIPES = st.one_of(
    st.dictionaries(st.sampled_from(SECTIONS), st.dictionaries(st.sampled_from(KEYS), YAML_VALUES, max_size=3),
                    max_size=3).map(lambda d: yaml.safe_dump(d).encode()),
    st.text(max_size=80).map(lambda s: s.encode("utf-8", "surrogatepass")), st.binary(max_size=60),
    st.sampled_from([b"", b"[1, 2]", b"run: 3", b"run: {seed: [}", b"a: &a [*a]", b"\xff\xfe", b"run:\n  seed: 1e999",
                     b"rl: {rewards: [{name: nope}]}", b"run: {stages: [sft, sft, bogus]}"]))
OVERRIDES = st.lists(st.one_of(
    st.tuples(st.sampled_from([*SECTIONS, "", "run.seed", "rl..steps", "task.options"]), st.sampled_from(KEYS),
              st.sampled_from(["1", "x", "[", "{a: 1", "null", "[1, 2]", "{}", "1e999", "'", "!!python/none",
                               "&a [*a]", "-"])).map(lambda t: f"{t[0]}.{t[1]}={t[2]}"),
    st.text(max_size=20)), max_size=3)


@given(content=RECIPES, overrides=OVERRIDES)
@example(content=b"run: {seed: 1}", overrides=["run.seed=["])
@example(content=b"run: {seed: 1}", overrides=["run=3", "run.seed=1"])
@example(content=b"\xff\xfe\x00", overrides=[])
@settings(FUZZ, max_examples=150)
def test_recipes_load_or_raise_config_error(tmp_path_factory, content, overrides):
    path = tmp_path_factory.mktemp("recipe") / "recipe.yaml"
    path.write_bytes(content)
    try:
        load_recipe(path, overrides)
    except ConfigError as e:
        message = str(e)
        assert str(path) in message or any(o in message or repr(o) in message for o in overrides), message


def test_recipe_errors_name_the_key_and_file(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("rl:\n  steps: many\n  bogus: 1\n")
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    assert str(path) in str(info.value) and "rl.steps" in str(info.value) and "rl.bogus: unknown key" in str(
        info.value)


def test_data_file_errors_name_the_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"prompt": "p", "answer": "1"}\n{"prompt": "q", "answer": "2"}\n\xff\xfe\n')
    with pytest.raises(ValueError, match=rf"{path}, line 3: not UTF-8"):
        files.build({"path": str(path)})
    path = tmp_path / "d.csv"
    path.write_bytes(b"prompt,answer\np,1\n\"" + b"x" * 200_000 + b"\",2\n")
    with pytest.raises(ValueError, match=rf"{path}, line 3: field larger than field limit"):
        files.build({"path": str(path)})
    path = tmp_path / "d.json"
    path.write_bytes(b"[" * 100_000)
    with pytest.raises(ValueError, match=rf"{path}: unreadable JSON: RecursionError"):
        files.build({"path": str(path)})
