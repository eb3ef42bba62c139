"""Celery adapter: re-send a task (retry), stop and restart its queue (pause, resume), revoke it (cancel).

- **retry**: the task is sent again by name with its original arguments, **with the same task id**
  and ``retries`` = the failed attempt, so the connector records it as the next attempt of the same
  step (``task-received`` → attempt ``retries + 1``). The arguments come from the step's input: JSON
  when the app runs :func:`evalsvc.client.celery.install` (exact), else the ``repr`` text of Celery's
  events when it is a literal that :func:`ast.literal_eval` reads (numbers, strings, lists, dicts…);
  otherwise the action fails, naming the hook. The message carries the action's idempotency key in
  the ``evalsvc_action`` header: after a crash between sending and recording, the hook lets one copy
  run. ``max_attempts`` / ``max_retries`` stop it; the delay before a retry
  (``on_fail.backoff_seconds``) is the pipeline's: the action is dispatched when it is due.
- **pause**: ``control.cancel_consumer(queue)`` on every worker; **resume** (a review approval):
  ``control.add_consumer(queue)``. The queue is ``on_fail.celery_queue``, else the one recorded on
  the step (``celery.queue`` / ``celery.routing_key`` of ``task-sent``), else the app's default
  queue. Both are idempotent. A worker that starts later consumes its configured queues again.
- **cancel** (a review rejection): ``control.revoke(task id)``, with ``terminate`` when
  ``on_fail.celery_terminate`` is true. Workers drop a revoked id for as long as they remember it
  (in memory, or ``--statedb``): a revoked task is never re-sent by a retry.

The broker is ``EVALSVC_CELERY_ACTIONS_BROKER_URL``, else the run's ``celery.broker`` attribute
(recorded by ``evalsvc listen celery``). Broker errors are retryable.

    >>> parse_arguments({"args": "[2, 3]", "kwargs": '{"label": "x"}'})
    ([2, 3], {'label': 'x'})
    >>> parse_arguments({"args": "(2, 'a')", "kwargs": "{}"})
    ([2, 'a'], {})
"""

from __future__ import annotations

import ast
import json
import uuid
from typing import Any, ClassVar

from kombu.exceptions import OperationalError

from evalsvc.schemas import OnFail

from .base import ActionContext, ActionFailed, register

__all__ = ["CeleryAdapter", "parse_arguments"]

ACTION_HEADER = "evalsvc_action"  # the same names as evalsvc.client.celery's
SEND_HEADER = "evalsvc_send"


def _parse(text: Any, want: type, what: str) -> Any:
    if text is None:
        return want()
    if isinstance(text, want) and not isinstance(text, str):
        return text
    if not isinstance(text, str):
        raise ValueError(f"{what} is neither JSON nor a Python literal")
    try:
        value = json.loads(text)
    except ValueError:
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise ValueError(f"{what} is neither JSON nor a Python literal: {text[:80]!r}") from None
    if want is list and isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, want):
        raise ValueError(f"{what} is a {type(value).__name__}, not a {want.__name__}")
    return value


def parse_arguments(step_input: Any) -> tuple[list[Any], dict[str, Any]]:
    """The task's ``(args, kwargs)`` from a step input ``{"args": text, "kwargs": text}``; ValueError if unreadable."""
    if not isinstance(step_input, dict):
        raise ValueError("the step has no recorded arguments")
    args: list[Any] = _parse(step_input.get("args"), list, "args")
    kwargs: dict[str, Any] = _parse(step_input.get("kwargs"), dict, "kwargs")
    if not all(isinstance(k, str) for k in kwargs):
        raise ValueError("kwargs has keys that are not strings")
    return args, kwargs


def _broker(ctx: ActionContext) -> str:
    url = ctx.settings.celery_actions_broker_url or (ctx.run.get("attributes") or {}).get("celery.broker")
    if not isinstance(url, str) or not url:
        raise ActionFailed(
            "no Celery broker: set EVALSVC_CELERY_ACTIONS_BROKER_URL (the run has no celery.broker)", retryable=False
        )
    if ":**@" in url:
        raise ActionFailed(
            "the run's celery.broker has a masked password: set EVALSVC_CELERY_ACTIONS_BROKER_URL", retryable=False
        )
    return url


def _queue(ctx: ActionContext, default: str) -> str:
    for value in (
        ctx.on_fail.get("celery_queue"),
        ctx.step["attributes"].get("celery.queue"),
        ctx.step["attributes"].get("celery.routing_key"),
    ):
        if isinstance(value, str) and value:
            return value
    return default


def _replies(replies: Any) -> list[dict[str, Any]]:
    return [{"worker": w, **(r if isinstance(r, dict) else {"reply": r})} for x in replies or [] for w, r in x.items()]


@register
class CeleryAdapter:
    source: ClassVar[str] = "celery"
    kinds: ClassVar[frozenset[str]] = frozenset({"retry", "pause", "resume", "cancel"})

    def perform(self, ctx: ActionContext) -> dict[str, Any]:
        from celery import Celery

        app = Celery("evalsvc-actions", broker=_broker(ctx), set_as_current=False)
        app.conf.update(broker_connection_timeout=ctx.settings.celery_control_timeout_seconds,
                        broker_connection_retry=False, broker_connection_max_retries=0)  # fmt: skip
        try:
            if ctx.kind == "retry":
                return self._retry(app, ctx)
            if ctx.kind in ("pause", "resume"):
                return self._consume(app, ctx)
            if ctx.kind == "cancel":
                terminate = bool(ctx.on_fail.get("celery_terminate"))
                app.control.revoke(ctx.step["step_key"], terminate=terminate)
                return {"revoked": ctx.step["step_key"], "terminate": terminate}
            raise ActionFailed(f"the Celery adapter does not perform {ctx.kind!r}", retryable=False)
        except ActionFailed:
            raise
        except (OSError, OperationalError) as exc:
            raise ActionFailed(f"Celery broker unreachable: {type(exc).__name__}: {exc}", retryable=True) from exc
        finally:
            app.close()

    def _retry(self, app: Any, ctx: ActionContext) -> dict[str, Any]:
        step = ctx.step
        attempt = int(step["attempt"] or 1)
        policy = OnFail.model_validate({**ctx.on_fail, "action": "retry"})
        limit = policy.retry_limit()
        if limit is not None and attempt >= limit:
            raise ActionFailed(
                f"attempt {attempt} of step {step['step_key']} reached the limit ({limit})", retryable=False
            )
        if not step.get("name"):
            raise ActionFailed(f"the task name of step {step['step_key']} is unknown", retryable=False)
        try:
            args, kwargs = parse_arguments(step.get("input"))
        except ValueError as exc:
            raise ActionFailed(
                f"cannot re-send {step['name']}: {exc}; install evalsvc.client.celery in the Celery app "
                "to record the arguments as JSON",
                retryable=False,
            ) from None
        options: dict[str, Any] = {}
        queue = ctx.on_fail.get("celery_queue") or step["attributes"].get("celery.queue")
        if isinstance(queue, str) and queue:
            options["queue"] = queue
        result = app.send_task(
            step["name"],
            args=args,
            kwargs=kwargs,
            task_id=step["step_key"],
            retries=attempt,
            root_id=ctx.run["run_key"],
            headers={ACTION_HEADER: ctx.idempotency_key, SEND_HEADER: uuid.uuid4().hex},
            argsrepr=json.dumps(args),
            kwargsrepr=json.dumps(kwargs),
            **options,
        )
        return {
            "task_id": result.id,
            "task": step["name"],
            "attempt": attempt + 1,
            **({"queue": options["queue"]} if options else {}),
        }

    def _consume(self, app: Any, ctx: ActionContext) -> dict[str, Any]:
        queue = _queue(ctx, str(app.conf.task_default_queue))
        timeout = ctx.settings.celery_control_timeout_seconds
        if ctx.kind == "pause":
            replies = app.control.cancel_consumer(queue, reply=True, timeout=timeout)
        else:
            replies = app.control.add_consumer(queue, reply=True, timeout=timeout)
        got = _replies(replies)
        if not got:
            raise ActionFailed(f"no Celery worker answered the {ctx.kind} of queue {queue!r}", retryable=True)
        return {"queue": queue, "workers": got}
