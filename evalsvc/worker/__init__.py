"""Runners: who scores pending results and dispatches actions.

- in-process (the default): a background thread of ``evalsvc serve``, or inline in CLI commands;
- Celery on Redis (``EVALSVC_BROKER_URL``; ``evalsvc worker``): tasks carry ids only.

Both are thin wrappers over :mod:`evalsvc.pipeline`; see :func:`get_runner`.
"""

from .runner import CeleryRunner, InlineRunner, Runner, drain, get_runner

__all__ = ["CeleryRunner", "InlineRunner", "Runner", "drain", "get_runner"]
