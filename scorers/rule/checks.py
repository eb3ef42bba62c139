"""The first rule scorers: ``json_schema``, ``regex``, ``not_empty``, ``max_latency_ms``,
``max_cost_usd``, ``equals`` and ``contains``.

Each returns ``passed`` with a value of 1 or 0 and an explanation of a failure; a step that lacks
what the rule needs (no latency recorded, no expected value) gets ``Score(value=None)``, which the
pipeline stores as ``skipped`` with that explanation::

    >>> import asyncio
    >>> from evalsvc.schemas import StepPublic
    >>> from scorers.rule.checks import Regex
    >>> step = StepPublic(id=1, run_id=1, source="json", run_key="r", step_key="s", attempt=1,
    ...                   name="s", kind="llm", status="completed", output="Invoice INV-42")
    >>> asyncio.run(Regex(pattern=r"INV-\\d+").score(step)).passed
    True
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import cached_property
from numbers import Number
from typing import Any, ClassVar

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import Field, field_validator

from evalsvc.schemas import Score, StepPublic

from ..base import BaseScorer, StepPath, as_text, get_field
from ..registry import register
from .common import FIELD, ExpectedValue, skip, verdict

__all__ = ["Contains", "Equals", "JsonSchema", "MaxCostUsd", "MaxLatencyMs", "NotEmpty", "Regex"]


_ANNOTATIONS = frozenset({"title", "description", "$comment", "examples", "default", "deprecated"})
_QUICK_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "null": lambda v: v is None,
    "boolean": lambda v: isinstance(v, bool),
    # stricter than JSON Schema (1.0 is an integer, Decimal a number): those go to jsonschema
    "integer": lambda v: type(v) is int,
    "number": lambda v: type(v) is int or type(v) is float,
}
_BOUNDS: dict[str, Callable[[Any, Any], bool]] = {
    "minimum": lambda v, b: v >= b,
    "maximum": lambda v, b: v <= b,
    "exclusiveMinimum": lambda v, b: v > b,
    "exclusiveMaximum": lambda v, b: v < b,
}


def _quick_check(schema: Any) -> Callable[[Any], bool] | None:
    """A fast check for schemas made of the common keywords (type, required, properties, string
    lengths, pattern, numeric bounds), or None for any other schema.

    It answers True only for instances that jsonschema would accept (it applies each keyword as
    jsonschema does, and is stricter where it is unsure); False means "ask jsonschema", which
    also words the error. Valid outputs, the common case, then skip jsonschema's slow walk."""
    if schema is True:
        return _always
    if not isinstance(schema, dict):
        return None
    checks: list[Callable[[Any], bool]] = []
    for key, arg in schema.items():
        if key in _ANNOTATIONS:
            continue
        check = _quick_keyword(key, arg)
        if check is None:
            return None
        checks.append(check)

    def valid(value: Any) -> bool:
        return all(check(value) for check in checks)

    return valid


def _always(value: Any) -> bool:
    return True


def _quick_keyword(key: str, arg: Any) -> Callable[[Any], bool] | None:
    """One keyword of :func:`_quick_check`, applied as jsonschema applies it, or None."""
    if key == "type":
        names = [arg] if isinstance(arg, str) else arg
        if not isinstance(names, list) or not names or not all(n in _QUICK_TYPES for n in names):
            return None
        tests = [_QUICK_TYPES[n] for n in names]

        def of_type(v: Any) -> bool:
            return any(t(v) for t in tests)

        return of_type
    if key == "required":
        if not isinstance(arg, list) or not all(isinstance(k, str) for k in arg):
            return None
        wanted = tuple(arg)

        def required(v: Any) -> bool:
            return not isinstance(v, dict) or all(k in v for k in wanted)

        return required
    if key == "properties":
        if not isinstance(arg, dict):
            return None
        subs: list[tuple[str, Callable[[Any], bool]]] = []
        for name, sub in arg.items():
            sub_check = _quick_check(sub)
            if sub_check is None:
                return None
            subs.append((name, sub_check))

        def properties(v: Any) -> bool:
            return not isinstance(v, dict) or all(c(v[k]) for k, c in subs if k in v)

        return properties
    if key in ("minLength", "maxLength"):
        if type(arg) is not int:
            return None
        bound, at_least = arg, key == "minLength"

        def length(v: Any) -> bool:
            if not isinstance(v, str):
                return True
            return len(v) >= bound if at_least else len(v) <= bound

        return length
    if key == "pattern":
        if not isinstance(arg, str):
            return None
        search = re.compile(arg).search  # jsonschema: re.search(pattern, instance)

        def pattern(v: Any) -> bool:
            return not isinstance(v, str) or search(v) is not None

        return pattern
    if key in _BOUNDS:
        if type(arg) not in (int, float):
            return None
        within, limit = _BOUNDS[key], arg

        def bounded(v: Any) -> bool:
            if type(v) in (int, float):
                return within(v, limit)
            # booleans and non-numbers are not numbers to jsonschema either; other numbers: ask it
            return isinstance(v, bool) or not isinstance(v, Number)

        return bounded
    return None


@register
class JsonSchema(BaseScorer):
    """The field (JSON, or a string holding JSON) is valid against a JSON Schema (2020-12)."""

    name = "json_schema"
    example: ClassVar[dict[str, Any]] = {
        "name": "invoice_extraction_schema",
        "target": {"step": "extract_invoice"},
        "params": {"schema": {"type": "object", "required": ["total"], "properties": {"total": {"type": "number"}}}},
    }
    json_schema: dict[str, Any] = Field(alias="schema", description="A JSON Schema (draft 2020-12).")
    field: StepPath = FIELD

    @field_validator("json_schema")
    @classmethod
    def _valid_schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            Draft202012Validator.check_schema(value)
        except SchemaError as exc:
            raise ValueError(f"not a valid JSON Schema: {exc.message}") from None
        return value

    @cached_property
    def _validator(self) -> Draft202012Validator:
        return Draft202012Validator(self.json_schema)

    @cached_property
    def _quick(self) -> Callable[[Any], bool] | None:
        return _quick_check(self.json_schema)

    async def score(self, step: StepPublic) -> Score:
        value = get_field(step, self.field)
        if isinstance(value, str):
            # text holding JSON (what LLMs return) is decoded; other text is judged as a string
            try:
                value = orjson.loads(value)
            except orjson.JSONDecodeError as exc:
                if self._validator.is_valid(value):
                    return verdict(True)
                return verdict(False, f"{self.field} is not JSON: {exc}")
        quick = self._quick
        if quick is not None and quick(value):
            return verdict(True)
        error = next(iter(self._validator.iter_errors(value)), None)
        if error is None:
            return verdict(True)
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        return verdict(False, f"{self.field} at {where}: {error.message}")


@register
class Regex(BaseScorer):
    """The field's text matches (``must_match: true``) or does not match a regular expression."""

    name = "regex"
    example: ClassVar[dict[str, Any]] = {
        "name": "reference_present",
        "target": {"step": "draft_reply"},
        "params": {"pattern": "INV-[0-9]+", "field": "output"},
    }
    pattern: str = Field(description="A Python regular expression, searched anywhere in the text.")
    must_match: bool = Field(default=True, description="Pass when it matches (`false`: pass when it does not).")
    ignore_case: bool = Field(default=False, description="Match case-insensitively.")
    field: StepPath = FIELD

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        return value

    @cached_property
    def _regex(self) -> re.Pattern[str]:
        return re.compile(self.pattern, re.IGNORECASE if self.ignore_case else 0)

    async def score(self, step: StepPublic) -> Score:
        text = as_text(get_field(step, self.field))
        match = self._regex.search(text)
        if self.must_match:
            return verdict(match is not None, f"{self.field} does not match /{self.pattern}/")
        if match is None:
            return verdict(True)
        return verdict(False, f"{self.field} matches /{self.pattern}/ at {match.start()}: {match.group(0)!r}")


@register
class NotEmpty(BaseScorer):
    """The field is present and not blank (no null, empty or whitespace-only string, [] or {})."""

    name = "not_empty"
    example: ClassVar[dict[str, Any]] = {"name": "reply_not_empty", "target": {"step": "draft_reply"}, "params": {}}
    field: StepPath = FIELD

    async def score(self, step: StepPublic) -> Score:
        value = get_field(step, self.field)
        empty = value is None or (isinstance(value, str) and not value.strip()) or value in ([], {})
        return verdict(not empty, f"{self.field} is empty")


@register
class MaxLatencyMs(BaseScorer):
    """The step took at most ``max_ms`` milliseconds (from its start and end times)."""

    name = "max_latency_ms"
    example: ClassVar[dict[str, Any]] = {
        "name": "ledger_post_latency",
        "target": {"step": "post_to_ledger"},
        "params": {"max_ms": 2000},
    }
    max_ms: float = Field(gt=0, description="The longest latency that passes, in milliseconds.")

    async def score(self, step: StepPublic) -> Score:
        if step.latency_ms is None:
            return skip("no latency recorded (the step has no start or end time)")
        return verdict(
            step.latency_ms <= self.max_ms,
            f"latency {step.latency_ms:.0f} ms is over {self.max_ms:.0f} ms",
            latency_ms=step.latency_ms,
        )


@register
class MaxCostUsd(BaseScorer):
    """The step cost at most ``max_usd`` dollars."""

    name = "max_cost_usd"
    example: ClassVar[dict[str, Any]] = {
        "name": "llm_step_cost",
        "target": {"kind": "llm"},
        "params": {"max_usd": 0.01},
    }
    max_usd: float = Field(ge=0, description="The highest cost that passes, in US dollars.")

    async def score(self, step: StepPublic) -> Score:
        if step.cost_usd is None:
            return skip("no cost recorded")
        return verdict(
            step.cost_usd <= self.max_usd,
            f"cost ${step.cost_usd:.6f} is over ${self.max_usd:.6f}",
            cost_usd=step.cost_usd,
        )


class _AgainstExpected(ExpectedValue):
    ignore_case: bool = Field(default=False, description="Compare text case-insensitively.")

    def _norm(self, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip()
            return value.casefold() if self.ignore_case else value
        return value


@register
class Equals(_AgainstExpected):
    """The field equals the expected value (the record's ``expected``, a path, or a literal)."""

    name = "equals"
    example: ClassVar[dict[str, Any]] = {
        "name": "classification_matches_expected",
        "target": {"step": "classify_email"},
        "params": {"expected_field": "expected.label", "field": "output.label", "ignore_case": True},
    }

    async def score(self, step: StepPublic) -> Score:
        expected = self._expected(step)
        if expected is None:
            return skip("no expected value")
        actual = get_field(step, self.field)
        ok = self._norm(actual) == self._norm(expected)
        return verdict(ok, f"{self.field} is {actual!r}, expected {expected!r}", expected=expected)


@register
class Contains(_AgainstExpected):
    """The field's text contains the expected text."""

    name = "contains"
    example: ClassVar[dict[str, Any]] = {
        "name": "reply_thanks_the_customer",
        "target": {"step": "draft_reply"},
        "params": {"value": "thank you", "ignore_case": True},
    }

    async def score(self, step: StepPublic) -> Score:
        expected = self._expected(step)
        if expected is None:
            return skip("no expected value")
        haystack, needle = as_text(get_field(step, self.field)), as_text(expected)
        if self.ignore_case:
            haystack, needle = haystack.casefold(), needle.casefold()
        return verdict(needle in haystack, f"{self.field} does not contain {as_text(expected)!r}")
