"""The Celery-side hook of evalsvc's remediation: install it once in the Celery app of your tasks.

It does two things, both needed for ``on_fail: retry`` on Celery (docs/remediation-celery.md):

- **original arguments, re-sendable.** Celery's task events carry a task's arguments as a Python
  ``repr`` (truncated past ``argsrepr_maxsize``), which evalsvc cannot send again reliably. The hook
  makes the app write the arguments' JSON encoding as the message's ``argsrepr`` / ``kwargsrepr``
  instead (only when they encode as JSON and fit ``max_bytes``; protocol 2, Celery's default), so
  the ``task-sent`` and ``task-received`` events, and so the step evalsvc records, hold them as JSON.
- **a re-sent task runs once.** evalsvc re-sends a task with its own id (so that it stays the same
  step, one attempt later) and the action's idempotency key in the ``evalsvc_action`` header. A worker
  that died between sending and recording makes evalsvc send it again with the same key; the hook
  runs the task only for the first message of a key (a Redis ``SET NX`` on the broker, or on
  ``dedupe_url``) and drops the others with :class:`celery.exceptions.Ignore` (no event, no result).
  A redelivery of the same message (``acks_late``, a lost worker) keeps its ``evalsvc_send`` header
  (unique per message sent) and runs.

Usage, in the module that creates the app (before the worker starts)::

    from celery import Celery
    from evalsvc.client.celery import install

    app = Celery("shop", broker="redis://127.0.0.1:6379/0")
    install(app)

The hook imports only Celery, kombu and redis; it never talks to evalsvc.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from celery import Celery, Task
from celery.exceptions import Ignore

__all__ = ["ACTION_HEADER", "DEDUPE_PREFIX", "SEND_HEADER", "install", "json_repr"]

logger = logging.getLogger(__name__)

ACTION_HEADER = "evalsvc_action"  # the idempotency key of the evalsvc action that re-sent the task
SEND_HEADER = "evalsvc_send"  # unique per message sent: a redelivery of the same message keeps it
DEDUPE_PREFIX = "evalsvc:celery:action:"
DEDUPE_TTL_SECONDS = 7 * 24 * 3600
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def json_repr(value: Any, max_bytes: int) -> str | None:
    """``value`` as compact-ish JSON text, or None when it does not encode or is larger than ``max_bytes``."""
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(", ", ": "), allow_nan=False)
    except (TypeError, ValueError):
        return None
    return text if len(text.encode()) <= max_bytes else None


class _Hook:
    def __init__(self, app: Celery, *, dedupe_url: str | None, max_bytes: int) -> None:
        self.app, self.dedupe_url, self.max_bytes = app, dedupe_url, max_bytes
        self._client: Any = None

    # ---- arguments as JSON in the message and its events (client side) -------------------------
    def wrap_create(self, create: Callable[..., Any]) -> Callable[..., Any]:
        max_bytes = self.max_bytes

        def create_task_message(
            task_id: Any, name: Any, args: Any = None, kwargs: Any = None, *rest: Any, **opts: Any
        ) -> Any:
            if opts.get("argsrepr") is None and opts.get("kwargsrepr") is None:
                args_text = json_repr(list(args or ()), max_bytes)
                kwargs_text = json_repr(dict(kwargs or {}), max_bytes)
                if args_text is not None and kwargs_text is not None:
                    opts["argsrepr"], opts["kwargsrepr"] = args_text, kwargs_text
            return create(task_id, name, args, kwargs, *rest, **opts)

        return create_task_message

    # ---- one run per action key (worker side) ---------------------------------------------------
    def redis(self) -> Any:
        if self._client is None:
            import redis

            url = self.dedupe_url or str(self.app.conf.broker_url or "")
            if not url.startswith(_REDIS_SCHEMES):
                return None
            self._client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        return self._client

    def first_delivery(self, key: str, tag: str) -> bool:
        client = self.redis()
        if client is None:
            logger.warning("evalsvc: no Redis to deduplicate re-sent task %s on (pass dedupe_url)", key)
            return True
        try:
            if client.set(DEDUPE_PREFIX + key, tag, nx=True, ex=DEDUPE_TTL_SECONDS):
                return True
            held = client.get(DEDUPE_PREFIX + key)
        except Exception as exc:  # fail open: a retry that was asked for runs
            logger.warning("evalsvc: could not check re-sent task %s (%s); running it", key, exc)
            return True
        return bool(held is not None and held.decode() == tag)

    def around_call(self, call: Callable[..., Any]) -> Callable[..., Any]:
        hook = self

        def call_once(task: Task, *args: Any, **kwargs: Any) -> Any:  # type: ignore[type-arg]
            request = task.request
            key = getattr(request, ACTION_HEADER, None) or (getattr(request, "headers", None) or {}).get(ACTION_HEADER)
            if isinstance(key, str) and key:
                tag = str(getattr(request, SEND_HEADER, None) or request.id)
                if not hook.first_delivery(f"{request.id}:{key}", tag):  # action keys repeat across databases
                    logger.info("evalsvc: task %s already re-sent for %s; this copy is dropped", request.id, key)
                    raise Ignore()
            return call(task, *args, **kwargs)

        return call_once


def install(app: Celery, *, dedupe_url: str | None = None, max_bytes: int = 256 * 1024) -> None:
    """Install the hook in ``app``: JSON arguments in task messages, one run per re-sent action.

    ``dedupe_url``: the Redis that remembers which re-sent actions ran (default: the app's broker,
    when it is Redis). ``max_bytes``: arguments larger than this (JSON) keep Celery's ``repr``.
    Call it before the app's tasks are used (it adds a ``task_annotations`` entry); tasks already
    bound are wrapped at once.
    """
    hook = _Hook(app, dedupe_url=dedupe_url, max_bytes=max_bytes)
    if app.conf.task_protocol == 2:
        app.amqp.create_task_message = hook.wrap_create(app.amqp.create_task_message)
    annotation: Mapping[str, Any] = {"*": {"@__call__": hook.around_call}}
    existing = app.conf.task_annotations
    if existing is None:
        app.conf.task_annotations = [annotation]
    elif isinstance(existing, list | tuple):
        app.conf.task_annotations = [*existing, annotation]
    else:
        app.conf.task_annotations = [existing, annotation]
    if app.finalized:
        for name, task in app.tasks.items():
            if not name.startswith("celery."):
                type(task).add_around("__call__", hook.around_call)
