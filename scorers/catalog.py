"""The scorer catalogue: ``docs/scorers.md``, generated from the scorer registry.

Every registered scorer is listed with its kind, version, description (its class docstring),
parameters (from its pydantic fields: name, type, default, description) and an ``evalsvc.yaml``
example. The example comes from the scorer class itself, a class attribute holding one evaluator
of ``evalsvc.yaml`` without its ``scorer`` key::

    example: ClassVar[dict[str, Any]] = {"name": "reply_not_empty", "target": {"step": "reply"}, "params": {}}

Each example is validated while the page is built: as an evaluator (``EvaluatorSpec``) and by
creating the scorer from its ``params``, so an example that does not validate fails the build. A
scorer without an example gets a clearly marked skeleton of its required parameters instead.

    python -m scorers.catalog > docs/scorers.md          # the built-in scorers (what `make docs` runs)
    python -m scorers.catalog --all                      # plus third-party scorers (entry points)

>>> from scorers.catalog import scorers_markdown
>>> page = scorers_markdown()
>>> "### `json_schema`" in page and "scorer: json_schema" in page
True
"""

from __future__ import annotations

import argparse
import inspect
import sys
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types as at
import orjson
import yaml
from pydantic import AfterValidator, BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from evalsvc.errors import EvalServiceError
from evalsvc.schemas import EvaluatorSpec

from . import registry
from .base import check_path

__all__ = ["CatalogError", "Param", "builtin_scorers", "example_of", "params_of", "scorers_markdown"]

KIND_TITLES = {"rule": "Rule scorers", "statistical": "Statistical scorers", "llm": "LLM-as-judge scorers"}
_SIMPLE_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}


class CatalogError(ValueError):
    """A scorer's documentation cannot be built (its example does not validate)."""


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    type: str
    default: str
    description: str
    required: bool


def builtin_scorers() -> dict[str, type[Any]]:
    """The registered scorers that ship with evalsvc (their classes live in this package)."""
    out = {}
    for name in registry.available():
        cls = registry.get(name)
        if cls.__module__.split(".")[0] == registry.__name__.split(".")[0]:
            out[name] = cls
    return out


def _all_scorers() -> dict[str, type[Any]]:
    registry.load_entry_points(ep.name for ep in entry_points(group="evalsvc.scorers"))
    return {name: registry.get(name) for name in registry.available()}


def _type_name(tp: Any) -> str:
    """A reader's name for a parameter's type: ``string``, ``number``, ``list of string``, ..."""
    origin = get_origin(tp)
    if origin is Annotated:
        base, *meta = get_args(tp)
        if any(isinstance(m, AfterValidator) and m.func is check_path for m in meta):
            return "step path"
        return _type_name(base)
    if tp in _SIMPLE_TYPES:
        return _SIMPLE_TYPES[tp]
    if tp is Any:
        return "any"
    if origin is Literal:
        return " | ".join(f"`{orjson.dumps(a).decode()}`" for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin in (list, tuple, set, frozenset):
        args = [a for a in get_args(tp) if a is not Ellipsis]
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict or tp is dict or (isinstance(tp, type) and issubclass(tp, Mapping)):
        return "object"
    if origin is not None:
        return _type_name(origin)
    return getattr(tp, "__name__", str(tp))


_BOUNDS = (
    (at.Gt, "gt", ">"),
    (at.Ge, "ge", "≥"),
    (at.Lt, "lt", "<"),
    (at.Le, "le", "≤"),
    (at.MinLen, "min_length", "length ≥"),
    (at.MaxLen, "max_length", "length ≤"),
)


def _constraints(metadata: Iterable[Any]) -> str:
    parts = []
    for m in metadata:
        for kind, attr, sign in _BOUNDS:
            if isinstance(m, kind):
                parts.append(f"{sign} {getattr(m, attr)}")
    return f" ({', '.join(parts)})" if parts else ""


def _literal(value: Any) -> str:
    try:
        return f"`{orjson.dumps(value).decode()}`"
    except TypeError:
        return f"`{value!r}`"


def _field_type(info: FieldInfo) -> str:
    if any(isinstance(m, AfterValidator) and m.func is check_path for m in info.metadata):
        return "step path"
    return _type_name(info.annotation) + _constraints(info.metadata)


def params_of(cls: type[Any]) -> list[Param]:
    """A scorer's parameters: its pydantic fields, or its constructor's arguments."""
    out = []
    if isinstance(cls, type) and issubclass(cls, BaseModel):
        for field_name, info in cls.model_fields.items():
            required = info.is_required()
            if required:
                default = "required"
            elif info.default_factory is not None:
                default = _literal(info.default_factory())  # type: ignore[call-arg]
            else:
                default = _literal(None if info.default is PydanticUndefined else info.default)
            name = info.alias or field_name
            out.append(Param(name, _field_type(info), default, info.description or "", required))
        return out
    try:
        signature = inspect.signature(cls, eval_str=True)
    except (NameError, TypeError, SyntaxError):  # annotations that do not resolve: shown as written
        signature = inspect.signature(cls)
    for p in signature.parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        required = p.default is p.empty
        if p.annotation is p.empty:
            tp = "any"
        elif isinstance(p.annotation, str):
            tp = p.annotation
        else:
            tp = _type_name(p.annotation)
        out.append(Param(p.name, tp, "required" if required else _literal(p.default), "", required))
    return out


def example_of(name: str, cls: type[Any]) -> dict[str, Any] | None:
    """The scorer's ``example`` as an evaluator (``scorer`` filled in), validated; None if it has none."""
    raw = getattr(cls, "example", None)
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise CatalogError(f"scorer {name!r}: its example must be a mapping (one evaluator), not {type(raw).__name__}")
    example = {"name": raw.get("name", f"my_{name}"), "scorer": name, **{k: v for k, v in raw.items() if k != "name"}}
    if example["scorer"] != name:
        raise CatalogError(f"scorer {name!r}: its example names another scorer, {example['scorer']!r}")
    try:
        spec = EvaluatorSpec.model_validate(example)
        registry.create(name, spec.params)
    except EvalServiceError as exc:
        raise CatalogError(f"scorer {name!r}: its example does not validate: {exc.message}") from None
    except ValueError as exc:  # pydantic's ValidationError of the evaluator
        raise CatalogError(f"scorer {name!r}: its example does not validate: {exc}") from None
    return example


def _skeleton(name: str, params: list[Param]) -> dict[str, Any]:
    required = {p.name: "<" + p.type.replace(" | ", " or ").replace("`", "") + ">" for p in params if p.required}
    return {"name": f"my_{name}", "scorer": name, "params": required}


class _Dumper(yaml.SafeDumper):
    """Indents a list under its key, as evalsvc.yaml files are written."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _yaml(evaluator: dict[str, Any]) -> str:
    body = yaml.dump(
        {"evaluators": [evaluator]},
        Dumper=_Dumper,
        sort_keys=False,
        allow_unicode=True,
        width=100,
        default_flow_style=None,
    )
    return f"```yaml\n{body}```"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _doc(cls: type[Any]) -> str:
    doc = cls.__dict__.get("__doc__")
    return inspect.cleandoc(doc) if isinstance(doc, str) and doc.strip() else ""


def _summary(doc: str) -> str:
    para = doc.split("\n\n")[0]
    return " ".join(para.split())


def _section(name: str, cls: type[Any]) -> str:
    kind = getattr(cls, "kind", "?")
    version = getattr(cls, "version", "?")
    doc = _doc(cls)
    params = params_of(cls)
    lines = [
        f"### `{name}`",
        "",
        f"kind: {kind} · version: {version} · class: `{cls.__module__}.{cls.__qualname__}`",
        "",
    ]
    lines += [doc or "_No description: the class has no docstring._", ""]
    if params:
        lines += ["| parameter | type | default | description |", "| --- | --- | --- | --- |"]
        lines += [f"| `{p.name}` | {_cell(p.type)} | {_cell(p.default)} | {_cell(p.description)} |" for p in params]
    else:
        lines.append("No parameters.")
    lines.append("")
    example = example_of(name, cls)
    if example is not None:
        lines += ["Example:", "", _yaml(example)]
    else:
        lines += [
            f"> **No example yet:** `{cls.__qualname__}` defines no `example`. A skeleton with its required",
            "> parameters (replace each `<…>`):",
            "",
            _yaml(_skeleton(name, params)),
        ]
    return "\n".join(lines) + "\n"


def scorers_markdown(*, scorers: Mapping[str, type[Any]] | None = None) -> str:
    """The catalogue page for the given scorers (default: the built-in ones)."""
    chosen = dict(scorers) if scorers is not None else builtin_scorers()
    order = [*KIND_TITLES, *sorted({str(getattr(c, "kind", "other")) for c in chosen.values()} - set(KIND_TITLES))]
    by_kind: dict[str, list[str]] = {k: [] for k in order}
    for name in sorted(chosen):
        by_kind[str(getattr(chosen[name], "kind", "other"))].append(name)
    out = [
        "# Scorers",
        "",
        "<!-- Generated from the scorer registry by `python -m scorers.catalog`; do not edit, run `make docs`. -->",
        "",
        "A scorer grades one step. An evaluator in `evalsvc.yaml` names a scorer and gives its `params`,",
        "which are validated when the file is applied (`evalsvc evaluators apply evalsvc.yaml`): a bad",
        "parameter is rejected there, with its name, not when the first step arrives. Parameters of type",
        '"step path" are dotted paths into the step, such as `output`, `output.total`, `expected.label` or',
        "`attributes.customer`; text in `input`, `output` and `expected` that holds JSON is decoded on the way.",
        "",
        "A scorer returns a value in [0, 1] and, for the rule scorers, a pass or a fail; a step that lacks",
        "what the scorer needs is `skipped` with the reason, and a scorer that cannot judge a step records an",
        "`error` on that result only. Third-party scorers are registered from the `evalsvc.scorers` entry-point",
        "group and appear here when the page is built with `python -m scorers.catalog --all`.",
        "",
        "| scorer | kind | version | what it checks |",
        "| --- | --- | --- | --- |",
    ]
    for kind in order:
        for name in by_kind[kind]:
            cls = chosen[name]
            summary = _summary(_doc(cls)) or "—"
            out.append(f"| [`{name}`](#{name}) | {kind} | {getattr(cls, 'version', '?')} | {_cell(summary)} |")
    for kind in order:
        if not by_kind[kind]:
            continue
        out += ["", f"## {KIND_TITLES.get(kind, kind.capitalize() + ' scorers')}", ""]
        out.append("\n".join(_section(name, chosen[name]) for name in by_kind[kind]).rstrip("\n"))
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scorers.catalog", description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--all", action="store_true", help="include third-party scorers (entry points)")
    args = parser.parse_args(argv)
    try:
        page = scorers_markdown(scorers=_all_scorers() if args.all else None)
    except CatalogError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 4
    sys.stdout.write(page)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
