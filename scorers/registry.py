"""Scorers registered by name; third-party scorers come from the ``evalsvc.scorers`` entry points.

>>> from scorers.registry import available, create
>>> "json_schema" in available()
True
>>> create("not_empty", {}).name
'not_empty'
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from importlib.metadata import entry_points
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from evalsvc.errors import InvalidInput, UnknownScorer

from .base import Scorer

__all__ = ["available", "create", "get", "load_entry_points", "register"]

_REGISTRY: dict[str, type[Any]] = {}
T = TypeVar("T", bound=type[Any])


def register(cls: T) -> T:
    """Class decorator: add a scorer under its ``name``; a missing or taken name is an error."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"scorer {cls.__qualname__} has no name")
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"scorer name {name!r} is already registered by {_REGISTRY[name].__qualname__}")
    _REGISTRY[name] = cls
    return cls


def _builtins() -> None:
    from . import llm, rule, stats  # noqa: F401  (register the built-in scorers)


def load_entry_points(names: Iterable[str]) -> None:
    """Load the third-party scorers that configuration asks for, and only those."""
    wanted = {n for n in names if n not in _REGISTRY}
    if not wanted:
        return
    for ep in entry_points(group="evalsvc.scorers"):
        if ep.name in wanted:
            register(ep.load())


def get(name: str) -> type[Any]:
    _builtins()
    if name not in _REGISTRY:
        load_entry_points([name])
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownScorer(name, available=list(_REGISTRY)) from None


def available() -> list[str]:
    _builtins()
    return sorted(_REGISTRY)


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
