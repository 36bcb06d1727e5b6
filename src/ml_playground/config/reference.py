"""The configuration reference (docs/configuration.md), rendered from the pydantic schema.

The schema is the single source of truth: every key, its type, default, bounds and description
live on the `Field`s in `schema.py`. This module turns them into Markdown, so the reference
cannot drift from the code; `tests/unit/config/test_reference_doc.py` fails when the committed
file differs from what this renders. Regenerate it with

    make docs          # or: python -m ml_playground.config.reference > docs/configuration.md
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
import tomli_w
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from ml_playground.config.schema import ExperimentConfig

REGENERATE = "make docs"
"""The command that rewrites docs/configuration.md (named in the sync test's failure)."""

INTRO = """\
# Configuration reference

<!-- Generated from src/ml_playground/config/schema.py by `python -m ml_playground.config.reference`
     (`make docs`). Do not edit by hand: change the schema's Field descriptions and regenerate. -->

An experiment is one TOML file: top-level keys, then one table per section. Every section
rejects unknown keys (naming the closest allowed one), and values are checked against the types
and bounds below before anything runs.

Layers, later wins: the defaults below → the preset (or your `.toml` file) → `--config FILE` →
`KEY=VALUE` overrides on the command line, in dotted form (`train.max_iters=100`; values are TOML
literals, bare words are strings). `ml-playground config show EXPERIMENT [KEY=VALUE ...]` prints
the fully resolved config; the same TOML is saved with every run and every checkpoint.

"Unset" means the key has no value (TOML has no null: leave it out). Bounds are inclusive
(≥, ≤) or exclusive (>, <) as shown.
"""


def render_reference(root: type[BaseModel] = ExperimentConfig) -> str:
    """Markdown for `root`: its scalar keys first, then one table per sub-model section."""
    top = {name: f for name, f in root.model_fields.items() if _section_model(f) is None}
    parts = [INTRO, "## Top level\n", *_table(top, prefix=""), ""]
    for name, field in root.model_fields.items():
        section = _section_model(field)
        if section is None:
            continue
        parts.append(f"## [{name}]\n")
        if section.__doc__:
            parts.append(" ".join(section.__doc__.split()) + "\n")
        parts.extend(_table(section.model_fields, prefix=f"{name}."))
        parts.extend(_rules(section))
        parts.append("")
    rules = list(_rules(root))
    if rules:
        parts.extend(["## Rules across sections\n", *rules])
    return "\n".join(parts).rstrip("\n") + "\n"


def _section_model(field: FieldInfo) -> type[BaseModel] | None:
    annotation = field.annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _table(fields: dict[str, FieldInfo], prefix: str) -> Iterator[str]:
    yield "| key | type | default | description |"
    yield "| --- | --- | --- | --- |"
    for name, field in fields.items():
        kind = _type_name(field.annotation)
        bounds = _constraints(field)
        if bounds:
            kind = f"{kind}, {bounds}"
        description = _escape(field.description or "")
        yield (
            f"| `{prefix}{name}` | {_cell(kind)} | {_cell(_default(field))} | "
            f"{_cell(description)} |"
        )


def _rules(model: type[BaseModel]) -> Iterator[str]:
    """Cross-field validators that document themselves (a docstring) become bullet points."""
    for decorator in model.__pydantic_decorators__.model_validators.values():
        doc = getattr(decorator.func, "__doc__", None)
        if doc:
            yield f"- {_escape(' '.join(doc.split()))}"


def _type_name(annotation: Any) -> str:
    """A TOML-flavoured name: integer, float, string, boolean, array of X, one of `a`, `b`."""
    origin = get_origin(annotation)
    if origin is Literal:
        return "one of " + ", ".join(f"`{value}`" for value in get_args(annotation))
    if origin in (Union, types.UnionType):
        args = [arg for arg in get_args(annotation) if arg is not type(None)]
        names = " or ".join(_type_name(arg) for arg in args)
        return f"{names} (optional)" if len(args) < len(get_args(annotation)) else names
    if origin is list:
        (item,) = get_args(annotation)
        return f"array of {_type_name(item)}"
    scalars: dict[Any, str] = {int: "integer", float: "float", str: "string", bool: "boolean"}
    if annotation in scalars:
        return scalars[annotation]
    return getattr(annotation, "__name__", str(annotation))


def _constraints(field: FieldInfo) -> str:
    symbols = (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<"))
    bounds = []
    for item in field.metadata:
        for attr, symbol in symbols:
            value = getattr(item, attr, None)
            if value is not None:
                bounds.append(f"{symbol} {_literal(value)}")
        if isinstance(item, annotated_types.MinLen):
            size = item.min_length
            bounds.append("non-empty" if size == 1 else f"at least {size} characters")
        pattern = getattr(item, "pattern", None)
        if pattern is not None:
            bounds.append(f"matching `{pattern}`")
    return ", ".join(bounds)


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if value is None:
        return "unset"
    if isinstance(value, BaseModel):
        return "(section)"
    return f"`{_literal(value)}`"


def _literal(value: Any) -> str:
    """`value` as TOML writes it: true, "text", [], 0.001."""
    return tomli_w.dumps({"v": value}).removeprefix("v = ").rstrip("\n")


def _cell(text: str) -> str:
    """Table cells cannot hold a bare `|` or a line break."""
    return text.replace("|", "\\|").replace("\n", " ")


def _escape(text: str) -> str:
    """Escape `<` (else `<workdir>` renders as an HTML tag) and `*` outside `code spans`."""
    pieces = text.split("`")
    for i in range(0, len(pieces), 2):
        pieces[i] = pieces[i].replace("<", "\\<").replace("*", "\\*")
    return "`".join(pieces)


def main() -> None:
    sys.stdout.write(render_reference())


if __name__ == "__main__":
    main()
