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
from functools import cached_property
from typing import Any

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import Field, field_validator, model_validator

from evalsvc.schemas import Score, StepPublic

from ..base import BaseScorer, StepPath, as_text, get_field
from ..registry import register

__all__ = ["Contains", "Equals", "JsonSchema", "MaxCostUsd", "MaxLatencyMs", "NotEmpty", "Regex"]

PASS = 1.0
FAIL = 0.0


def _verdict(ok: bool, why: str | None = None, **metadata: Any) -> Score:
    return Score(value=PASS if ok else FAIL, passed=ok, explanation=None if ok else why, metadata=metadata)


def _skip(why: str) -> Score:
    return Score(value=None, passed=None, explanation=why)


_FIELD = Field(default="output", description="Dotted path into the step, e.g. `output.total`.")


@register
class JsonSchema(BaseScorer):
    """The field (JSON, or a string holding JSON) is valid against a JSON Schema (2020-12)."""

    name = "json_schema"
    json_schema: dict[str, Any] = Field(alias="schema")
    field: StepPath = _FIELD

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

    async def score(self, step: StepPublic) -> Score:
        value = get_field(step, self.field)
        if isinstance(value, str):
            # text holding JSON (what LLMs return) is decoded; other text is judged as a string
            try:
                value = orjson.loads(value)
            except orjson.JSONDecodeError as exc:
                if self._validator.is_valid(value):
                    return _verdict(True)
                return _verdict(False, f"{self.field} is not JSON: {exc}")
        error = next(iter(self._validator.iter_errors(value)), None)
        if error is None:
            return _verdict(True)
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        return _verdict(False, f"{self.field} at {where}: {error.message}")


@register
class Regex(BaseScorer):
    """The field's text matches (``must_match: true``) or does not match a regular expression."""

    name = "regex"
    pattern: str
    must_match: bool = True
    ignore_case: bool = False
    field: StepPath = _FIELD

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
            return _verdict(match is not None, f"{self.field} does not match /{self.pattern}/")
        if match is None:
            return _verdict(True)
        return _verdict(False, f"{self.field} matches /{self.pattern}/ at {match.start()}: {match.group(0)!r}")


@register
class NotEmpty(BaseScorer):
    """The field is present and not blank (no null, empty or whitespace-only string, [] or {})."""

    name = "not_empty"
    field: StepPath = _FIELD

    async def score(self, step: StepPublic) -> Score:
        value = get_field(step, self.field)
        empty = value is None or (isinstance(value, str) and not value.strip()) or value in ([], {})
        return _verdict(not empty, f"{self.field} is empty")


@register
class MaxLatencyMs(BaseScorer):
    """The step took at most ``max_ms`` milliseconds (from its start and end times)."""

    name = "max_latency_ms"
    max_ms: float = Field(gt=0)

    async def score(self, step: StepPublic) -> Score:
        if step.latency_ms is None:
            return _skip("no latency recorded (the step has no start or end time)")
        return _verdict(
            step.latency_ms <= self.max_ms,
            f"latency {step.latency_ms:.0f} ms is over {self.max_ms:.0f} ms",
            latency_ms=step.latency_ms,
        )


@register
class MaxCostUsd(BaseScorer):
    """The step cost at most ``max_usd`` dollars."""

    name = "max_cost_usd"
    max_usd: float = Field(ge=0)

    async def score(self, step: StepPublic) -> Score:
        if step.cost_usd is None:
            return _skip("no cost recorded")
        return _verdict(
            step.cost_usd <= self.max_usd,
            f"cost ${step.cost_usd:.6f} is over ${self.max_usd:.6f}",
            cost_usd=step.cost_usd,
        )


class _AgainstExpected(BaseScorer):
    field: StepPath = _FIELD
    value: Any = Field(default=None, description="A literal to compare with.")
    expected_field: StepPath | None = Field(default=None, description="Dotted path to the expected value.")
    ignore_case: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> _AgainstExpected:
        if self.value is not None and self.expected_field is not None:
            raise ValueError("give either value or expected_field, not both")
        return self

    def _expected(self, step: StepPublic) -> Any:
        if self.value is not None:
            return self.value
        return get_field(step, self.expected_field or "expected")

    def _norm(self, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip()
            return value.casefold() if self.ignore_case else value
        return value


@register
class Equals(_AgainstExpected):
    """The field equals the expected value (the record's ``expected``, a path, or a literal)."""

    name = "equals"

    async def score(self, step: StepPublic) -> Score:
        expected = self._expected(step)
        if expected is None:
            return _skip("no expected value")
        actual = get_field(step, self.field)
        ok = self._norm(actual) == self._norm(expected)
        return _verdict(ok, f"{self.field} is {actual!r}, expected {expected!r}", expected=expected)


@register
class Contains(_AgainstExpected):
    """The field's text contains the expected text."""

    name = "contains"

    async def score(self, step: StepPublic) -> Score:
        expected = self._expected(step)
        if expected is None:
            return _skip("no expected value")
        haystack, needle = as_text(get_field(step, self.field)), as_text(expected)
        if self.ignore_case:
            haystack, needle = haystack.casefold(), needle.casefold()
        return _verdict(needle in haystack, f"{self.field} does not contain {as_text(expected)!r}")
