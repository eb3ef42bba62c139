"""Scorers registered by name; third-party scorers come from the ``evalsvc.scorers`` entry points.

>>> from scorers.registry import available, create
>>> "json_schema" in available()
True
>>> create("not_empty", {}).name
'not_empty'
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from evalsvc.errors import InvalidInput, UnknownScorer
from evalsvc.registry import Registry

from .base import Scorer

__all__ = ["available", "create", "get", "load_entry_points", "register"]

T = TypeVar("T", bound=type[Any])


def _builtins() -> None:
    from . import llm, rule, stats  # noqa: F401  (register the built-in scorers)


_REGISTRY = Registry("scorer", key="name", group="evalsvc.scorers", builtins=_builtins)


def register(cls: T) -> T:
    """Class decorator: add a scorer under its ``name``; a missing or taken name is an error."""
    return _REGISTRY.register(cls)


def load_entry_points(names: Iterable[str]) -> None:
    """Load the third-party scorers that configuration asks for, and only those."""
    _REGISTRY.load_entry_points(set(names))


def get(name: str) -> type[Any]:
    cls = _REGISTRY.get(name)
    if cls is None:
        raise UnknownScorer(name, available=_REGISTRY.names())
    return cls


def available() -> list[str]:
    return _REGISTRY.names()


def create(name: str, params: Mapping[str, Any]) -> Scorer:
    """A scorer from its name and parameters; bad parameters raise ``InvalidInput`` naming them."""
    cls = get(name)
    try:
        if issubclass(cls, BaseModel):
            scorer: Scorer = cls.model_validate(dict(params))  # type: ignore[assignment]
        else:
            scorer = cls(**params)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        raise InvalidInput(msg, field=f"params.{loc}" if loc else "params") from None
    except (TypeError, ValueError) as exc:
        raise InvalidInput(str(exc), field="params") from None
    return scorer
