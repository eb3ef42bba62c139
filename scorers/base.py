"""The one Scorer interface, and helpers that rule scorers share.

A scorer is a pydantic model: its fields are its configuration (the evaluator's ``params``,
validated when the evaluator is applied), and ``score`` grades one step::

    >>> import asyncio
    >>> from scorers.registry import create
    >>> scorer = create("regex", {"pattern": "^INV-[0-9]+$"})
    >>> scorer.pattern
    '^INV-[0-9]+$'
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Protocol, runtime_checkable

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict

from evalsvc.schemas import Score, StepPublic

__all__ = ["BaseScorer", "Scorer", "StepPath", "as_text", "check_path", "get_field"]


@runtime_checkable
class Scorer(Protocol):
    name: ClassVar[str]
    version: ClassVar[str]
    kind: ClassVar[Literal["rule", "statistical", "llm"]]

    async def score(self, step: StepPublic) -> Score: ...


class BaseScorer(BaseModel):
    """Base of the built-in scorers: configuration as validated, frozen fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: ClassVar[str]
    version: ClassVar[str] = "1"
    kind: ClassVar[Literal["rule", "statistical", "llm"]] = "rule"

    async def score(self, step: StepPublic) -> Score:  # pragma: no cover - abstract
        raise NotImplementedError


_MISSING = object()


def check_path(path: str) -> str:
    """Validate a dotted step path when the evaluator is applied, not when it first runs."""
    head = path.partition(".")[0]
    if head not in StepPublic.model_fields:
        raise ValueError(f"{head!r} is not a step field; use one of {', '.join(sorted(StepPublic.model_fields))}")
    return path


StepPath = Annotated[str, AfterValidator(check_path)]
"""A dotted path into a step (``output.total``), checked against the step's fields."""


def get_field(step: StepPublic, path: str) -> Any:
    """A dotted path into the step: ``output``, ``output.total``, ``attributes.customer``,
    ``expected.label``. JSON text in ``input``/``output``/``expected`` is decoded on the way."""
    head, _, rest = path.partition(".")
    value: Any = getattr(step, head, _MISSING)
    if value is _MISSING:
        raise KeyError(f"step has no field {head!r}")
    for part in rest.split(".") if rest else []:
        if isinstance(value, str):
            try:
                value = orjson.loads(value)
            except orjson.JSONDecodeError:
                return None
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def as_text(value: Any) -> str:
    """The text a regex or a containment check looks at: strings as they are, the rest as compact
    JSON (no spaces: `{"total":3}`)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
