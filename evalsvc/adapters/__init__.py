"""Orchestrator adapters: how an Action reaches production (retry, pause, resume, cancel).

An adapter is registered for a step's ``source`` (``temporal``, ``celery``, ``inngest``) and
performs the kinds it lists; the pipeline hands it an :class:`ActionContext` (the action, its run,
step and verdict, read from the store) and records what it returns. Adapters never touch the store.
Third-party adapters load from the ``evalsvc.adapters`` entry-point group::

    >>> from evalsvc.adapters import kinds_for
    >>> sorted(kinds_for("no-such-source"))
    []
"""

from __future__ import annotations

from .base import ActionContext, ActionFailed, Adapter, available, get, kinds_for, register

__all__ = ["ActionContext", "ActionFailed", "Adapter", "available", "get", "kinds_for", "register"]
