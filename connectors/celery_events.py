"""Celery task events to step records (source ``celery``): a task is a step, its uuid the step key.

Celery's workers (``celery worker -E``) and clients (``task_send_sent_event``) publish task events:
``task-sent``, ``task-received``, ``task-started``, ``task-succeeded``, ``task-failed``,
``task-retried``, ``task-revoked`` and ``task-rejected``. Each event becomes one partial step record
of one attempt; the store merges the records of one ``(source, run_key, step_key, attempt)``, so the
events of a task may arrive in any order and in any number of batches.

- **run**: ``root_id`` (the canvas or workflow root; a task without a canvas is its own root), and
  ``workflow`` is the root task's name when it is known;
- **parent**: ``parent_id``; **name**: the task name;
- **attempt**: a retry keeps the uuid. ``task-received`` / ``task-sent`` carry ``retries``, so their
  attempt is ``retries + 1``; the k-th ``task-retried`` of a uuid closes attempt k as failed; the other
  events belong to the latest attempt known;
- ``args`` / ``kwargs`` (input) and ``result`` (output) are Python repr strings and stay text;
  ``exception`` and ``traceback`` become the error;
- status: sent / received → ``scheduled``, started → ``running``, succeeded → ``completed``,
  failed and retried → ``failed``, revoked → ``cancelled`` (``timed_out`` when it expired),
  rejected → ``cancelled`` (``scheduled`` when it was requeued: it will run again). Only the end
  states are final, so a step is scored once it has ended.

Only ``task-sent`` and ``task-received`` name the task's run, parent and name, so
:class:`CeleryEventFolder` keeps a bounded map uuid → (run, parent, name, attempts) across the batches
it folds, and asks an optional ``resolve`` callback (e.g. the store, after a restart) about uuids it
has not seen. A task whose run is never learned is taken as its own run.

    >>> from connectors.celery_events import CeleryEventFolder
    >>> folder = CeleryEventFolder()
    >>> recs = folder.fold([
    ...     {"type": "task-received", "uuid": "t1", "name": "tasks.add", "args": "(2, 3)", "kwargs": "{}",
    ...      "root_id": "t1", "parent_id": None, "retries": 0, "timestamp": 1700000000.0, "hostname": "w@h"},
    ...     {"type": "task-succeeded", "uuid": "t1", "result": "5", "runtime": 0.01, "timestamp": 1700000000.5},
    ... ])
    >>> [(r["run_key"], r["step_key"], r["attempt"], r["name"], r["status"], r.get("output")) for r in recs]
    [('t1', 't1', 1, 'tasks.add', 'scheduled', None), ('t1', 't1', 1, 'tasks.add', 'completed', '5')]
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

from evalsvc.errors import PayloadRejected
from evalsvc.schemas import StepRecord

from .base import register

__all__ = ["SOURCE", "TASK_EVENTS", "CeleryConnector", "CeleryEventFolder", "TaskIdentity"]

SOURCE = "celery"
TASK_EVENTS = frozenset(
    {
        "task-sent",
        "task-received",
        "task-started",
        "task-succeeded",
        "task-failed",
        "task-retried",
        "task-revoked",
        "task-rejected",
    }
)
_IDENTIFYING = frozenset({"task-sent", "task-received"})
# the event fields kept as step attributes (prefixed ``celery.``), when present
_ATTRIBUTE_FIELDS = (
    "hostname",
    "retries",
    "queue",
    "exchange",
    "routing_key",
    "eta",
    "expires",
    "runtime",
    "terminated",
    "signum",
    "expired",
    "requeue",
    "utcoffset",
)
_EXC_TYPE = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*\(")
_RETRY_LINE = re.compile(r"^(?:celery\.exceptions\.)?Retry: (Retry in [^:]*: (.*)|.*)$")


@dataclass(slots=True)
class TaskIdentity:
    """What the folder knows of one task uuid (only ``task-sent``/``task-received`` name it).

    ``received_at`` maps each attempt to when a worker received it (epoch seconds); ``retried``
    counts the ``task-retried`` events folded, which closed attempts 1 to ``retried``.
    """

    run_key: str | None = None
    parent: str | None = None
    name: str | None = None
    retried: int = 0
    received_at: dict[int, float] = field(default_factory=dict)

    def attempt_at(self, ts: float | None) -> int:
        """The latest attempt received at or before ``ts`` (any time when ``ts`` is unknown); 0 if none."""
        return max((k for k, at in self.received_at.items() if ts is None or at <= ts), default=0)


Resolver = Callable[[list[str]], Mapping[str, TaskIdentity]]


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else repr(value)


def _ts(value: Any, *, field: str) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PayloadRejected(f"must be epoch seconds (a number), got {type(value).__name__}", field=field)
    return datetime.fromtimestamp(float(value), tz=UTC)


def _error(event: Mapping[str, Any]) -> dict[str, Any]:
    exc = _text(event.get("exception")) or event["type"]
    stack = _text(event.get("traceback"))
    out: dict[str, Any] = {"message": exc}
    if exc.startswith("Retry(") and stack:
        # ``raise self.retry(exc=...)``: the event carries the Retry; its traceback's last line names the cause
        last = _RETRY_LINE.search(stack.rstrip().rsplit("\n", 1)[-1])
        if last:
            out = {"message": last.group(1), "exception": exc}
            exc = last.group(2) or ""
    match = _EXC_TYPE.match(exc)
    if match:
        out["type"] = match.group(1)
    if stack:
        out["stack"] = stack
    return out


def _order(item: tuple[int, Mapping[str, Any]]) -> tuple[float, int, int]:
    """Events in time order (timestamp, then the Lamport clock), input order at a tie."""
    index, event = item
    ts = event.get("timestamp")
    clock = event.get("clock")
    return (
        float(ts) if isinstance(ts, int | float) and not isinstance(ts, bool) else float("inf"),
        clock if isinstance(clock, int) and not isinstance(clock, bool) else 0,
        index,
    )


class CeleryEventFolder:
    """Folds Celery task events into step records, remembering each task's run across batches.

    ``max_tasks`` bounds the uuid map (least recently seen first out); ``resolve`` is asked, once
    per batch, about the uuids that neither the batch nor the map can place in a run;
    ``run_attributes`` (e.g. the broker the events came from) ride on every record's run.
    """

    def __init__(
        self,
        *,
        max_tasks: int = 100_000,
        resolve: Resolver | None = None,
        run_attributes: Mapping[str, Any] | None = None,
    ) -> None:
        if max_tasks < 1:
            raise ValueError("max_tasks must be at least 1")
        self.max_tasks = max_tasks
        self.resolve = resolve
        self.run_attributes = dict(run_attributes or {})
        self._tasks: OrderedDict[str, TaskIdentity] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tasks)

    def known(self, uuid: str) -> TaskIdentity | None:
        return self._tasks.get(uuid)

    def _remember(self, uuid: str, info: TaskIdentity) -> TaskIdentity:
        self._tasks[uuid] = info
        self._tasks.move_to_end(uuid)
        while len(self._tasks) > self.max_tasks:
            self._tasks.popitem(last=False)
        return info

    def fold(self, events: Iterable[Any]) -> list[dict[str, Any]]:
        """Translate a batch of events into step records (dicts of :class:`StepRecord`'s shape).

        Events other than task events (worker heartbeats, ``task-cancelled``…) are skipped. An event
        that is not an object, or a task event without a ``uuid`` or with a timestamp that is not a
        number, rejects the whole batch before the folder's state changes.
        """
        batch: list[tuple[int, Mapping[str, Any]]] = []
        for i, event in enumerate(events):
            if not isinstance(event, Mapping):
                raise PayloadRejected(f"an event must be a JSON object, got {type(event).__name__}", field=f"{i}")
            kind = event.get("type")
            if not isinstance(kind, str):
                raise PayloadRejected("missing the event type", field=f"{i}.type")
            if kind not in TASK_EVENTS:
                continue
            uuid = event.get("uuid")
            if not isinstance(uuid, str) or not uuid:
                raise PayloadRejected(f"a {kind} event needs the task id", field=f"{i}.uuid")
            _ts(event.get("timestamp"), field=f"{i}.timestamp")  # checked before any state changes
            batch.append((i, event))
        batch.sort(key=_order)
        self._learn(batch)
        return [self._record(i, event) for i, event in batch]

    def _learn(self, batch: list[tuple[int, Mapping[str, Any]]]) -> None:
        """Place every uuid of the batch in a run before translating any of its events."""
        unknown: list[str] = []
        for _, event in batch:
            uuid = event["uuid"]
            info = self._tasks.get(uuid)
            if event["type"] in _IDENTIFYING:
                info = self._remember(uuid, info or TaskIdentity())
                root, parent, name = _text(event.get("root_id")), _text(event.get("parent_id")), event.get("name")
                info.run_key = root or info.run_key
                if parent and parent != uuid:  # a retry is sent from inside the task: its parent is itself
                    info.parent = parent
                info.name = _text(name) or info.name
            elif info is None and uuid not in unknown:
                unknown.append(uuid)
        unknown = [u for u in unknown if u not in self._tasks]
        if unknown and self.resolve is not None:
            for uuid, found in self.resolve(unknown).items():
                if uuid not in self._tasks:
                    self._remember(uuid, found)

    def _record(self, index: int, event: Mapping[str, Any]) -> dict[str, Any]:
        kind: str = event["type"]
        uuid: str = event["uuid"]
        info = self._tasks.get(uuid)
        if info is None:
            info = self._remember(uuid, TaskIdentity())
        else:
            self._tasks.move_to_end(uuid)
        when = _ts(event.get("timestamp"), field=f"{index}.timestamp")
        ts = when.timestamp() if when is not None else None
        attrs: dict[str, Any] = {"celery.event": kind}
        for name in _ATTRIBUTE_FIELDS:
            value = event.get(name)
            if value is not None:
                attrs[f"celery.{name}"] = value
        rec: dict[str, Any] = {"kind": "task"}

        if kind in _IDENTIFYING:
            retries = event.get("retries")
            done = retries if isinstance(retries, int) and not isinstance(retries, bool) and retries >= 0 else 0
            attempt = done + 1
            if kind == "task-received" or done == 0:  # a retry is sent while the attempt before runs
                if kind == "task-received" and not info.received_at:
                    info.retried = max(info.retried, done)  # first sight: earlier attempts were retried
                at = ts if ts is not None else float("-inf")
                info.received_at[attempt] = min(at, info.received_at.get(attempt, at))
            rec["status"] = "scheduled"
            args, kwargs = _text(event.get("args")), _text(event.get("kwargs"))
            if args is not None or kwargs is not None:
                rec["input"] = {"args": args, "kwargs": kwargs}
            if when is not None:
                attrs["celery.sent_at" if kind == "task-sent" else "celery.received_at"] = when.isoformat()
        elif kind == "task-retried":
            # the k-th retry closes attempt k; never an attempt received after it happened
            attempt = info.retried + 1
            received = info.attempt_at(ts)
            if received:
                attempt = min(attempt, received)
            info.retried = max(info.retried, attempt)
            rec.update(status="failed", ended_at=when, error=_error(event))
        else:
            attempt = max(info.attempt_at(ts), info.retried + 1)
            if kind == "task-started":
                rec.update(status="running", started_at=when)
            elif kind == "task-succeeded":
                rec.update(status="completed", ended_at=when, output=_text(event.get("result")))
            elif kind == "task-failed":
                rec.update(status="failed", ended_at=when, error=_error(event))
            elif kind == "task-revoked":
                rec.update(status="timed_out" if event.get("expired") else "cancelled", ended_at=when)
            else:  # task-rejected
                rec["status"] = "scheduled" if event.get("requeue") else "cancelled"
                if not event.get("requeue"):
                    rec["ended_at"] = when

        run_key = info.run_key or uuid
        rec.update(source=SOURCE, run_key=run_key, step_key=uuid, attempt=attempt, attributes=attrs)
        if info.name:
            rec["name"] = info.name
        if info.parent and info.parent != uuid:
            rec["parent_step_key"] = info.parent
        root = self._tasks.get(run_key)
        if root is not None and root.name:
            rec["workflow"] = root.name
        rec["run_attributes"] = {**self.run_attributes, "celery.root_id": run_key}
        return {k: v for k, v in rec.items() if v is not None}


def _events(payload: Any) -> list[Any]:
    if isinstance(payload, Mapping) and "events" in payload:
        events = payload["events"]
        if not isinstance(events, list):
            raise PayloadRejected("must be a JSON array of Celery events", field="events")
        return events
    if isinstance(payload, Mapping):
        return [payload]
    if isinstance(payload, list):
        return payload
    raise PayloadRejected("expected a JSON array of Celery events, {'events': [...]}, or one event", field="events")


@register
class CeleryConnector:
    """Celery task events (JSON lines, an array, or ``{"events": [...]}``) to step records.

    One instance folds all the chunks of one file, so later events of a task find its run.
    """

    name: ClassVar[str] = SOURCE

    def __init__(self, *, max_tasks: int = 100_000) -> None:
        self.folder = CeleryEventFolder(max_tasks=max_tasks)

    def to_steps(self, payload: Any) -> list[StepRecord | dict[str, Any]]:
        return list(self.folder.fold(_events(payload)))
