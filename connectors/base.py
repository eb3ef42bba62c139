"""The one Connector interface and its registry (entry-point group ``evalsvc.connectors``).

``to_steps`` returns step records, either as :class:`~evalsvc.schemas.StepRecord` or as plain
dicts of that shape; evalsvc validates each item on its own, so one bad record is rejected with
its field named and the rest of the batch is kept. A payload that cannot be read at all raises
:class:`~evalsvc.errors.PayloadRejected`.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

from evalsvc.errors import UnknownConnector
from evalsvc.schemas import StepRecord

__all__ = ["Connector", "available", "get", "register"]


@runtime_checkable
class Connector(Protocol):
    name: ClassVar[str]

    def to_steps(self, payload: Any) -> list[StepRecord | dict[str, Any]]: ...


_REGISTRY: dict[str, type[Any]] = {}
T = TypeVar("T", bound=type[Any])


def register(cls: T) -> T:
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"connector {cls.__qualname__} has no name")
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"connector name {name!r} is already registered")
    _REGISTRY[name] = cls
    return cls


def _builtins() -> None:
    from . import celery_events, generic_json, inngest, langfuse, langsmith, otlp, temporal  # noqa: F401


def get(name: str, settings: Any = None) -> Connector:
    """The connector registered as ``name``; one with a ``from_settings`` class method is built
    from evalsvc's settings when they are given (``EVALSVC_OTLP_GROUP_BY`` and the like)."""
    _builtins()
    if name not in _REGISTRY:
        for ep in entry_points(group="evalsvc.connectors"):
            if ep.name == name:
                register(ep.load())
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise UnknownConnector(name, available=list(_REGISTRY)) from None
    factory = getattr(cls, "from_settings", None)
    connector: Connector = factory(settings) if settings is not None and factory is not None else cls()
    return connector


def available() -> list[str]:
    _builtins()
    return sorted(_REGISTRY)
