"""The recipe reference, generated from the schema in coldstart/config.py so that it cannot drift.

`recipe_reference()` walks `config.Recipe`: one markdown table per section (`run`, `model`, ..., and every
nested section such as `rl.pad`, `model.lora` or the items of `rl.rewards`), with each key's type (as written
in the source), default and description. A description is the field's pydantic `description` when it has
one, else the `# comment` that ends the field's (possibly multi-line) statement, else the comment lines right
above it (a field with none fails tests/test_reference.py). Comments are read with `ast` + `tokenize` from
the module that defines each section class, so sections added anywhere are picked up.

    python -m coldstart.tools.reference                    # print the reference
    python -m coldstart.tools.reference --write README.md  # replace the block between the recipe-reference markers
    python -m coldstart.tools.reference --check README.md  # exit 1 when README.md is out of date
"""

from __future__ import annotations

import argparse
import ast
import io
import sys
import tokenize
import typing
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

BEGIN, END = "<!-- recipe-reference:begin -->", "<!-- recipe-reference:end -->"

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


def _nested_model(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The pydantic model inside an annotation (`X`, `X | None`, `list[X]`), and whether it is a list item."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    for arg in args:
        model, _ = _nested_model(arg)
        if model is not None:
            return model, origin is list
    return None, False


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
        from ..config import Recipe

        return [s for name, f in Recipe.model_fields.items() for s in sections(_nested_model(f.annotation)[0], name)]
    out = [(prefix, model)]
    for name, field in model.model_fields.items():
        nested, is_list = _nested_model(field.annotation)
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
    return "\n".join([*parts, trl_table()])


def trl_table() -> str:
    """The markdown table of TRL config names and the recipe keys that do their job (config.TRL_NAMES)."""
    from coldstart.config import TRL_NAMES

    head = ("#### Coming from TRL\n"
            "TRL's `GRPOConfig` / `SFTConfig` / `DPOConfig` names and the recipe keys that do their job; an unknown "
            "key with one of these names gets this hint. The main differences: batches count prompts "
            "(`rl.prompts_per_step` × `rl.group_size` completions), not completions per device; clip-higher is on "
            "by default (`rl.eps_high: 0.28`); TRL's `loss_type` is our `rl.loss_agg`, and `dr_grpo` in "
            "`rl.advantage` is the estimator (no std scaling). Reward functions are called as TRL calls them.\n")
    table = ["| TRL | coldstart | note |", "|---|---|---|"]
    table += [f"| `{name}` | `{key}` | {_cell(note)} |" for name, (key, note) in TRL_NAMES.items()]
    return head + "\n" + "\n".join(table) + "\n"


def replace_block(text: str, block: str, source: str = "README.md") -> str:
    """`text` with the lines between the BEGIN and END markers replaced by `block`.

    >>> replace_block("a\\n<!-- recipe-reference:begin -->\\nold\\n<!-- recipe-reference:end -->\\nz", "new")
    'a\\n<!-- recipe-reference:begin -->\\nnew\\n<!-- recipe-reference:end -->\\nz'
    """
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise ValueError(f"{source}: needs exactly one {BEGIN} followed by one {END}")
    head, rest = text.split(BEGIN)
    tail = rest.split(END)[1]
    return f"{head}{BEGIN}\n{block.strip()}\n{END}{tail}"


def block_of(text: str) -> str:
    """The text between the markers (stripped)."""
    return text.split(BEGIN)[1].split(END)[0].strip()


def main(argv: list[str] | None = None) -> int:
    """Print the reference, write it into a README (--write) or check that one is current (--check)."""
    p = argparse.ArgumentParser(prog="python -m coldstart.tools.reference", description=__doc__.splitlines()[0])
    p.add_argument("--write", metavar="README", help="replace the block between the recipe-reference markers")
    p.add_argument("--check", metavar="README", help="exit 1 if the block differs from the generated reference")
    args = p.parse_args(argv)
    ref = recipe_reference()
    if args.write:
        path = Path(args.write)
        path.write_text(replace_block(path.read_text(), ref, str(path)))
    elif args.check:
        text = Path(args.check).read_text()
        if BEGIN not in text or block_of(text) != ref.strip():
            print(f"{args.check}: the recipe reference is out of date: python -m coldstart.tools.reference --write "
                  f"{args.check}", file=sys.stderr)
            return 1
    else:
        print(ref)
    return 0


if __name__ == "__main__":
    sys.exit(main())
