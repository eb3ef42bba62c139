"""Text and shape checks: ``length`` bounds (characters, words or items) and ``allowed_labels``
for classification outputs.

    >>> import asyncio
    >>> from evalsvc.schemas import StepPublic
    >>> from scorers.registry import create
    >>> step = StepPublic(id=1, run_id=1, source="json", run_key="r", step_key="s", attempt=1, name="s",
    ...                   kind="llm", status="completed", output="Invoice\\n")
    >>> asyncio.run(create("allowed_labels", {"labels": ["invoice", "receipt"], "ignore_case": True}).score(step)).label
    'invoice'
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from evalsvc.schemas import Score, StepPublic

from ..base import BaseScorer, StepPath, as_text, get_field
from ..registry import register
from .common import FIELD, skip, verdict

__all__ = ["AllowedLabels", "Length"]


@register
class Length(BaseScorer):
    """The field's length is within bounds: characters or whitespace-separated words of its text,
    or the items of a list (or keys of an object). A missing field has length 0."""

    name = "length"
    example: ClassVar[dict[str, Any]] = {
        "name": "reply_length",
        "target": {"step": "draft_reply"},
        "params": {"unit": "words", "min": 5, "max": 200},
    }
    field: StepPath = FIELD
    unit: Literal["chars", "words", "items"] = Field(default="chars", description="What to count.")
    min: int | None = Field(default=None, ge=0, description="Shortest length that passes.")
    max: int | None = Field(default=None, ge=0, description="Longest length that passes.")

    @model_validator(mode="after")
    def _bounds(self) -> Length:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self

    async def score(self, step: StepPublic) -> Score:
        value = get_field(step, self.field)
        if self.unit == "items":
            if value is None:
                size = 0
            elif isinstance(value, list | dict):
                size = len(value)
            else:
                return verdict(False, f"{self.field} is a {type(value).__name__}, not a list: cannot count items")
        elif self.unit == "words":
            size = len(as_text(value).split())
        else:
            size = len(as_text(value))
        unit = self.unit.removesuffix("s") + ("" if size == 1 else "s")
        if self.min is not None and size < self.min:
            return verdict(False, f"{self.field} has {size} {unit}, fewer than {self.min}", length=size)
        if self.max is not None and size > self.max:
            return verdict(False, f"{self.field} has {size} {unit}, more than {self.max}", length=size)
        return verdict(True, length=size)


@register
class AllowedLabels(BaseScorer):
    """The field is one of the allowed labels (a classification output). Surrounding whitespace is
    ignored unless ``strip`` is off; the matched label is stored as the result's label."""

    name = "allowed_labels"
    example: ClassVar[dict[str, Any]] = {
        "name": "email_class_is_known",
        "target": {"step": "classify_email"},
        "params": {"labels": ["invoice", "receipt", "reminder", "other"], "ignore_case": True},
    }
    labels: list[str] = Field(min_length=1, description="The labels that pass.")
    field: StepPath = FIELD
    ignore_case: bool = Field(default=False, description="Compare case-insensitively.")
    strip: bool = Field(default=True, description="Ignore whitespace around the value.")
    skip_missing: bool = Field(default=False, description="Skip (rather than fail) a step without the field.")

    @field_validator("labels")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if any(not label.strip() for label in value):
            raise ValueError("labels must not be blank")
        return value

    def _key(self, text: str) -> str:
        text = text.strip() if self.strip else text
        return text.casefold() if self.ignore_case else text

    async def score(self, step: StepPublic) -> Score:
        value = get_field(step, self.field)
        if value is None:
            if self.skip_missing:
                return skip(f"{self.field} is missing")
            return verdict(False, f"{self.field} is missing")
        if not isinstance(value, str):
            return verdict(False, f"{self.field} is a {type(value).__name__}, not a label")
        allowed = {self._key(label): label for label in self.labels}
        label = allowed.get(self._key(value))
        if label is None:
            shown = ", ".join(repr(x) for x in self.labels[:10]) + (", …" if len(self.labels) > 10 else "")
            return verdict(False, f"{self.field} is {value[:80]!r}, not one of {shown}")
        return Score(value=1.0, passed=True, label=label)
