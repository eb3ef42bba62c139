"""The one Connector interface and its registry (entry-point group ``evalsvc.connectors``).

``to_steps`` returns step records, either as :class:`~evalsvc.schemas.StepRecord` or as plain
dicts of that shape; evalsvc validates each item on its own, so one bad record is rejected with
its field named and the rest of the batch is kept. A payload that cannot be read at all raises
:class:`~evalsvc.errors.PayloadRejected`.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

from evalsvc.errors import UnknownConnector
from evalsvc.registry import Registry
from evalsvc.schemas import StepRecord

__all__ = ["Connector", "available", "get", "register"]


@runtime_checkable
class Connector(Protocol):
    name: ClassVar[str]

    def to_steps(self, payload: Any) -> list[StepRecord | dict[str, Any]]: ...


T = TypeVar("T", bound=type[Any])


def _builtins() -> None:
    from . import celery_events, generic_json, inngest, langfuse, langsmith, otlp, temporal  # noqa: F401


_REGISTRY = Registry("connector", key="name", group="evalsvc.connectors", builtins=_builtins)


def register(cls: T) -> T:
    return _REGISTRY.register(cls)


def get(name: str, settings: Any = None) -> Connector:
    """The connector registered as ``name``; one with a ``from_settings`` class method is built
    from evalsvc's settings when they are given (``EVALSVC_OTLP_GROUP_BY`` and the like)."""
    cls = _REGISTRY.get(name)
    if cls is None:
        raise UnknownConnector(name, available=_REGISTRY.names())
    factory = getattr(cls, "from_settings", None)
    connector: Connector = factory(settings) if settings is not None and factory is not None else cls()
    return connector


def available() -> list[str]:
    return _REGISTRY.names()
