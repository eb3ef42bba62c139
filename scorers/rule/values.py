"""Value checks: ``pydantic_model`` validity, ``numeric_tolerance`` against an expected number, and
the ``max_tokens`` budget.

    >>> import asyncio
    >>> from evalsvc.schemas import StepPublic
    >>> from scorers.registry import create
    >>> step = StepPublic(id=1, run_id=1, source="json", run_key="r", step_key="s", attempt=1, name="s",
    ...                   kind="llm", status="completed", output={"total": 12.49}, expected={"total": 12.5})
    >>> scorer = create("numeric_tolerance", {"field": "output.total", "expected_field": "expected.total",
    ...                                       "abs_tol": 0.05})
    >>> asyncio.run(scorer.score(step)).passed
    True
"""

from __future__ import annotations

import importlib
import math
from functools import cached_property
from typing import Any, ClassVar

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from evalsvc.errors import UnrecoverableError
from evalsvc.schemas import Score, StepPublic

from ..base import BaseScorer, StepPath, get_field
from ..registry import register
from .common import FIELD, ExpectedValue, skip, verdict

__all__ = ["MaxTokens", "NumericTolerance", "PydanticModel", "import_model"]


def import_model(path: str) -> type[BaseModel]:
    """The pydantic model class at ``package.module:Class`` (``Outer.Inner`` for a nested class)."""
    module_name, sep, qualname = path.partition(":")
    if not sep or not module_name or not qualname:
        raise ValueError(f"{path!r} is not an import path of the form 'package.module:Class'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import module {module_name!r}: {exc}") from None
    obj: Any = module
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise ValueError(f"module {module_name!r} has no {qualname!r}")
    if not (isinstance(obj, type) and issubclass(obj, BaseModel)):
        raise ValueError(f"{path!r} is not a pydantic BaseModel class")
    return obj


@register
class PydanticModel(BaseScorer):
    """The field (an object, or text holding JSON) validates against a pydantic model, given by its
    import path. The module is imported when the evaluator is applied (so a typo is rejected there),
    and must be importable where the service and its workers run."""

    name = "pydantic_model"
    example: ClassVar[dict[str, Any]] = {
        "name": "invoice_matches_model",
        "target": {"step": "extract_invoice"},
        "params": {"model": "scorers.rule.values:ExampleInvoice", "strict": False},
    }
    model: str = Field(description="Import path of a pydantic model: `package.module:Class`.")
    field: StepPath = FIELD
    strict: bool = Field(default=False, description="Validate in pydantic's strict mode (no type coercion).")

    @field_validator("model")
    @classmethod
    def _imports(cls, value: str) -> str:
        import_model(value)
        return value

    @cached_property
    def _model(self) -> type[BaseModel]:
        return import_model(self.model)

    async def score(self, step: StepPublic) -> Score:
        value = get_field(step, self.field)
        try:
            if isinstance(value, str | bytes):
                self._model.model_validate_json(value, strict=self.strict)
            else:
                self._model.model_validate(value, strict=self.strict)
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
            first = errors[0]
            where = ".".join(str(p) for p in first["loc"]) or "(root)"
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            why = f"{self.field} at {where}: {first['msg']}{more}"
            return verdict(False, why, errors=len(errors))
        return verdict(True)


class ExampleInvoice(BaseModel):
    """The model that ``pydantic_model``'s documented example validates with."""

    total: float
    currency: str = "EUR"


def _number(value: Any) -> float | None:
    """A number from a number or numeric text; None for anything else (booleans included)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


@register
class NumericTolerance(ExpectedValue):
    """The field is a number within a tolerance of the expected number: ``|actual - expected| <=
    max(abs_tol, rel_tol * |expected|)``. Numeric text (``"12.50"``) counts as a number."""

    name = "numeric_tolerance"
    example: ClassVar[dict[str, Any]] = {
        "name": "total_matches_expected",
        "target": {"step": "extract_invoice"},
        "params": {"field": "output.total", "expected_field": "expected.total", "abs_tol": 0.01, "rel_tol": 0.001},
    }
    abs_tol: float = Field(default=0.0, ge=0, description="Absolute tolerance.")
    rel_tol: float = Field(default=0.0, ge=0, description="Tolerance relative to the expected value's magnitude.")

    async def score(self, step: StepPublic) -> Score:
        raw_expected = self._expected(step)
        if raw_expected is None:
            return skip(f"no expected value ({self._expected_name()} is missing)")
        expected = _number(raw_expected)
        if expected is None:
            raise UnrecoverableError(f"expected value {raw_expected!r} is not a number", field=self._expected_name())
        raw = get_field(step, self.field)
        actual = _number(raw)
        if actual is None:
            what = "missing" if raw is None else f"{raw!r}, not a number"
            return verdict(False, f"{self.field} is {what}", expected=expected)
        diff = abs(actual - expected)
        allowed = max(self.abs_tol, self.rel_tol * abs(expected))
        return verdict(
            diff <= allowed,
            f"{self.field} is {actual:g}, expected {expected:g} ± {allowed:g} (off by {diff:g})",
            expected=expected,
            actual=actual,
            difference=diff,
        )


@register
class MaxTokens(BaseScorer):
    """The step used at most the given input, output and/or total tokens (total = input + output).
    A step that lacks a count a limit needs is skipped."""

    name = "max_tokens"
    example: ClassVar[dict[str, Any]] = {
        "name": "llm_token_budget",
        "target": {"kind": "llm"},
        "params": {"max_output": 1024, "max_total": 8000},
    }
    max_input: int | None = Field(default=None, ge=0, description="Most input (prompt) tokens that pass.")
    max_output: int | None = Field(default=None, ge=0, description="Most output (completion) tokens that pass.")
    max_total: int | None = Field(default=None, ge=0, description="Most input plus output tokens that pass.")

    @model_validator(mode="after")
    def _some_limit(self) -> MaxTokens:
        if self.max_input is None and self.max_output is None and self.max_total is None:
            raise ValueError("give at least one of max_input, max_output, max_total")
        return self

    async def score(self, step: StepPublic) -> Score:
        counts = {"input": step.input_tokens, "output": step.output_tokens}
        total = None if None in counts.values() else (step.input_tokens or 0) + (step.output_tokens or 0)
        limits = {"input": self.max_input, "output": self.max_output, "total": self.max_total}
        used = {**counts, "total": total}
        missing = [k for k, limit in limits.items() if limit is not None and used[k] is None]
        if missing:
            return skip(f"no {' or '.join(missing)} token count recorded")
        over = [
            f"{k} tokens {used[k]} > {limit}"
            for k, limit in limits.items()
            if limit is not None and (used[k] or 0) > limit
        ]
        return verdict(not over, "; ".join(over), **{f"{k}_tokens": v for k, v in used.items() if v is not None})
