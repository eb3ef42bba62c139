"""The one Adapter interface and its registry (entry-point group ``evalsvc.adapters``).

``perform`` runs one action's side effect and returns what to record as the action's response; it
raises :class:`ActionFailed` (retryable or not) when the orchestrator refused or could not be
reached. The pipeline calls it at most once per claim and re-sends with the same
``idempotency_key`` only after a worker died mid-flight, so an adapter passes that key to the
orchestrator wherever the orchestrator takes one (Temporal request ids, Inngest event ids).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

from evalsvc.registry import Registry
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


T = TypeVar("T", bound=type[Any])


def _builtins() -> None:
    from . import builtin  # noqa: F401  (registers the built-in adapters)


# every installed adapter is loaded on first use: any source may need one
_REGISTRY = Registry("adapter", key="source", group="evalsvc.adapters", builtins=_builtins)


def register(cls: T) -> T:
    return _REGISTRY.register(cls)


def _find(source: str) -> type[Any] | None:
    _REGISTRY.load_entry_points()
    return _REGISTRY.get(source)


def get(source: str) -> Adapter | None:
    """The adapter of a source, or None when no orchestrator adapter is installed for it."""
    cls = _find(source)
    if cls is None:
        return None
    adapter: Adapter = cls()
    return adapter


def kinds_for(source: str) -> frozenset[str]:
    """The action kinds the adapter of ``source`` performs (empty without one)."""
    cls = _find(source)
    return frozenset(cls.kinds) if cls is not None else frozenset()


def available() -> dict[str, list[str]]:
    return {s: sorted(c.kinds) for s, c in _REGISTRY.classes().items()}
