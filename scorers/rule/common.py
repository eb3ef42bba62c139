"""What the rule scorers share: the pass/fail/skip verdicts, the default ``field`` parameter and
the expected-value source (a literal ``value`` or an ``expected_field`` path)::

    >>> from scorers.rule.common import skip, verdict
    >>> verdict(False, "too long").explanation, verdict(True, "too long").explanation
    ('too long', None)
    >>> skip("no latency recorded").value is None
    True
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from evalsvc.schemas import Score, StepPublic

from ..base import BaseScorer, StepPath, get_field

__all__ = ["FAIL", "FIELD", "PASS", "ExpectedValue", "skip", "verdict"]

PASS = 1.0
FAIL = 0.0

FIELD = Field(default="output", description="Dotted path into the step, e.g. `output.total`.")


def verdict(ok: bool, why: str | None = None, **metadata: Any) -> Score:
    """A pass (value 1) or a fail (value 0, with ``why`` as its explanation)."""
    return Score(value=PASS if ok else FAIL, passed=ok, explanation=None if ok else why, metadata=metadata)


def skip(why: str) -> Score:
    """Nothing to judge: the pipeline stores the result as ``skipped`` with this reason."""
    return Score(value=None, passed=None, explanation=why)


class ExpectedValue(BaseScorer):
    """Base of scorers that compare a field with an expected value: a literal or a step path."""

    field: StepPath = FIELD
    value: Any = Field(default=None, description="A literal to compare with.")
    expected_field: StepPath | None = Field(
        default=None, description="Dotted path to the expected value (default: the record's `expected`)."
    )

    @model_validator(mode="after")
    def _one_source(self) -> ExpectedValue:
        if self.value is not None and self.expected_field is not None:
            raise ValueError("give either value or expected_field, not both")
        return self

    def _expected(self, step: StepPublic) -> Any:
        if self.value is not None:
            return self.value
        return get_field(step, self.expected_field or "expected")

    def _expected_name(self) -> str:
        return "value" if self.value is not None else (self.expected_field or "expected")
