"""`file`: a task read from a data file or a `datasets` dataset, verified with math-verify.

Options:
    path:        a .jsonl / .ndjson, .json (a list of objects, or {"data": [...]}), .parquet / .pq, .csv /
                 .tsv file; a local `datasets` folder (save_to_disk) or data folder; or a `datasets`
                 name, read with `datasets.load_dataset(path, name=dataset_config, split=dataset_split)`
                 (a path that starts with /, . or ~ is never looked up as a name).
    fields:      {prompt: column, answer: column, solution: column, completion: column, messages: column,
                 <any>: column}. prompt (or messages) is required, answer too unless the record has an SFT
                 target; solution is optional; any other key is copied into Example.meta. A dotted column
                 (`meta.answer`, `choices.0`) reads nested objects and lists. Default: {prompt: prompt,
                 answer: answer}, plus solution, completion and messages when a record has those columns.
                 Without fields, a record with no `answer` but a `solution` (TRL's math sets) takes the gold
                 answer from it: its last `<answer>` / `\\boxed{}` when it has one (the solution is then also
                 the trace), else the whole solution (the solution is the gold answer, no trace).

Formats (TRL's): `prompt` is a string or a list of chat messages (`{"role", "content"}`: the conversational
format, rendered with the model's chat template as given, its system message included). An SFT target used
verbatim comes from `completion` (a string or a list of assistant messages; TRL's prompt-completion format)
or from `messages` (TRL's language-modeling format: the last assistant message is the target, the messages
before it the prompt). The answer of such a record, when it has no answer field, is the target's last
`<answer>` / `\\boxed{}`. Every column of a record reaches reward functions under its own name.
    val_path, test_path:  optional files for those splits (same format rules).
    val_frac, test_frac:  hash split of `path` for the splits without a file (defaults 0.05 / 0.1).

The data is read when the task is built, so errors surface at once. Every error names the file and the
place: `data.jsonl, line 7: malformed JSON: ...`, `data.jsonl, line 3: missing field 'question'
(fields.prompt)`, `data.csv, line 12: ...`, `data.parquet, row 4: ...`, `data.json, record 2: ...`;
an empty source and a missing file raise too. The prompt must be a non-empty string or a non-empty list of
messages; the answer a non-empty string or a number (written with str()); a null solution means none.

Splits: a record of `path` goes to the split that the stable hash of its prompt picks
(coldstart/tasks/split.py); when val_path / test_path is given, that split comes from its file and
records of `path` whose prompt appears in a held-out file are dropped (counted in `task.dropped`),
as are val records whose prompt is also in the test file. So the splits never share a prompt.

Verifier: `coldstart.rewards.accuracy.verify_answer(completion, answer)` (math-verify on the last
`<answer>` or `\\boxed{}`).
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coldstart.tasks.split import SPLITS, check_fracs, check_split, parse_options, rng_for, split_of
from coldstart.types import Example

log = logging.getLogger("coldstart.tasks")
_MISSING = object()
_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".pq": "parquet",
            ".csv": "csv", ".tsv": "tsv"}


@dataclass
class FileOptions:
    path: str = ""
    fields: dict | None = None
    val_path: str | None = None
    test_path: str | None = None
    val_frac: float = 0.05
    test_frac: float = 0.1
    dataset_split: str = "train"  # split read from a `datasets` name or folder
    dataset_config: str | None = None  # its configuration name


def iter_records(path: str, dataset_split: str = "train", dataset_config: str | None = None
                 ) -> Iterator[tuple[str, dict]]:
    """Yield (where, record) for every record of `path`; `where` is like `data.jsonl, line 3`."""
    p = Path(path).expanduser()
    fmt = _FORMATS.get(p.suffix.lower())
    if fmt is not None and not p.is_file():
        raise ValueError(f"file: {path}: no such file")
    if fmt is None and not p.exists() and (p.is_absolute() or path.startswith((".", "~"))):
        raise ValueError(f"file: {path}: no such file or directory")
    if fmt == "jsonl":
        yield from _jsonl(path, p)
    elif fmt == "json":
        yield from _json(path, p)
    elif fmt in ("csv", "tsv"):
        yield from _csv(path, p, "," if fmt == "csv" else "\t")
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(p).to_pylist()
        except Exception as e:
            raise ValueError(f"file: {path}: cannot read Parquet: {e}") from e
        yield from ((f"{path}, row {i}", r) for i, r in enumerate(rows))
    else:
        yield from ((f"{path}, row {i}", r) for i, r in enumerate(_hf_rows(path, p, dataset_split, dataset_config)))


def _loads(text: str, where: str) -> Any:
    """json.loads, with every failure (syntax, nesting too deep, an integer too long) as a ValueError at `where`."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: malformed JSON: {e.msg} (column {e.colno})") from None
    except (ValueError, RecursionError) as e:  # int() beyond 4300 digits; [[[[...]]]] deeper than the stack
        raise ValueError(f"{where}: unreadable JSON: {type(e).__name__}: {str(e)[:200]}") from None


def _jsonl(path: str, p: Path) -> Iterator[tuple[str, dict]]:
    with p.open("rb") as f:
        for n, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}, line {n}: not UTF-8 ({e.reason} at byte {e.start})") from None
            if not line.strip():
                continue
            record = _loads(line, f"{path}, line {n}")
            if not isinstance(record, dict):
                raise ValueError(f"{path}, line {n}: expected a JSON object, got {type(record).__name__}")
            yield f"{path}, line {n}", record


def _json(path: str, p: Path) -> Iterator[tuple[str, dict]]:
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ValueError(f"{path}, line {line}: not UTF-8 ({e.reason} at byte {e.start})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}, line {e.lineno}: malformed JSON: {e.msg} (column {e.colno})") from None
    except (ValueError, RecursionError) as e:
        raise ValueError(f"{path}: unreadable JSON: {type(e).__name__}: {str(e)[:200]}") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of objects or {{\"data\": [...]}}")
    for i, record in enumerate(data):
        if not isinstance(record, dict):
            raise ValueError(f"{path}, record {i}: expected a JSON object, got {type(record).__name__}")
        yield f"{path}, record {i}", record


def _csv(path: str, p: Path, delimiter: str) -> Iterator[tuple[str, dict]]:
    """Rows of a CSV/TSV with a header line; bad bytes and csv errors (e.g. a field over csv's 128 KiB
    field_size_limit) are ValueErrors naming the line."""
    with p.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}, line {reader.line_num + 1}: not UTF-8 ({e.reason})") from None
            except csv.Error as e:
                raise ValueError(f"{path}, line {reader.line_num + 1}: {e}") from None
            yield f"{path}, line {reader.line_num}", row


def _hf_rows(path: str, p: Path, dataset_split: str, dataset_config: str | None):
    import datasets

    try:
        if p.is_dir() and (p / "state.json").is_file():
            ds = datasets.load_from_disk(str(p))
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[dataset_split]
        else:
            ds = datasets.load_dataset(path, name=dataset_config, split=dataset_split)
    except Exception as e:
        raise ValueError(f"file: {path}: not a readable file (known suffixes: {', '.join(_FORMATS)}) and "
                         f"`datasets` could not load it: {type(e).__name__}: {e}") from e
    return ds


def get_field(record: dict, name: str) -> Any:
    """record[name], else the dotted path `a.b.0` through dicts and lists; _MISSING when absent.

    >>> get_field({"a": {"b": [5, 6]}}, "a.b.1"), get_field({"a.b": 1}, "a.b"), get_field({}, "x") is _MISSING
    (6, 1, True)
    """
    if name in record:
        return record[name]
    value: Any = record
    for part in name.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.lstrip("-").isdigit() and -len(value) <= int(part) < len(value):
            value = value[int(part)]
        else:
            return _MISSING
    return value


def _messages(where: str, value: Any, key: str, column: str) -> list[dict]:
    """A list of chat messages, checked: dicts with a string role and string (or typed-block list) content."""
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where}: field {column!r} (fields.{key}) must be a non-empty list of messages")
    for j, m in enumerate(value):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str)
                and (m.get("content") is None or isinstance(m.get("content"), (str, list)))):
            raise ValueError(f"{where}: field {column!r} (fields.{key}), message {j}: expected {{'role': str, "
                             f"'content': str}}, got {m!r:.80}")
    return value


def _text(messages: list[dict]) -> str:
    """The assistant content of a message list (TRL's conversational completion)."""
    from coldstart.rewards.basic import completion_text

    return completion_text(messages)


def _prompt_and_target(where: str, record: dict, fields: dict[str, str], need) -> tuple[Any, str | None]:
    """(prompt, verbatim SFT target or None) from the prompt / completion / messages fields."""
    has = lambda key: key in fields and get_field(record, fields[key]) is not _MISSING  # noqa: E731
    if "prompt" not in fields or (has("messages") and not has("prompt")):
        messages = _messages(where, need("messages"), "messages", fields["messages"])
        if messages[-1].get("role") != "assistant" or len(messages) < 2:
            raise ValueError(f"{where}: field {fields['messages']!r} (fields.messages) must end with an assistant "
                             "message (the SFT target) after the prompt's messages")
        return messages[:-1], _text(messages[-1:])
    prompt = need("prompt")
    if isinstance(prompt, list):
        prompt = _messages(where, prompt, "prompt", fields["prompt"])
    elif not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"{where}: field {fields['prompt']!r} (fields.prompt) must be a non-empty string or a list "
                         f"of messages, got {prompt!r:.80}")
    target = None
    if "completion" in fields and get_field(record, fields["completion"]) is not _MISSING:
        value = need("completion", allow_none=True)
        if isinstance(value, list):
            value = _text(_messages(where, value, "completion", fields["completion"]))
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{where}: field {fields['completion']!r} (fields.completion) must be a string or a list "
                             "of messages")
        target = value
    return prompt, target


def to_example(where: str, record: dict, fields: dict[str, str], solution_optional: bool) -> Example:
    """One record → Example; ValueError naming `where` and the field on a missing or bad value."""
    from coldstart.rewards.extract import extract_answer

    def need(key: str, allow_none: bool = False) -> Any:
        value = get_field(record, fields[key])
        if value is _MISSING:
            raise ValueError(f"{where}: missing field {fields[key]!r} (fields.{key}); "
                             f"present: {', '.join(map(str, record))}")
        if value is None and not allow_none:
            raise ValueError(f"{where}: field {fields[key]!r} (fields.{key}) is null")
        return value

    prompt, target = _prompt_and_target(where, record, fields, need)
    solution = None
    if "solution" in fields and not (solution_optional and get_field(record, fields["solution"]) is _MISSING):
        solution = need("solution", allow_none=True)
        if solution is not None and not isinstance(solution, str):
            raise ValueError(f"{where}: field {fields['solution']!r} (fields.solution) must be a string")
    if get_field(record, fields["answer"]) is _MISSING and (target or (solution_optional and solution)):
        answer = extract_answer(target or solution)  # TRL's data: the gold sits in the target or the solution
        if answer is None and target is None:
            answer, solution = solution, None  # a solution without a final-answer block is the gold answer
        if answer is None:
            raise ValueError(f"{where}: no field {fields['answer']!r} (fields.answer), and the target has no "
                             "<answer> block or \\boxed{} to take the answer from: set fields.answer")
    else:
        answer = need("answer")
    if not isinstance(answer, (str, int, float)) or not str(answer).strip():
        raise ValueError(f"{where}: field {fields['answer']!r} (fields.answer) must be a non-empty string or "
                         f"a number, got {answer!r:.80}")
    meta = {k: need(k, allow_none=True) for k in fields if k not in ("prompt", "answer", "solution", "completion",
                                                                    "messages")}
    return Example(prompt=prompt, answer=str(answer), solution=solution, meta=meta, target=target, record=record)


def read_examples(path: str, fields: dict[str, str], o: FileOptions, solution_optional: bool) -> list[Example]:
    """Every record of `path` as an Example; ValueError if there are none."""
    out = [to_example(where, record, fields, solution_optional)
           for where, record in iter_records(path, o.dataset_split, o.dataset_config)]
    if not out:
        raise ValueError(f"file: {path}: no records (empty data set)")
    return out


@dataclass
class FileTask:
    """A task over fixed examples (see the module docstring)."""

    splits: dict[str, list[Example]]
    seed: int = 0
    name: str = "file"
    dropped: dict[str, int] = field(default_factory=dict)  # per source option: records dropped as held out

    def examples(self, split: str, n: int | None, seed: int) -> list[Example]:
        """Up to n examples of `split` in a seed-determined order (all of them for n=None).

        A file is finite: asking for more than the split holds returns the whole split, with a warning
        (the recipe's default val/test sizes must not break a small data set). An empty split raises.
        """
        check_split(split)
        pool = self.splits[split]
        if n is None:
            n = len(pool)
        if n < 0:
            raise ValueError(f"{self.name}: n must be >= 0, got {n}")
        if n and not pool and split == "train":
            raise ValueError(f"{self.name}: the train split is empty (val_frac / test_frac too large?)")
        if n > len(pool):
            log.warning("%s: asked for %d %s examples, the split has %d: using all of them",
                        self.name, n, split, len(pool))
            n = len(pool)
        order = list(pool)
        rng_for(self.seed, seed, split).shuffle(order)  # shuffle then cut: n=m is a prefix of n>m
        return order[:n]

    def verify(self, example: Example, completion: str) -> float:
        """math-verify accuracy of the completion's final answer against example.answer."""
        from coldstart.rewards.accuracy import verify_answer

        return verify_answer(completion, example.answer)


def build(options: dict | None = None, seed: int = 0) -> FileTask:
    """Build the file task: read and split the data now (see the module docstring)."""
    o = parse_options(FileOptions, options, "file")
    if not o.path:
        raise ValueError("file: option path is required (a data file, folder or `datasets` name)")
    check_fracs("file", o.val_frac, o.test_frac)
    fields = dict(o.fields or {"prompt": "prompt", "answer": "answer", "solution": "solution",
                               "completion": "completion", "messages": "messages"})
    if "prompt" not in fields and "messages" not in fields:
        raise ValueError(f"file: option fields must map 'prompt' (or 'messages') to a column name, got {o.fields!r}")
    if "completion" in fields or "messages" in fields:  # the answer may come from the SFT target
        fields.setdefault("answer", "answer")
    for key in ("answer", *fields):
        if not isinstance(fields.get(key), str) or not fields[key]:
            raise ValueError(f"file: option fields must map {key!r} to a column name, got {o.fields!r}")
    optional = o.fields is None  # the default `solution` column may be absent
    splits: dict[str, list[Example]] = {s: [] for s in SPLITS}
    for split, p in (("test", o.test_path), ("val", o.val_path)):
        if p:
            splits[split] = read_examples(p, fields, o, optional)
    held = {e.key for e in splits["test"]}
    kept_val = [e for e in splits["val"] if e.key not in held]
    dropped = {"val_path": len(splits["val"]) - len(kept_val), "path": 0}
    splits["val"] = kept_val
    held |= {e.key for e in kept_val}
    val_frac = 0.0 if o.val_path else o.val_frac
    test_frac = 0.0 if o.test_path else o.test_frac
    for e in read_examples(o.path, fields, o, optional):
        if e.key in held:
            dropped["path"] += 1
        else:
            splits[split_of(e.key, val_frac, test_frac)].append(e)
    if any(dropped.values()):
        log.info("file %s: dropped records whose prompt is in a held-out split: %s", o.path, dropped)
    return FileTask(splits=splits, seed=seed, name=f"file:{Path(o.path).name}", dropped=dropped)
