"""The recipe reference, generated from the schema in coldstart/config.py so that it cannot drift.

`recipe_reference()` walks `config.Recipe`: one markdown table per section (`run`, `model`, ..., and every
nested section such as `rl.pad`, `model.lora` or the items of `rl.rewards`), with each key's type (as written
in the source), default and description. A description is the field's pydantic `description` when it has
one, else the `# comment` that ends the field's (possibly multi-line) statement, else the comment lines right
above it (a field with none fails tests/test_reference.py). Comments are read with `ast` + `tokenize` from
the module that defines each section class, so sections added anywhere are picked up. `trl_table()` turns
`config.TRL_NAMES` into README's "Coming from TRL" table, between the trl-names markers.

    python -m coldstart.tools.reference                    # print the reference
    python -m coldstart.tools.reference --write README.md  # replace the blocks between the markers
    python -m coldstart.tools.reference --check README.md  # exit 1 when README.md is out of date
"""

from __future__ import annotations

import argparse
import ast
import io
import sys
import tokenize
from functools import cache
from pathlib import Path

import yaml
from pydantic import BaseModel

from ..config import TRL_NAMES, Recipe, nested_section


# Fields whose line in config.py carries no comment yet, by "Section class.field", then by field name alone
# for the hyperparameters every training section shares. A comment or pydantic description in the source wins.
@cache
def _module_comments(path: str) -> dict[tuple[str, str], str]:
    """(class name, field name) → comment, for every annotated field of every class in the file at `path`."""
    source = Path(path).read_text()
    trailing: dict[int, str] = {}  # line → comment after code on that line
    alone: dict[int, str] = {}  # line → comment that is the whole line
    code_lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            text = tok.string.lstrip("#").strip()
            (trailing if tok.start[0] in code_lines else alone)[tok.start[0]] = text
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENCODING):
            code_lines.add(tok.start[0])
    out = {}
    for cls in ast.walk(ast.parse(source)):
        if not isinstance(cls, ast.ClassDef):
            continue
        for node in cls.body:
            if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
                continue
            inline = [trailing[ln] for ln in range(node.lineno, node.end_lineno + 1) if ln in trailing]
            above, ln = [], node.lineno - 1
            while ln in alone:
                above.insert(0, alone[ln])
                ln -= 1
            text = " ".join(inline) or " ".join(above)
            if text:
                out[(cls.name, node.target.id)] = text
    return out


@cache
def _annotations_source(path: str) -> dict[tuple[str, str], str]:
    """(class name, field name) → the annotation as written in the file at `path`."""
    source = Path(path).read_text()
    out = {}
    for cls in ast.walk(ast.parse(source)):
        if isinstance(cls, ast.ClassDef):
            for node in cls.body:
                if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                    out[(cls.name, node.target.id)] = ast.get_source_segment(source, node.annotation) or ""
    return out


def _own_fields(cls: type) -> dict:
    """The annotations a class itself declares (not inherited)."""
    return cls.__dict__.get("__annotations__", {})  # noqa: RUF063 - `from __future__` strings are all we need


def _source_file(cls: type) -> str:
    return sys.modules[cls.__module__].__file__


def _default(field) -> str:
    """The default as a short YAML value, `required`, or a pointer to the nested section."""
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "(section below)"
    if isinstance(value, list) and value and isinstance(value[0], BaseModel):
        value = [v.model_dump(mode="json") for v in value]
    text = yaml.safe_dump(value, default_flow_style=True, width=1000, sort_keys=False).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def describe(model: type[BaseModel], name: str) -> str:
    """The description of field `name` of section `model` ("" when there is none)."""
    field = model.model_fields[name]
    if field.description:
        return field.description
    for cls in model.__mro__:  # a field inherited from a parent section is commented there
        if isinstance(cls, type) and issubclass(cls, BaseModel) and name in _own_fields(cls):
            text = _module_comments(_source_file(cls)).get((cls.__name__, name))
            if text:
                return text
    return ""


def sections(model: type[BaseModel] | None = None, prefix: str = "") -> list[tuple[str, type[BaseModel]]]:
    """(dotted path, section model) of every section under `model` (default: the Recipe), depth first."""
    if model is None:
        return [s for name, f in Recipe.model_fields.items() for s in sections(nested_section(f.annotation)[0], name)]
    out = [(prefix, model)]
    for name, field in model.model_fields.items():
        nested, is_list = nested_section(field.annotation)
        if nested is not None:
            out += sections(nested, f"{prefix}.{name}" + ("[]" if is_list else ""))
    return out


def rows(prefix: str, model: type[BaseModel]) -> list[tuple[str, str, str, str]]:
    """(key, type, default, description) of each field of one section."""
    out = []
    for name, field in model.model_fields.items():
        cls = next(c for c in model.__mro__ if name in _own_fields(c))
        kind = _annotations_source(_source_file(cls)).get((cls.__name__, name)) or str(field.annotation)
        out.append((name, kind, _default(field), describe(model, name)))
    return out


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def recipe_reference() -> str:
    """The markdown reference of every recipe key: a table per section with key, type, default, description."""
    parts = []
    for prefix, model in sections():
        doc = model.__dict__.get("__doc__")
        head = f"#### `{prefix}`\n" + (f"{' '.join(doc.split())}\n" if doc else "")
        table = ["| key | type | default | description |", "|---|---|---|---|"]
        table += [f"| `{k}` | `{_cell(t)}` | `{_cell(d)}` | {_cell(desc)} |" for k, t, d, desc in rows(prefix, model)]
        parts.append(head + "\n" + "\n".join(table) + "\n")
    return "\n".join(parts)


def trl_table() -> str:
    """The markdown table of TRL config names, the recipe keys that hold them and how they differ (TRL_NAMES)."""
    table = ["| TRL | recipe key | difference |", "|---|---|---|"]
    for name, (keys, note) in TRL_NAMES.items():
        where = ", ".join(f"`{k}`" for k in keys.split(", ")) if keys else "none"
        table.append(f"| `{name}` | {where} | {_cell(note)} |")
    return "\n".join(table) + "\n"


# README blocks generated here: marker name → generator
BLOCKS = {"recipe-reference": recipe_reference, "trl-names": trl_table}


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def replace_block(text: str, block: str, source: str = "README.md", name: str = "recipe-reference") -> str:
    """`text` with the lines between the `name` markers replaced by `block`.

    >>> replace_block("a\\n<!-- recipe-reference:begin -->\\nold\\n<!-- recipe-reference:end -->\\nz", "new")
    'a\\n<!-- recipe-reference:begin -->\\nnew\\n<!-- recipe-reference:end -->\\nz'
    """
    begin, end = _markers(name)
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise ValueError(f"{source}: needs exactly one {begin} followed by one {end}")
    head, rest = text.split(begin)
    tail = rest.split(end)[1]
    return f"{head}{begin}\n{block.strip()}\n{end}{tail}"


def block_of(text: str, name: str = "recipe-reference") -> str:
    """The text between the `name` markers (stripped); "" when they are missing."""
    begin, end = _markers(name)
    return text.split(begin)[1].split(end)[0].strip() if begin in text else ""


def main(argv: list[str] | None = None) -> int:
    """Print the reference, write the README blocks (--write) or check that they are current (--check)."""
    p = argparse.ArgumentParser(prog="python -m coldstart.tools.reference", description=__doc__.splitlines()[0])
    p.add_argument("--write", metavar="README", help="replace the blocks between the recipe-reference and "
                   "trl-names markers")
    p.add_argument("--check", metavar="README", help="exit 1 if a block differs from the generated one")
    args = p.parse_args(argv)
    if args.write:
        path = Path(args.write)
        text = path.read_text()
        for name, make in BLOCKS.items():
            text = replace_block(text, make(), str(path), name)
        path.write_text(text)
    elif args.check:
        text = Path(args.check).read_text()
        stale = [name for name, make in BLOCKS.items() if block_of(text, name) != make().strip()]
        if stale:
            print(f"{args.check}: out of date ({', '.join(stale)}): python -m coldstart.tools.reference --write "
                  f"{args.check}", file=sys.stderr)
            return 1
    else:
        print(recipe_reference())
    return 0


if __name__ == "__main__":
    sys.exit(main())
