"""One registry of plug-in classes by name, for scorers, connectors and orchestrator adapters:
built-ins register themselves when their modules are imported, third-party ones come from an
entry-point group and are loaded when a name is missing (or all of them, for a listing)::

    >>> reg = Registry("widget", key="name", group="evalsvc.widgets")
    >>> @reg.register
    ... class Knob:
    ...     name = "knob"
    >>> reg.get("knob").__name__, reg.get("dial"), reg.names()
    ('Knob', None, ['knob'])
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, TypeVar

__all__ = ["Registry"]

T = TypeVar("T", bound=type[Any])


class Registry:
    """Classes by the value of their ``key`` attribute (``name`` or ``source``)."""

    def __init__(self, what: str, *, key: str, group: str, builtins: Callable[[], None] | None = None) -> None:
        self.what, self.key, self.group = what, key, group
        self._builtins = builtins
        self._classes: dict[str, type[Any]] = {}
        self._all_loaded = False
        self._loading = threading.RLock()  # re-entrant: a built-in module may look a name up

    def register(self, cls: T) -> T:
        """Class decorator: add ``cls`` under its key; a missing key, or one another class took,
        is an error (the same class twice is fine)."""
        name = getattr(cls, self.key, None)
        if not isinstance(name, str) or not name:
            raise TypeError(f"{self.what} {cls.__qualname__} has no {self.key}")
        taken = self._classes.get(name)
        if taken is not None and taken is not cls:
            raise ValueError(f"{self.what} {self.key} {name!r} is already registered by {taken.__qualname__}")
        self._classes[name] = cls
        return cls

    def _load_builtins(self) -> None:
        # other threads wait until every built-in is registered (scoring threads start together)
        if self._builtins is None:
            return
        with self._loading:
            if self._builtins is not None:
                self._builtins()
                self._builtins = None

    def load_entry_points(self, names: set[str] | None = None) -> None:
        """Load the entry points of the group: those named in ``names``, or all of them."""
        with self._loading:
            if names is None:
                if self._all_loaded:
                    return
                self._all_loaded = True
            for ep in entry_points(group=self.group):
                if (names is None or ep.name in names) and ep.name not in self._classes:
                    self.register(ep.load())

    def get(self, name: str) -> type[Any] | None:
        """The class registered as ``name`` (built-in or from an entry point), or None."""
        self._load_builtins()
        if name not in self._classes:
            self.load_entry_points({name})
        return self._classes.get(name)

    def names(self, *, entry_points: bool = False) -> list[str]:
        """The registered names, sorted; with ``entry_points``, every installed one loaded first."""
        self._load_builtins()
        if entry_points:
            self.load_entry_points()
        return sorted(self._classes)

    def classes(self) -> dict[str, type[Any]]:
        self._load_builtins()
        self.load_entry_points()
        return dict(sorted(self._classes.items()))
