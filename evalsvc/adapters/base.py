"""The one Adapter interface and its registry (entry-point group ``evalsvc.adapters``).

``perform`` runs one action's side effect and returns what to record as the action's response; it
raises :class:`ActionFailed` (retryable or not) when the orchestrator refused or could not be
reached. The pipeline calls it at most once per claim and re-sends with the same
``idempotency_key`` only after a worker died mid-flight, so an adapter passes that key to the
orchestrator wherever the orchestrator takes one (Temporal request ids, Inngest event ids).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

from evalsvc.settings import Settings

__all__ = ["ActionContext", "ActionFailed", "Adapter", "available", "get", "kinds_for", "register"]


class ActionFailed(Exception):
    """The side effect did not happen. ``retryable``: worth another attempt after a backoff."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True, slots=True)
class ActionContext:
    """What an adapter knows about the action it performs (read from the store by the pipeline)."""

    action_id: int
    kind: str  # an ActionKind value: retry, pause, resume, cancel
    idempotency_key: str
    reason: str | None
    project: str
    run: dict[str, Any]  # source, run_key, workflow, status, attributes
    step: dict[str, Any]  # step_key, attempt, name, kind, status, input, output, error, attributes
    verdict: dict[str, Any]  # evaluator, evaluator_version, value, passed, label, explanation (may be empty)
    on_fail: dict[str, Any]  # the evaluator's on_fail block, extra keys included
    settings: Settings = field(repr=False)


@runtime_checkable
class Adapter(Protocol):
    source: ClassVar[str]
    kinds: ClassVar[frozenset[str]]

    def perform(self, ctx: ActionContext) -> dict[str, Any]: ...


_REGISTRY: dict[str, type[Any]] = {}
_LOADED = False
T = TypeVar("T", bound=type[Any])


def register(cls: T) -> T:
    source = getattr(cls, "source", None)
    if not isinstance(source, str) or not source:
        raise TypeError(f"adapter {cls.__qualname__} has no source")
    if source in _REGISTRY and _REGISTRY[source] is not cls:
        raise ValueError(f"an adapter for source {source!r} is already registered")
    _REGISTRY[source] = cls
    return cls


def _load() -> None:
    global _LOADED
    if _LOADED:
        return
    from . import builtin  # noqa: F401  (registers the built-in adapters)

    for ep in entry_points(group="evalsvc.adapters"):
        register(ep.load())
    _LOADED = True


def get(source: str) -> Adapter | None:
    """The adapter of a source, or None when no orchestrator adapter is installed for it."""
    _load()
    cls = _REGISTRY.get(source)
    if cls is None:
        return None
    adapter: Adapter = cls()
    return adapter


def kinds_for(source: str) -> frozenset[str]:
    """The action kinds the adapter of ``source`` performs (empty without one)."""
    _load()
    cls = _REGISTRY.get(source)
    return frozenset(cls.kinds) if cls is not None else frozenset()


def available() -> dict[str, list[str]]:
    _load()
    return {s: sorted(c.kinds) for s, c in sorted(_REGISTRY.items())}
