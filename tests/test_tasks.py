"""Tests for coldstart/tasks: registry, split helper, arithmetic, countdown, reasoning-gym and file tasks."""

import json
import pickle
from fractions import Fraction

import pytest

from coldstart.prompts import render_target
from coldstart.tasks import TASKS, build_task
from coldstart.tasks.arithmetic import add_trace, mul_trace, parse_int, sub_trace
from coldstart.tasks.countdown import all_paths, count_backtracks, evaluate, expression, render_trace
from coldstart.tasks.split import hash01, split_of
from coldstart.types import Example, Task


def _wrap(answer):
    return f"<think>...</think><answer>{answer}</answer>"


def _disjoint(*groups):
    seen = set()
    for g in groups:
        if seen & set(g):
            return False
        seen |= set(g)
    return True


# ---------------------------------------------------------------- registry and splits


def test_registry_names_and_protocol():
    assert set(TASKS) == {"arithmetic", "countdown", "file", "gym", "guess"}
    assert isinstance(build_task("arithmetic"), Task)
    assert build_task("gym:chain_sum").name == "gym:chain_sum"


def test_unknown_task_and_option_are_named():
    with pytest.raises(ValueError, match=r"unknown task 'arith'.*arithmetic, countdown, file, guess, gym:<name>"):
        build_task("arith")
    with pytest.raises(ValueError, match=r"'digit'.*valid options: digits, min_digits, ops"):
        build_task("arithmetic", {"digit": 2})
    with pytest.raises(ValueError, match=r"'backtrack'.*backtracks"):
        build_task("countdown", {"backtrack": 1})
    with pytest.raises(ValueError, match=r"option digits must be int, got '3'"):
        build_task("arithmetic", {"digits": "3"})
    with pytest.raises(ValueError, match=r"val_frac \+ test_frac must be < 1"):
        build_task("arithmetic", {"val_frac": 0.5, "test_frac": 0.5})
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        build_task("arithmetic").examples("dev", 1, 0)


def test_split_hash_is_stable_and_follows_fractions():
    assert hash01("12+34") == pytest.approx(0.4747574, abs=1e-7)  # pinned: must not change across runs
    assert split_of("12+34", 0.0, 0.0) == "train"
    assert split_of("12+34", 0.0, 0.48) == "test"
    assert split_of("12+34", 0.48, 0.0) == "val"
    assert split_of("12+34", 0.2, 0.2) == "train"
    counts = {"train": 0, "val": 0, "test": 0}
    for i in range(4000):
        counts[split_of(str(i), 0.05, 0.1)] += 1
    assert 3200 < counts["train"] < 3600 and 130 < counts["val"] < 270 and 310 < counts["test"] < 490


# ---------------------------------------------------------------- arithmetic


def test_arithmetic_traces_by_hand():
    assert add_trace(347, 589) == "7+9=16 c1 6\n4+8+1=13 c1 36\n3+5+1=9 936"
    assert add_trace(999, 1) == "9+1=10 c1 0\n9+0+1=10 c1 00\n9+0+1=10 1000"
    assert add_trace(5, 347) == "5+7=12 c1 2\n0+4+1=5 c0 52\n0+3=3 352"
    assert sub_trace(347, 289) == "17-9=8 b1 8\n14-8-1=5 b1 58\n3-2-1=0 58"
    assert sub_trace(100, 99) == "10-9=1 b1 1\n10-9-1=0 b1 01\n1-0-1=0 1"
    assert mul_trace(347, 25) == "347*5=1735\n347*20=6940\n1735+6940=8675"
    assert mul_trace(12, 301) == "12*1=12\n12*300=3600\n12+3600=3612"
    assert mul_trace(0, 7) == "0*7=0"
    with pytest.raises(ValueError):
        sub_trace(3, 5)


@pytest.mark.parametrize("digits", [1, 2, 3])
def test_every_arithmetic_trace_verifies(digits):
    task = build_task("arithmetic", {"digits": digits, "ops": "+-*"})
    examples = task.examples("train", 200, seed=0)
    assert len(examples) == 200 and {e.meta["op"] for e in examples} == {"+", "-", "*"}
    for e in examples:
        assert task.verify(e, render_target(e)) == 1.0, e
        assert e.solution.splitlines()[-1].endswith(e.answer)
        assert e.solution.isascii() and e.prompt.isascii()
        if e.meta["op"] == "+" and digits == 3:
            assert len(e.solution) < 60


def test_arithmetic_verifier():
    task = build_task("arithmetic")
    ex = Example("347+589", "936")
    assert [task.verify(ex, c) for c in (_wrap("936"), _wrap(" +936 "), "so \\boxed{936}", _wrap("0936"))] == [1.0] * 4
    assert task.verify(Example("999+999", "1998"), _wrap("1,998")) == 1.0
    bad = [_wrap("937"), _wrap("-936"), _wrap("936.0"), _wrap("9 36"), _wrap("93,6"), _wrap(""),
           _wrap("nine"), "936", "<answer>936", ""]
    assert [task.verify(ex, c) for c in bad] == [0.0] * len(bad)
    assert task.verify(Example("3-5", "-2"), _wrap("-2")) == 1.0
    assert parse_int(" -1,000 ") == -1000 and parse_int("1,0000") is None and parse_int(None) is None


def test_arithmetic_splits_enumerated_disjoint_and_complete():
    task = build_task("arithmetic", {"digits": 2, "ops": "+-*"})
    parts = [[e.prompt for e in task.examples(s, None, seed=0)] for s in ("train", "val", "test")]
    assert _disjoint(*parts)
    assert sum(map(len, parts)) == 10_000 + 10_000 + 100 * 101 // 2 == task.space_size()
    assert [e.prompt for e in task.examples("val", 20, seed=0)] == parts[1][:20]  # n=20 is a prefix
    assert all(a >= b for p in parts[0] if "-" in p for a, b in [map(int, p.split("-"))])


def test_arithmetic_sampled_splits_disjoint_and_deterministic():
    task = build_task("arithmetic", {"digits": 3, "ops": "+-"})
    train, test = task.examples("train", 500, seed=1), task.examples("test", 500, seed=1)
    assert _disjoint([e.prompt for e in train], [e.prompt for e in test])
    assert len({e.prompt for e in train}) == 500
    assert [e.prompt for e in task.examples("train", 50, seed=1)] == [e.prompt for e in train[:50]]
    assert [e.prompt for e in task.examples("train", 50, seed=2)] != [e.prompt for e in train[:50]]
    other = build_task("arithmetic", {"digits": 3, "ops": "+-"}, seed=7)
    assert [e.prompt for e in other.examples("train", 50, seed=1)] != [e.prompt for e in train[:50]]


def test_arithmetic_n_beyond_split_raises():
    task = build_task("arithmetic", {"digits": 1})  # 100 problems
    test = task.examples("test", None, seed=0)
    assert 0 < len(test) < 100
    with pytest.raises(ValueError, match=f"n={len(test) + 1} test examples.*only {len(test)} distinct"):
        task.examples("test", len(test) + 1, seed=0)
    with pytest.raises(ValueError, match="too many to enumerate"):
        build_task("arithmetic", {"digits": 5}).examples("train", None, seed=0)


# ---------------------------------------------------------------- countdown


def test_countdown_trace_by_hand():
    solution = ((8, "-", 3, 5), (5, "*", 4, 20))
    errors = [(0, ((4, "+", 3, 7), (8, "+", 7, 15)))]
    assert render_trace([3, 4, 8], 20, solution, errors) == (
        "1: 4+3=7 [7,8]\n2: 8+7=15 [15]\nWait, 15 is not 20. Back to step 0 [3,4,8]\n"
        "1: 8-3=5 [4,5]\n2: 5*4=20 [20]\n(8-3)*4=20")
    assert render_trace([3, 4, 8], 20, solution, []) == "1: 8-3=5 [4,5]\n2: 5*4=20 [20]\n(8-3)*4=20"


def test_countdown_expressions_have_the_needed_parentheses():
    assert expression([10, 4, 3], ((4, "-", 3, 1), (10, "-", 1, 9))) == "10-(4-3)"
    assert expression([8, 6, 3], ((6, "/", 3, 2), (8, "/", 2, 4))) == "8/(6/3)"
    assert expression([8, 4, 3], ((8, "+", 4, 12), (12, "*", 3, 36))) == "(8+4)*3"
    assert expression([10, 3, 2], ((3, "*", 2, 6), (10, "-", 6, 4))) == "10-3*2"
    for path in all_paths((2, 3, 5, 7)):  # every expression evaluates to its path's final value
        assert evaluate(expression([2, 3, 5, 7], path), [7, 5, 3, 2]) == path[-1][3]


def test_count_backtracks():
    assert count_backtracks("no backtracking here") == 0
    assert count_backtracks("Wait, 9 is not 5. Back to step 1 [2,3]\nwait, 4 is not 5. back to step 0 [1]") == 2
    assert count_backtracks("Let me go back to step 2. Go back to the start.") == 1


@pytest.mark.parametrize("k", [0, 1, 2, 3])
@pytest.mark.parametrize("numbers,n", [(3, 200), (4, 50)])
def test_every_countdown_trace_verifies_with_exact_backtracks(k, numbers, n):
    task = build_task("countdown", {"numbers": numbers, "backtracks": k})
    examples = task.examples("train", n, seed=0)
    assert len(examples) == n
    for e in examples:
        assert task.verify(e, render_target(e)) == 1.0, e
        assert count_backtracks(e.solution) == k, e.solution
        assert len(e.meta["numbers"]) == numbers and 1 <= e.meta["target"] <= 100
        assert e.solution.endswith(f"{e.answer}={e.meta['target']}") and e.solution.isascii()


def test_countdown_verifier():
    task = build_task("countdown")
    ex = Example("Make 20 with 3 4 8 (+-*/, each once)", "(8-3)*4", meta={"numbers": [3, 4, 8], "target": 20})
    right = [_wrap("(8-3)*4"), _wrap(" 4 * (8 - 3) "), _wrap("(8-3)*4=20"), "\\boxed{(8-3)*4}"]
    assert [task.verify(ex, c) for c in right] == [1.0] * len(right)
    wrong = [_wrap("8*4-3"), _wrap("(8-3)*4=21"), _wrap("(8-3)*4*1"), _wrap("8*4"), _wrap("20"),
             _wrap("(8-3)*4)"), _wrap("8**3"), _wrap("__import__('os')"), _wrap("(8-3)x4"), _wrap(""),
             _wrap("8/(4-4)+3"), _wrap("-(3-8)*4"), "(8-3)*4", "<answer>(8-3)*4"]
    assert [task.verify(ex, c) for c in wrong] == [0.0] * len(wrong)
    # TinyZero's rule allows fractions in between: 5*(5-1/5) = 24.
    ex24 = Example("p", "5*(5-1/5)", meta={"numbers": [5, 5, 5, 1], "target": 24})
    assert task.verify(ex24, _wrap("5*(5-1/5)")) == 1.0
    assert evaluate("1/5", [5, 1]) == Fraction(1, 5)


def test_countdown_splits_disjoint_deterministic_and_unsolvable_config_raises():
    task = build_task("countdown", {"numbers": 3, "backtracks": 1})
    keys = [[(tuple(sorted(e.meta["numbers"])), e.meta["target"]) for e in task.examples(s, m, seed=3)]
            for s, m in (("train", 300), ("val", 30), ("test", 30))]
    assert _disjoint(*keys) and len(set(keys[0])) == 300
    again = task.examples("val", 30, seed=3)
    assert [(tuple(sorted(e.meta["numbers"])), e.meta["target"]) for e in again] == keys[1]
    assert [e.solution for e in again] == [e.solution for e in task.examples("val", 30, seed=3)]
    with pytest.raises(ValueError, match="found only 0 of n=1"):
        build_task("countdown", {"numbers": 2, "max_number": 1, "backtracks": 3}).examples("train", 1, 0)
    with pytest.raises(ValueError, match=r"numbers must be in 2\.\.5"):
        build_task("countdown", {"numbers": 6})


# ---------------------------------------------------------------- reasoning-gym


def test_gym_examples_verify_and_split():
    task = build_task("gym:chain_sum", {"min_terms": 2, "max_terms": 3})
    train, test = task.examples("train", 100, seed=0), task.examples("test", 50, seed=0)
    assert _disjoint([e.prompt for e in train], [e.prompt for e in test]) and len({e.prompt for e in test}) == 50
    assert [e.prompt for e in task.examples("test", 50, seed=0)] == [e.prompt for e in test]
    assert [e.prompt for e in task.examples("test", 50, seed=1)] != [e.prompt for e in test]
    e = test[0]
    assert e.prompt == e.meta["entry"]["question"] and e.answer == e.meta["entry"]["answer"]
    assert e.solution is None and e.meta["dataset"] == "chain_sum"
    pickle.loads(pickle.dumps(e))
    json.dumps(e.meta)
    wrong = str(int(e.answer) + 1)
    assert task.verify(e, _wrap(e.answer)) == 1.0
    assert task.verify(e, f"\\boxed{{{e.answer}}}") == 1.0
    assert [task.verify(e, c) for c in (_wrap(wrong), _wrap("banana"), _wrap(""), e.answer)] == [0.0] * 4


def test_gym_option_errors():
    with pytest.raises(ValueError, match=r"unknown reasoning-gym dataset 'nope'.*chain_sum"):
        build_task("gym:nope")
    with pytest.raises(ValueError, match=r"'terms'.*min_terms"):
        build_task("gym:chain_sum", {"terms": 3})
    with pytest.raises(ValueError, match=r"'seed'.*set by coldstart"):
        build_task("gym:chain_sum", {"seed": 3})
    with pytest.raises(ValueError, match="gym:chain_sum: invalid options"):
        build_task("gym:chain_sum", {"min_terms": 0})
    assert build_task("gym", {"dataset": "chain_sum"}).name == "gym:chain_sum"
    with pytest.raises(ValueError, match="option 'dataset' conflicts"):
        build_task("gym:chain_sum", {"dataset": "leg_counting"})


# ---------------------------------------------------------------- file


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


ROWS = [{"q": f"What is {i}/2?", "gold": {"value": i / 2}, "cot": f"{i}/2={i / 2}", "id": i} for i in range(60)]
FIELDS = {"prompt": "q", "answer": "gold.value", "solution": "cot", "id": "id"}


def test_file_jsonl_fields_splits_and_verify(tmp_path):
    task = build_task("file", {"path": _write_jsonl(tmp_path / "d.jsonl", ROWS), "fields": FIELDS})
    parts = {s: task.examples(s, None, seed=0) for s in ("train", "val", "test")}
    assert _disjoint(*[[e.prompt for e in p] for p in parts.values()])
    assert sum(map(len, parts.values())) == 60 and len(parts["train"]) > 40
    e = next(e for p in parts.values() for e in p if e.meta["id"] == 3)
    assert (e.prompt, e.answer, e.solution, e.meta) == ("What is 3/2?", "1.5", "3/2=1.5", {"id": 3})
    assert task.verify(e, _wrap("\\frac{3}{2}")) == 1.0 and task.verify(e, _wrap("3/2")) == 1.0
    assert task.verify(e, _wrap("1.4")) == 0.0 and task.verify(e, "no answer") == 0.0
    assert [x.prompt for x in task.examples("train", 10, seed=4)] == [
        x.prompt for x in task.examples("train", 30, seed=4)][:10]
    assert [x.prompt for x in task.examples("train", 10, seed=5)] != [
        x.prompt for x in task.examples("train", 10, seed=4)]
    # a file is finite: asking for more than a split holds gives the whole split
    assert len(task.examples("train", 999, seed=0)) == len(parts["train"])


def test_file_default_fields_and_optional_solution(tmp_path):
    path = _write_jsonl(tmp_path / "d.jsonl", [{"prompt": "1+1", "answer": 2}, {"prompt": "2+2", "answer": "4",
                                                                                "solution": "2+2=4"}])
    task = build_task("file", {"path": path, "val_frac": 0.0, "test_frac": 0.0})
    got = {e.prompt: (e.answer, e.solution) for e in task.examples("train", None, 0)}
    assert got == {"1+1": ("2", None), "2+2": ("4", "2+2=4")}


def test_file_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"q": "a", "gold": "1"}\n\n{"q": "b", "gold": 2\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl, line 3: malformed JSON"):
        build_task("file", {"path": str(bad), "fields": {"prompt": "q", "answer": "gold"}})
    missing = _write_jsonl(tmp_path / "missing.jsonl", [{"q": "a", "gold": "1"}, {"q": "b", "target": "2"}])
    with pytest.raises(ValueError, match=r"missing\.jsonl, line 2: missing field 'gold' \(fields\.answer\)"):
        build_task("file", {"path": missing, "fields": {"prompt": "q", "answer": "gold"}})
    with pytest.raises(ValueError, match=r"missing\.jsonl, line 1: missing field 'cot' \(fields\.solution\)"):
        build_task("file", {"path": missing, "fields": {"prompt": "q", "answer": "gold", "solution": "cot"}})
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match=r"empty\.jsonl: no records"):
        build_task("file", {"path": str(tmp_path / "empty.jsonl")})
    with pytest.raises(ValueError, match=r"nothere\.jsonl: no such file"):
        build_task("file", {"path": str(tmp_path / "nothere.jsonl")})
    with pytest.raises(ValueError, match=r"no such file or directory"):
        build_task("file", {"path": str(tmp_path / "nothere")})
    not_obj = _write_jsonl(tmp_path / "list.jsonl", [[1, 2]])
    with pytest.raises(ValueError, match=r"list\.jsonl, line 1: expected a JSON object"):
        build_task("file", {"path": not_obj})
    with pytest.raises(ValueError, match="option path is required"):
        build_task("file", {})
    with pytest.raises(ValueError, match="must map 'answer' to a column"):
        build_task("file", {"path": missing, "fields": {"prompt": "q"}})


def test_file_explicit_test_path_keeps_splits_disjoint(tmp_path):
    main = _write_jsonl(tmp_path / "train.jsonl", ROWS)
    extra = {"q": "new?", "gold": {"value": 1}, "cot": "", "id": -1}
    test = _write_jsonl(tmp_path / "test.jsonl", [*ROWS[:5], extra])
    task = build_task("file", {"path": main, "test_path": test, "fields": FIELDS})
    assert len(task.examples("test", None, 0)) == 6 and task.dropped == {"val_path": 0, "path": 5}
    rest = [e.prompt for s in ("train", "val") for e in task.examples(s, None, 0)]
    assert len(rest) == 55 and not set(rest) & {r["q"] for r in ROWS[:5]}


def test_file_json_parquet_csv_and_datasets_folder(tmp_path):
    pd = pytest.importorskip("pandas")
    flat = [{"q": r["q"], "gold": r["gold"]["value"], "cot": r["cot"]} for r in ROWS]
    fields = {"prompt": "q", "answer": "gold", "solution": "cot"}
    (tmp_path / "d.json").write_text(json.dumps({"data": flat}))
    pd.DataFrame(flat).to_parquet(tmp_path / "d.parquet")
    pd.DataFrame(flat).to_csv(tmp_path / "d.csv", index=False)
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list(flat).save_to_disk(str(tmp_path / "hf"))
    for name in ("d.json", "d.parquet", "d.csv", "hf"):
        task = build_task("file", {"path": str(tmp_path / name), "fields": fields})
        got = sorted((e.prompt, e.answer, e.solution) for s in ("train", "val", "test")
                     for e in task.examples(s, None, 0))
        assert got == sorted((r["q"], str(r["gold"]), r["cot"]) for r in flat), name
    (tmp_path / "bad.csv").write_text("q,gold\na,1\n,2\n")
    with pytest.raises(ValueError, match=r"bad\.csv, line 3: field 'q' \(fields\.prompt\) must be a non-empty"):
        build_task("file", {"path": str(tmp_path / "bad.csv"), "fields": {"prompt": "q", "answer": "gold"}})
    (tmp_path / "noanswer.csv").write_text("q,gold\na,1\nb,\n")
    with pytest.raises(ValueError, match=r"noanswer\.csv, line 3: field 'gold' \(fields\.answer\) must be"):
        build_task("file", {"path": str(tmp_path / "noanswer.csv"), "fields": {"prompt": "q", "answer": "gold"}})


def test_arithmetic_min_digits_gives_fixed_width_operands():
    from coldstart.tasks import build_task

    task = build_task("arithmetic", {"digits": 2, "min_digits": 2, "ops": "+-"})
    assert task.space_size() == 90 * 90 + 90 * 91 // 2
    for split in ("train", "test"):
        for ex in task.examples(split, 50, 0):
            a, b = ex.prompt.replace("-", "+").split("+")
            assert len(a) == 2 and len(b) == 2, ex.prompt
    import pytest

    with pytest.raises(ValueError, match="min_digits"):
        build_task("arithmetic", {"digits": 2, "min_digits": 3})
