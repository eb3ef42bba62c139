"""Inngest to step records: function-run histories and the ``inngest/function.*`` system events.

Two payloads, told apart by their shape (see ``docs/connectors/inngest.md`` for the mapping table):

- a **run history**: the ``functionRun.history`` array of the Dev Server / Cloud GraphQL API
  (items ``{id, attempt, createdAt, groupID, stepName, type, sleep, waitForEvent, waitResult,
  cancel, url}``), bare or wrapped as ``{"run_id", "function_id", "history": [...], "output"}``
  (also the GraphQL ``{"data": {"functionRun": {...}}}`` answer). Every ``groupID`` is one step and
  every ``attempt`` of it one record; the run's end is the step ``function``.
- a **system event** ``inngest/function.finished`` / ``.failed`` / ``.cancelled``
  (``{id, name, ts, data: {function_id, run_id, event, result | error}}``): the run's end, the
  step ``function`` with the function's output or error. It converges with the history's.

A list of such documents (JSON lines, a JSON array of events) works too. Pure: no I/O.

    >>> from connectors.inngest import InngestConnector
    >>> recs = InngestConnector().to_steps({"name": "inngest/function.finished", "ts": 1700000000000,
    ...     "data": {"function_id": "shop-send-receipt", "run_id": "01HRUN", "result": {"sent": True}}})
    >>> [(r["run_key"], r["step_key"], r["status"], r["output"]) for r in recs]
    [('01HRUN', 'function', 'completed', {'sent': True})]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlparse

from evalsvc.errors import PayloadRejected
from evalsvc.schemas import StepRecord

from .base import register

__all__ = ["FUNCTION_STEP", "InngestConnector", "event_to_steps", "history_to_steps"]

SOURCE = "inngest"
FUNCTION_STEP = "function"  # step_key of a run's end: the function's own output or error
SYSTEM_EVENTS = ("inngest/function.finished", "inngest/function.failed", "inngest/function.cancelled")
STEP_TYPES = frozenset(
    {"StepScheduled", "StepStarted", "StepCompleted", "StepErrored", "StepFailed", "StepSleeping", "StepWaiting",
     "StepInvoking"}
)  # fmt: skip
FUNCTION_END = {"FunctionCompleted": "completed", "FunctionFailed": "failed", "FunctionCancelled": "cancelled"}
IGNORED_TYPES = frozenset({"FunctionScheduled", "FunctionStatusUpdated", "None"})
KNOWN_TYPES = STEP_TYPES | set(FUNCTION_END) | IGNORED_TYPES | {"FunctionStarted"}
PLACEHOLDER_NAME = "step"  # what Inngest calls a step before the SDK has discovered its name


def _time(value: Any, field_name: str) -> datetime:
    if not isinstance(value, str) or not value:
        raise PayloadRejected("must be an RFC 3339 time string", field=field_name)
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise PayloadRejected(f"is not an RFC 3339 time: {value!r}", field=field_name) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value else None


def _is_history(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(i, dict) and "type" in i and ("groupID" in i or "createdAt" in i) for i in value)
    )


# ---- run histories ------------------------------------------------------------------------------


@dataclass
class _Attempt:
    number: int  # 0-based, as Inngest counts
    scheduled_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    state: str = "scheduled"  # scheduled running completed errored failed sleeping waiting cancelled
    item_ids: list[str] = field(default_factory=list)
    wait_result: dict[str, Any] | None = None


@dataclass
class _Group:
    group_id: str
    name: str | None = None
    kind: str = "step"
    sleep_until: datetime | None = None
    wait_for_event: dict[str, Any] | None = None
    url: str | None = None
    attempts: dict[int, _Attempt] = field(default_factory=dict)


def _fn_from_url(url: Any) -> str | None:
    if not isinstance(url, str):
        return None
    values = parse_qs(urlparse(url).query).get("fnId")
    return values[0] if values else None


def _apply(group: _Group, item: dict[str, Any], at: datetime, attempt: int) -> None:
    att = group.attempts.get(attempt)
    if att is None:
        att = group.attempts[attempt] = _Attempt(number=attempt, scheduled_at=at)
    att.item_ids.append(str(item.get("id") or ""))
    kind, name = item["type"], item.get("stepName")
    if isinstance(name, str) and name and name != PLACEHOLDER_NAME and group.name is None:
        group.name = name
    if item.get("url") and group.url is None:
        group.url = str(item["url"])
    if kind == "StepStarted":
        att.started_at = att.started_at or at
        att.state = "running"
    elif kind == "StepCompleted":
        if att.state == "waiting":  # the awaited event arrived, or the wait timed out
            result = item.get("waitResult") or {}
            att.wait_result = {"event_id": result.get("eventID"), "timed_out": bool(result.get("timeout"))}
        att.state, att.ended_at = "completed", at
    elif kind == "StepErrored":
        att.state, att.ended_at = "errored", at
    elif kind == "StepFailed":
        att.state, att.ended_at = "failed", at
    elif kind == "StepSleeping":
        group.kind = "sleep"
        sleep = item.get("sleep") or {}
        if sleep.get("until"):
            group.sleep_until = _time(sleep["until"], "sleep.until")
        att.started_at = att.started_at or at
        att.state, att.ended_at = "sleeping", None
    elif kind == "StepWaiting":
        group.kind = "wait_for_event"
        wait = item.get("waitForEvent") or {}
        group.wait_for_event = {
            "event_name": wait.get("eventName"),
            "expression": wait.get("expression"),
            "timeout": wait.get("timeout"),
        }
        att.started_at = att.started_at or at
        att.state, att.ended_at = "waiting", None
    elif kind == "StepInvoking":  # step.invoke: waits for another function's run
        group.kind = "invoke"
        att.started_at = att.started_at or at
        att.state, att.ended_at = "invoking", None


_ERRORS: dict[str, Callable[[int], dict[str, Any]]] = {
    "errored": lambda n: {
        "type": "StepErrored",
        "message": f"attempt {n} errored; Inngest retried the step",
        "retryable": True,
    },
    "failed": lambda n: {
        "type": "StepFailed",
        "message": f"step failed on attempt {n}, its last; the run failed with it",
        "retryable": False,
    },
}
_STATUS = {
    "scheduled": "scheduled",
    "running": "running",
    "sleeping": "running",
    "waiting": "running",
    "invoking": "running",
    "completed": "completed",
    "errored": "failed",
    "failed": "failed",
    "cancelled": "cancelled",
}


def history_to_steps(
    items: list[Any],
    *,
    run_id: str | None = None,
    function_id: str | None = None,
    output: Any = None,
    where: str = "",
) -> list[dict[str, Any]]:
    """One record per attempt of each step group, plus the run's end as the step ``function``."""
    rows: list[tuple[datetime, int, dict[str, Any]]] = []
    for i, item in enumerate(items):
        at_field = f"{where}{i}"
        if not isinstance(item, dict):
            raise PayloadRejected("a history item must be a JSON object", field=at_field)
        kind = item.get("type")
        if kind not in KNOWN_TYPES:
            raise PayloadRejected(f"unknown history item type {kind!r}", field=f"{at_field}.type")
        attempt = item.get("attempt", 0)
        if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 0:
            raise PayloadRejected("must be a non-negative integer (0-based)", field=f"{at_field}.attempt")
        rows.append((_time(item.get("createdAt"), f"{at_field}.createdAt"), i, item))
    if not rows:
        raise PayloadRejected("the run history is empty", field=where.rstrip(".") or "history")
    rows.sort(key=lambda r: (r[0], r[1]))  # histories are read in time order, whatever order they came in

    groups: dict[str, _Group] = {}
    fn_started: datetime | None = None
    fn_end: tuple[str, datetime, dict[str, Any]] | None = None
    last_time = rows[-1][0]
    for at, i, item in rows:
        kind = item["type"]
        function_id = function_id or _fn_from_url(item.get("url"))
        if kind == "FunctionStarted":
            fn_started = at
            run_id = run_id or (str(item["id"]) if item.get("id") else None)
            continue
        if kind in FUNCTION_END:
            fn_end = (FUNCTION_END[kind], at, item)
            continue
        if kind not in STEP_TYPES:
            continue
        group_id = item.get("groupID")
        if not isinstance(group_id, str) or not group_id:
            raise PayloadRejected("a step item needs its groupID", field=f"{where}{i}.groupID")
        group = groups.setdefault(group_id, _Group(group_id=group_id))
        _apply(group, item, at, item.get("attempt", 0))

    run_key = run_id
    if not run_key:
        raise PayloadRejected(
            "a history without its FunctionStarted item carries no run id: send it whole, or wrap it as "
            "{'run_id': ..., 'history': [...]}",
            field=f"{where}run_id" if where else "run_id",
        )
    run_status = fn_end[0] if fn_end else "running"
    common: dict[str, Any] = {"source": SOURCE, "run_key": run_key, "workflow": function_id, "run_status": run_status}
    if function_id:
        common["run_attributes"] = {"inngest.function_id": function_id}

    out: list[dict[str, Any]] = []
    for group in groups.values():
        for att in sorted(group.attempts.values(), key=lambda a: a.number):
            _settle(group, att, fn_end=fn_end, last_time=last_time)
            out.append(_step_record(group, att, common))
    out.append(_function_record(common, fn_started=fn_started, fn_end=fn_end, output=output, name=function_id))
    return out


def _settle(group: _Group, att: _Attempt, *, fn_end: tuple[str, datetime, dict[str, Any]] | None,
            last_time: datetime) -> None:  # fmt: skip
    """Finish what the history implies but does not say: sleeps that woke, steps a cancel cut."""
    if att.state == "sleeping" and group.sleep_until is not None:
        woke = last_time >= group.sleep_until or (fn_end is not None and fn_end[0] != "cancelled")
        if woke:
            att.state, att.ended_at = "completed", group.sleep_until
    cut = fn_end is not None and fn_end[0] == "cancelled"
    if cut and fn_end is not None and att.state in ("scheduled", "running", "sleeping", "waiting", "invoking"):
        att.state, att.ended_at = "cancelled", fn_end[1]


def _step_record(group: _Group, att: _Attempt, common: dict[str, Any]) -> dict[str, Any]:
    named = group.name is not None
    kind = group.kind if (named or group.kind != "step") else "execution"
    rec: dict[str, Any] = {
        **common,
        "step_key": group.group_id,
        "attempt": att.number + 1,
        "name": group.name or "execution",
        "kind": kind,
        "status": _STATUS[att.state],
        "started_at": _iso(att.started_at or att.scheduled_at),
        "ended_at": _iso(att.ended_at),
    }
    if att.state in _ERRORS:
        rec["error"] = _ERRORS[att.state](att.number + 1)
    if att.wait_result is not None:
        rec["output"] = att.wait_result
    attrs: dict[str, Any] = {"inngest.group_id": group.group_id, "inngest.history_ids": att.item_ids}
    if group.sleep_until is not None:
        attrs["inngest.sleep_until"] = _iso(group.sleep_until)
    if group.wait_for_event is not None:
        attrs["inngest.wait_for_event"] = group.wait_for_event
    if not named:
        attrs["inngest.unnamed"] = True  # an SDK call that ran the function's own code, no step tool
    rec["attributes"] = attrs
    return rec


def _function_record(
    common: dict[str, Any],
    *,
    fn_started: datetime | None,
    fn_end: tuple[str, datetime, dict[str, Any]] | None,
    output: Any,
    name: str | None,
) -> dict[str, Any]:
    rec: dict[str, Any] = {
        **common,
        "step_key": FUNCTION_STEP,
        "attempt": 1,
        "name": name or FUNCTION_STEP,
        "kind": "function",
        "status": fn_end[0] if fn_end else "running",
        "started_at": _iso(fn_started),
        "ended_at": _iso(fn_end[1]) if fn_end else None,
        "attributes": {},
    }
    if output is not None:
        rec["output"] = output
    if fn_end and fn_end[0] == "failed":
        rec["error"] = {"type": "FunctionFailed", "message": "the function run failed"}
    if fn_end and fn_end[0] == "cancelled":
        cancel = fn_end[2].get("cancel") or {}
        by = cancel.get("eventID") or cancel.get("userID")
        rec["error"] = {"type": "FunctionCancelled", "message": f"run cancelled by {by}" if by else "run cancelled"}
        rec["attributes"] = {"inngest.cancel": {k: v for k, v in cancel.items() if v is not None}}
    return rec


# ---- system events -------------------------------------------------------------------------------


def event_to_steps(event: dict[str, Any], *, where: str = "") -> list[dict[str, Any]]:
    """``inngest/function.finished|failed|cancelled`` to the record of the run's end."""
    name = event.get("name")
    if name not in SYSTEM_EVENTS:
        raise PayloadRejected(f"expected one of {', '.join(SYSTEM_EVENTS)}, got {name!r}", field=f"{where}name")
    data = event.get("data")
    if not isinstance(data, dict):
        raise PayloadRejected("must be an object", field=f"{where}data")
    run_id, function_id = data.get("run_id"), data.get("function_id")
    if not isinstance(run_id, str) or not run_id:
        raise PayloadRejected("must be the run's id (a ULID string)", field=f"{where}data.run_id")
    if not isinstance(function_id, str) or not function_id:
        raise PayloadRejected("must be the function's id (app-slug-fn-slug)", field=f"{where}data.function_id")
    ts = event.get("ts")
    ended: str | None = None
    if ts is not None:
        if not isinstance(ts, int | float) or isinstance(ts, bool) or ts < 0:
            raise PayloadRejected("must be a Unix time in milliseconds", field=f"{where}ts")
        ended = datetime.fromtimestamp(ts / 1000, tz=UTC).isoformat()

    error = data.get("error")
    said = str((data.get("_inngest") or {}).get("status") or "").lower()
    if name.endswith(".cancelled") or said == "cancelled":
        status = "cancelled"
    elif name.endswith(".failed") or error is not None or said == "failed":
        status = "failed"
    else:
        status = "completed"

    trigger = data.get("event") if isinstance(data.get("event"), dict) else None
    attrs: dict[str, Any] = {"inngest.system_event": name}
    if event.get("id"):
        attrs["inngest.system_event_id"] = event["id"]
    if trigger is not None:
        attrs["inngest.trigger_event_id"] = trigger.get("id")
        attrs["inngest.trigger_event_name"] = trigger.get("name")
    if data.get("correlation_id"):
        attrs["inngest.correlation_id"] = data["correlation_id"]
    rec: dict[str, Any] = {
        "source": SOURCE,
        "run_key": run_id,
        "workflow": function_id,
        "run_status": status,
        "run_attributes": {"inngest.function_id": function_id},
        "step_key": FUNCTION_STEP,
        "attempt": 1,
        "name": function_id,
        "kind": "function",
        "status": status,
        "ended_at": ended,
        "attributes": attrs,
    }
    if trigger is not None:
        rec["input"] = trigger
    if data.get("result") is not None:
        rec["output"] = data["result"]
    if error is not None:
        rec["error"] = _error(error)
    elif status == "cancelled":
        rec["error"] = {"type": "FunctionCancelled", "message": "function cancelled"}
    return [rec]


def _error(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        return {"type": "Error", "message": value}
    if not isinstance(value, dict):
        return {"type": "Error", "message": str(value)}
    out: dict[str, Any] = {"type": str(value.get("name") or "Error"), "message": str(value.get("message") or "")}
    if value.get("stack"):
        out["stack"] = str(value["stack"])
    if value.get("error") and value.get("error") != out["message"]:
        out["cause"] = value["error"]
    return out


# ---- the connector -------------------------------------------------------------------------------


def _document(doc: Any, where: str) -> list[dict[str, Any]]:
    if _is_history(doc):
        return history_to_steps(doc, where=where)
    if isinstance(doc, dict):
        if isinstance(doc.get("data"), dict) and isinstance(doc["data"].get("functionRun"), dict):
            doc, where = doc["data"]["functionRun"], f"{where}data.functionRun."
        if "history" in doc:
            history = doc["history"]
            if not isinstance(history, list):
                raise PayloadRejected("must be the run's history array", field=f"{where}history")
            run_id = doc.get("run_id") or doc.get("id")
            fn = doc.get("function_id") or doc.get("functionID") or doc.get("function_slug")
            return history_to_steps(
                history,
                run_id=str(run_id) if run_id else None,
                function_id=str(fn) if fn else None,
                output=doc.get("output"),
                where=f"{where}history.",
            )
        if "name" in doc or "data" in doc:
            return event_to_steps(doc, where=where)
    raise PayloadRejected(
        "expected an Inngest run history (array of history items, or {run_id, history}) or an "
        "inngest/function.* system event",
        field=where.rstrip(".") or "body",
    )


@register
class InngestConnector:
    """Run histories and ``inngest/function.*`` system events to step records."""

    name: ClassVar[str] = "inngest"

    def to_steps(self, payload: Any) -> list[StepRecord | dict[str, Any]]:
        if isinstance(payload, list) and not payload:
            raise PayloadRejected("nothing to ingest: the payload is an empty array", field="body")
        docs = [payload] if (isinstance(payload, dict) or _is_history(payload)) else payload
        if not isinstance(docs, list):
            raise PayloadRejected("expected a JSON object or array", field="body")
        out: list[StepRecord | dict[str, Any]] = []
        for n, doc in enumerate(docs):
            out.extend(_document(doc, f"{n}." if len(docs) > 1 else ""))
        return out
