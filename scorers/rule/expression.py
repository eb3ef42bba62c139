"""``expression``: a Python-like expression over the step's fields, evaluated in a sandbox.

The names are the step's fields (``output``, ``input``, ``expected``, ``latency_ms``,
``input_tokens``, ``output_tokens``, ``cost_usd``, ``model``, ``status``, ``attributes``, …; text in
``input``/``output``/``expected`` that holds a JSON object or array is decoded). ``output.total``
and ``output["total"]`` both read a key. A ``bool`` result is the verdict; a number in [0, 1] is the
score (the evaluator's ``threshold`` decides); ``None`` skips the step. ``true``, ``false`` and
``null`` may be written as in YAML::

    >>> import asyncio
    >>> from evalsvc.schemas import StepPublic
    >>> from scorers.registry import create
    >>> step = StepPublic(id=1, run_id=1, source="json", run_key="r", step_key="s", attempt=1, name="s",
    ...                   kind="llm", status="completed", output={"total": 12.5, "lines": [4, 8.5]})
    >>> scorer = create("expression", {"expression": "abs(sum(output.lines) - output.total) < 0.01"})
    >>> asyncio.run(scorer.score(step)).passed
    True

The sandbox is simpleeval's (no imports, no names but the step's fields and a few pure functions,
no attribute whose name starts with ``_``, no I/O) made stricter here: the expression is parsed
and checked against an allow-list of syntax when the evaluator is applied; it is at most
``MAX_EXPRESSION_CHARS`` long; attributes are limited to a list of harmless methods per type;
f-strings, ``%``-formatting, repeating lists and huge powers are refused; the functions that
work in one C call (``str``, ``sorted``, ``min``, ``max``, ``sum``) take numbers or text only, so
each step stays cheap; and every evaluation step checks a deadline (``timeout_ms``), so no
expression runs much past its time limit.
"""

from __future__ import annotations

import ast
import math
import operator
import time
from functools import cached_property
from typing import Any, ClassVar

import orjson
import simpleeval  # type: ignore[import-untyped]
from pydantic import Field, field_validator

from evalsvc.errors import UnrecoverableError
from evalsvc.schemas import Score, StepPublic

from ..base import BaseScorer
from ..registry import register
from .common import verdict

__all__ = ["MAX_EXPRESSION_CHARS", "Expression", "ExpressionTimeout", "compile_expression", "evaluate"]

MAX_EXPRESSION_CHARS = 1000
_MAX_POWER_BITS = 4096
_JSON_FIELDS = frozenset({"input", "output", "expected"})
_CONSTANTS = {"True": True, "False": False, "None": None, "true": True, "false": False, "null": None}


class ExpressionTimeout(simpleeval.InvalidExpression):  # type: ignore[misc]
    """The expression ran past its time limit."""


def _power(a: Any, b: Any) -> Any:
    if isinstance(a, int) and isinstance(b, int) and b > 0 and abs(a) > 1:
        if b * abs(a).bit_length() > _MAX_POWER_BITS:
            raise simpleeval.NumberTooHigh(f"{a} ** {b} is too large")
    elif isinstance(b, int | float) and abs(b) > simpleeval.MAX_POWER:
        raise simpleeval.NumberTooHigh(f"{a} ** {b} is too large")
    return a**b


def _modulo(a: Any, b: Any) -> Any:
    if isinstance(a, str | bytes):
        raise simpleeval.FeatureNotAvailable("%-formatting is not available")
    return operator.mod(a, b)


def _round(number: Any, ndigits: int | None = None) -> Any:
    if ndigits is not None and abs(ndigits) > 15:
        raise ValueError("round: ndigits must be between -15 and 15")
    return round(number, ndigits)


_SCALARS = (str, int, float, bool, type(None))


def _scalar_items(values: Any, what: str) -> list[Any]:
    """The items of an iterable, checked to be scalars: comparing or printing nested containers
    is one C call whose cost the time limit cannot interrupt."""
    items = list(values)
    if len(items) > simpleeval.MAX_STRING_LENGTH:
        raise simpleeval.IterableTooLong(f"{what}: more than {simpleeval.MAX_STRING_LENGTH} items")
    if not all(isinstance(v, _SCALARS) for v in items):
        raise simpleeval.FeatureNotAvailable(f"{what} takes numbers or text, not lists or objects")
    return items


def _mult(a: Any, b: Any) -> Any:
    if isinstance(a, list | tuple) or isinstance(b, list | tuple):
        raise simpleeval.FeatureNotAvailable("repeating a list with * is not available")
    return simpleeval.safe_mult(a, b)


def _str(value: Any = "") -> str:
    if not isinstance(value, _SCALARS):
        raise simpleeval.FeatureNotAvailable("str() takes a number or text, not a list or an object")
    return str(value)


def _sum(values: Any, start: Any = 0) -> Any:
    items = list(values)
    if not all(isinstance(v, int | float) for v in [*items, start]):
        raise simpleeval.FeatureNotAvailable("sum() adds numbers only")
    return sum(items, start)


def _extreme(pick: Any, what: str) -> Any:
    def extreme(*args: Any, **kwargs: Any) -> Any:
        values = args[0] if len(args) == 1 else args
        return pick(_scalar_items(values, what), **kwargs)

    return extreme


def _sorted(values: Any, *, reverse: bool = False) -> list[Any]:
    return sorted(_scalar_items(values, "sorted()"), reverse=reverse)


FUNCTIONS: dict[str, Any] = {
    "abs": abs,
    "all": all,
    "any": any,
    "bool": bool,
    "float": float,
    "int": int,
    "len": len,
    "max": _extreme(max, "max()"),
    "min": _extreme(min, "min()"),
    "round": _round,
    "sorted": _sorted,
    "str": _str,
    "sum": _sum,
}
"""The functions an expression may call (besides ``list``, ``tuple``, ``dict`` and ``set``)."""

_TEXT_METHODS = {
    "capitalize", "casefold", "count", "endswith", "find", "isalnum", "isalpha", "isdigit", "islower", "isnumeric",
    "isspace", "isupper", "lower", "lstrip", "partition", "removeprefix", "removesuffix", "rfind", "rpartition",
    "rsplit", "rstrip", "split", "splitlines", "startswith", "strip", "title", "upper",
}  # fmt: skip
ALLOWED_ATTRS: dict[type | None, set[str]] = {
    str: _TEXT_METHODS,
    dict: {"get", "items", "keys", "values"},
    list: {"count", "index"},
    tuple: {"count", "index"},
    set: {"difference", "intersection", "isdisjoint", "issubset", "issuperset", "union"},
    int: {"real", "imag"},
    float: {"is_integer", "real", "imag"},
    bool: set(),
    None: set(),
}
"""Attributes an expression may read, per type (besides the keys of an object)."""

_SYNTAX: tuple[type[ast.AST], ...] = (
    ast.Expression, ast.BoolOp, ast.BinOp, ast.UnaryOp, ast.Compare, ast.IfExp, ast.Call, ast.keyword,
    ast.Constant, ast.Attribute, ast.Subscript, ast.Slice, ast.Name, ast.Load, ast.Store, ast.List, ast.Tuple,
    ast.Set, ast.Dict, ast.ListComp, ast.GeneratorExp, ast.DictComp, ast.comprehension,
    ast.And, ast.Or, ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.USub, ast.UAdd,
    ast.Not, ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn, ast.Is, ast.IsNot,
)  # fmt: skip


def _names() -> frozenset[str]:
    return frozenset(StepPublic.model_fields) | frozenset(FUNCTIONS) | {"list", "tuple", "dict", "set"}


def compile_expression(text: str) -> ast.expr:
    """Parse and check an expression; a ``ValueError`` says what is wrong with it."""
    if not text.strip():
        raise ValueError("the expression is empty")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ValueError(f"the expression is {len(text)} characters long; at most {MAX_EXPRESSION_CHARS} are allowed")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"not a valid expression: {exc.msg} (column {exc.offset})") from None
    except (RecursionError, MemoryError):
        raise ValueError("the expression is nested too deeply") from None
    known = _names()
    bound = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    for node in ast.walk(tree):
        if not isinstance(node, _SYNTAX):
            raise ValueError(f"{type(node).__name__} is not allowed in an expression")
        if isinstance(node, ast.Name) and node.id not in known | bound | _CONSTANTS.keys():
            raise ValueError(
                f"unknown name {node.id!r}; use the step's fields: {', '.join(sorted(StepPublic.model_fields))}"
            )
        if isinstance(node, ast.Attribute) and (
            node.attr.startswith(tuple(simpleeval.DISALLOW_PREFIXES)) or node.attr in simpleeval.DISALLOW_METHODS
        ):
            raise ValueError(f"attribute {node.attr!r} is not allowed")
        if isinstance(node, ast.keyword) and node.arg is None:
            raise ValueError("** arguments are not allowed")
    return tree.body


class _Sandbox(simpleeval.EvalWithCompoundTypes):  # type: ignore[misc]
    """simpleeval with stricter operators and attributes, and a deadline checked at every node."""

    def __init__(self, names: dict[str, Any], deadline: float) -> None:
        operators = dict(simpleeval.DEFAULT_OPERATORS)
        operators.update({ast.Pow: _power, ast.Mod: _modulo, ast.Mult: _mult})
        super().__init__(operators=operators, functions=dict(FUNCTIONS), names=names, allowed_attrs=ALLOWED_ATTRS)
        for node_type in (ast.JoinedStr, ast.FormattedValue):
            self.nodes.pop(node_type, None)
        self.deadline = deadline

    def _eval(self, node: ast.AST) -> Any:
        if time.monotonic() > self.deadline:
            raise ExpressionTimeout("the expression ran past its time limit")
        return super()._eval(node)

    def _eval_attribute(self, node: ast.Attribute) -> Any:
        attr = node.attr
        if attr.startswith(tuple(simpleeval.DISALLOW_PREFIXES)) or attr in simpleeval.DISALLOW_METHODS:
            raise simpleeval.FeatureNotAvailable(f"attribute {attr!r} is not available")
        value = self._eval(node.value)
        if isinstance(value, dict) and attr in value:  # an object's keys: `output.total`
            return value[attr]
        allowed = ALLOWED_ATTRS.get(type(value) if value is not None else None)
        if allowed is None or attr not in allowed:
            if value is None or isinstance(value, dict):
                raise simpleeval.AttributeDoesNotExist(attr, self.expr)
            raise simpleeval.FeatureNotAvailable(f"'.{attr}' is not available on a {type(value).__name__}")
        return getattr(value, attr)


def step_names(step: StepPublic) -> dict[str, Any]:
    """The names an expression sees: the step's fields, JSON text decoded."""
    names = {**_CONSTANTS, **step.model_dump(mode="json")}
    for key in _JSON_FIELDS:
        value = names.get(key)
        if isinstance(value, str) and value.lstrip()[:1] in ("{", "["):
            try:
                names[key] = orjson.loads(value)
            except orjson.JSONDecodeError:
                pass
    return names


def evaluate(tree: ast.expr, names: dict[str, Any], *, timeout_s: float) -> Any:
    """Evaluate a compiled expression; raises ``ExpressionTimeout`` past the time limit."""
    return _Sandbox(names, time.monotonic() + timeout_s).eval("", previously_parsed=tree)


@register
class Expression(BaseScorer):
    """A sandboxed expression over the step's fields: ``true``/``false`` is the verdict, a number
    in [0, 1] the score, ``None`` a skip. A name or key the step lacks skips the step too.

    Names: the step's fields (``output``, ``input``, ``expected``, ``latency_ms``, ``input_tokens``,
    ``output_tokens``, ``cost_usd``, ``model``, ``status``, ``attributes``, ...); ``output.total`` and
    ``output["total"]`` read a key. Functions: ``abs``, ``all``, ``any``, ``bool``, ``dict``,
    ``float``, ``int``, ``len``, ``list``, ``max``, ``min``, ``round``, ``set``, ``sorted``, ``str``,
    ``sum``, ``tuple`` (``min``, ``max``, ``sorted``, ``sum`` and ``str`` take numbers or text, not
    nested lists); text methods such as ``lower()``, ``strip()``, ``split()``, ``startswith()``;
    comprehensions. No imports, no I/O, no ``_`` attributes, no f-strings or ``%``-formatting; the
    expression is checked when the evaluator is applied and every evaluation has a time limit."""

    name = "expression"
    example: ClassVar[dict[str, Any]] = {
        "name": "lines_add_up",
        "target": {"step": "extract_invoice"},
        "params": {"expression": "len(output.lines) > 0 and abs(sum(output.lines) - output.total) < 0.01"},
    }
    expression: str = Field(
        description=f"The expression (at most {MAX_EXPRESSION_CHARS} characters); names are the step's fields."
    )
    timeout_ms: float = Field(default=100, gt=0, le=5000, description="Time limit of one evaluation, in milliseconds.")

    @field_validator("expression")
    @classmethod
    def _compiles(cls, value: str) -> str:
        compile_expression(value)
        return value

    @cached_property
    def _tree(self) -> ast.expr:
        return compile_expression(self.expression)

    async def score(self, step: StepPublic) -> Score:
        try:
            result = evaluate(self._tree, step_names(step), timeout_s=self.timeout_ms / 1000)
        except ExpressionTimeout:
            raise UnrecoverableError(
                f"the expression ran longer than {self.timeout_ms:g} ms", field="expression"
            ) from None
        except (simpleeval.AttributeDoesNotExist, KeyError, IndexError) as exc:
            return Score(explanation=f"the step lacks what the expression reads: {_describe(exc)}")
        except TypeError as exc:
            if "NoneType" in str(exc):
                return Score(explanation=f"the expression met a missing value: {exc}")
            raise UnrecoverableError(f"the expression failed: {exc}", field="expression") from None
        except (simpleeval.InvalidExpression, ArithmeticError, ValueError) as exc:
            raise UnrecoverableError(f"the expression failed: {_describe(exc)}", field="expression") from None
        if result is None:
            return Score(explanation="the expression returned None")
        if isinstance(result, bool):
            return verdict(result, f"expression is false: {self.expression[:200]}")
        if isinstance(result, int | float) and math.isfinite(result) and 0 <= result <= 1:
            return Score(value=float(result))
        shown = repr(result)[:80]
        raise UnrecoverableError(
            f"the expression returned {shown}; it must return true/false, a number in [0, 1] or None",
            field="expression",
        )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, simpleeval.AttributeDoesNotExist):
        return f"no {exc.attr!r}"
    if isinstance(exc, KeyError):
        return f"no key {exc.args[0]!r}" if exc.args else "a missing key"
    return str(exc) or type(exc).__name__
