"""Temporal workflow histories to step records (pure: no I/O).

Reads what ``temporal workflow show --output json`` and ``WorkflowHistory.to_json()`` print
(``{"events": [...]}``), the raw GetWorkflowExecutionHistory(Reverse) response
(``{"history": {"events": [...]}}``, ascending or descending), proto-JSON ``EVENT_TYPE_*`` or legacy
PascalCase event names, or a list of such documents. Every activity, local activity and child
workflow becomes one step record per attempt (``docs/connectors/temporal.md`` has the mapping).

A history does not carry its namespace, and older ones not their workflow id either: give them as
keyword arguments, or as ``workflowId`` / ``runId`` / ``namespace`` beside ``events`` in the
document (the pull does this). Without a run id the Started event's ``originalExecutionRunId`` is
used, which is the run id of any run that was not reset::

    >>> from connectors.temporal import TemporalConnector
    >>> history = {"events": [
    ...     {"eventId": "1", "eventTime": "2026-01-01T00:00:00Z", "eventType": "WorkflowExecutionStarted",
    ...      "workflowExecutionStartedEventAttributes": {"workflowType": {"name": "Hello"},
    ...                                                  "originalExecutionRunId": "r-1"}},
    ...     {"eventId": "5", "eventTime": "2026-01-01T00:00:01Z", "eventType": "ActivityTaskScheduled",
    ...      "activityTaskScheduledEventAttributes": {"activityId": "1", "activityType": {"name": "say"}}}]}
    >>> [r["step_key"] for r in TemporalConnector(workflow_id="wf-1").to_steps(history)]
    ['activity:5']
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar

import orjson

from evalsvc.errors import PayloadRejected

from .base import register

__all__ = [
    "HELPER_ACTIVITY_ID",
    "TemporalConnector",
    "close_status",
    "decode_payloads",
    "enum_name",
    "history_to_steps",
    "parse_time",
]

SOURCE = "temporal"
# close event (normalised name) of a workflow -> (evalsvc run status, Temporal's status)
_RUN_CLOSE = {
    "WORKFLOW_EXECUTION_COMPLETED": ("completed", "COMPLETED"),
    "WORKFLOW_EXECUTION_FAILED": ("failed", "FAILED"),
    "WORKFLOW_EXECUTION_TIMED_OUT": ("failed", "TIMED_OUT"),
    "WORKFLOW_EXECUTION_CANCELED": ("cancelled", "CANCELED"),
    "WORKFLOW_EXECUTION_TERMINATED": ("cancelled", "TERMINATED"),
    "WORKFLOW_EXECUTION_CONTINUED_AS_NEW": ("completed", "CONTINUED_AS_NEW"),
}
_ACTIVITY_CLOSE = {
    "ACTIVITY_TASK_COMPLETED": "completed",
    "ACTIVITY_TASK_FAILED": "failed",
    "ACTIVITY_TASK_TIMED_OUT": "timed_out",
    "ACTIVITY_TASK_CANCELED": "cancelled",
}
_CHILD_CLOSE = {
    "CHILD_WORKFLOW_EXECUTION_COMPLETED": "completed",
    "CHILD_WORKFLOW_EXECUTION_FAILED": "failed",
    "CHILD_WORKFLOW_EXECUTION_TIMED_OUT": "timed_out",
    "CHILD_WORKFLOW_EXECUTION_CANCELED": "cancelled",
    "CHILD_WORKFLOW_EXECUTION_TERMINATED": "cancelled",
    "START_CHILD_WORKFLOW_EXECUTION_FAILED": "failed",
}
_LOCAL_ACTIVITY_MARKERS = {"core_local_activity", "LocalActivity"}
_FAILURE_KINDS = {
    "applicationFailureInfo": "ApplicationError",
    "timeoutFailureInfo": "TimeoutError",
    "canceledFailureInfo": "CancelledError",
    "terminatedFailureInfo": "TerminatedError",
    "serverFailureInfo": "ServerError",
    "resetWorkflowFailureInfo": "ResetWorkflowError",
    "activityFailureInfo": "ActivityError",
    "childWorkflowExecutionFailureInfo": "ChildWorkflowError",
    "nexusOperationExecutionFailureInfo": "NexusOperationError",
}
# the activity id evalsvc's workflow helper gives each run of a step: evalsvc:<step number>:<run number>
HELPER_ACTIVITY_ID = re.compile(r"evalsvc:([^:]+):(\d+)")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_PLAIN_ENCODINGS = {"json/plain", "binary/null", "binary/plain", "json/protobuf", "binary/protobuf"}


def enum_name(value: Any, prefix: str = "") -> str | None:
    """``"RETRY_STATE_MAXIMUM_ATTEMPTS_REACHED"`` and ``"MaximumAttemptsReached"`` both give
    ``"MAXIMUM_ATTEMPTS_REACHED"`` (``prefix="RETRY_STATE_"``)."""
    if value is None or value == "":
        return None
    text = str(value)
    if text != text.upper():  # legacy PascalCase
        text = _CAMEL.sub("_", text).upper()
    return text.removeprefix(prefix) if prefix else text


def parse_time(value: Any) -> datetime | None:
    """RFC 3339 with up to nanoseconds (``2024-12-30T22:38:44.668149481Z``), or a protobuf Timestamp
    as ``{"seconds": ..., "nanos": ...}`` (local activity markers), to an aware datetime."""
    if isinstance(value, Mapping) and "seconds" in value:
        seconds = _int(value.get("seconds")) or 0
        return datetime.fromtimestamp(seconds, UTC).replace(microsecond=(_int(value.get("nanos")) or 0) // 1000)
    if not value or not isinstance(value, str):
        return None
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?", value.strip())
    if not m:
        raise PayloadRejected(f"not an RFC 3339 time: {value!r}", field="eventTime")
    frac = (m.group(2) or "")[:6].ljust(6, "0")
    parsed = datetime.fromisoformat(f"{m.group(1)}.{frac}{(m.group(3) or 'Z').replace('Z', '+00:00')}")
    if parsed.year <= 1970 and parsed.timestamp() <= 0:  # proto's zero timestamp means "unset"
        return None
    return parsed.astimezone(UTC)


def _b64(text: Any) -> bytes:
    if not isinstance(text, str):
        return b""
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=False)
    except (binascii.Error, ValueError):
        return text.encode()


def _metadata(raw: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in (raw or {}).items():
        if isinstance(value, str) and value in _PLAIN_ENCODINGS:  # already decoded by some exporters
            out[key] = value
        else:
            out[key] = _b64(value).decode("utf-8", "replace")
    return out


def _decode_payload(payload: Mapping[str, Any]) -> Any:
    meta = _metadata(payload.get("metadata"))
    encoding = meta.get("encoding", "")
    data = _b64(payload.get("data", ""))
    if encoding == "binary/null":
        return None
    if encoding in ("json/plain", "json/protobuf"):
        try:
            return orjson.loads(data) if data else None
        except orjson.JSONDecodeError:
            pass
    elif encoding == "binary/plain":
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            pass
    # encrypted, codec-encoded or unknown payloads stay opaque (they need the user's codec)
    return {"encoding": encoding or None, "metadata": meta, "data": payload.get("data")}


def decode_payloads(value: Any) -> Any:
    """``{"payloads": [p]}`` to p's value, several payloads to a list of values, none to ``None``.

    >>> decode_payloads({"payloads": [{"metadata": {"encoding": "anNvbi9wbGFpbg=="}, "data": "MzA="}]})
    30
    """
    if not isinstance(value, Mapping):
        return None
    if "metadata" in value or "data" in value:  # a single Payload (map entries, headers)
        return _decode_payload(value)
    items = [_decode_payload(p) for p in value.get("payloads") or [] if isinstance(p, Mapping)]
    if not items:
        return None
    return items[0] if len(items) == 1 else items


def _failure(raw: Any) -> dict[str, Any] | None:
    """A Temporal Failure (with its cause chain) as a step error."""
    if not isinstance(raw, Mapping):
        return None
    message, stack = raw.get("message") or "", raw.get("stackTrace") or None
    if raw.get("encodedAttributes"):  # a failure converter moved message and stack into a payload
        enc = decode_payloads(raw["encodedAttributes"])
        if isinstance(enc, Mapping):
            message = enc.get("message") or message
            stack = enc.get("stack_trace") or stack
    err: dict[str, Any] = {"type": None, "message": message, "stack": stack}
    if raw.get("source"):
        err["source"] = raw["source"]
    for key, default_type in _FAILURE_KINDS.items():
        info = raw.get(key)
        if info is None:
            continue
        err["type"] = (info or {}).get("type") or default_type
        if key == "applicationFailureInfo":
            err["retryable"] = not (info or {}).get("nonRetryable", False)
            if (info or {}).get("details"):
                err["details"] = decode_payloads(info["details"])
        elif key == "timeoutFailureInfo":
            err["timeout_type"] = enum_name((info or {}).get("timeoutType"), "TIMEOUT_TYPE_")
        if isinstance(info, Mapping) and info.get("retryState"):
            err["retry_state"] = enum_name(info["retryState"], "RETRY_STATE_")
        break
    cause = _failure(raw.get("cause"))
    if cause is not None:
        err["cause"] = [{k: v for k, v in cause.items() if k != "cause"}, *cause.get("cause", [])]
    return err


def _int(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


class _Event:
    __slots__ = ("attrs", "id", "summary", "time", "type")

    def __init__(self, raw: Mapping[str, Any], index: int) -> None:
        if not isinstance(raw, Mapping):
            raise PayloadRejected(f"event {index} is not an object", field=f"events.{index}")
        event_id = _int(raw.get("eventId"))
        if event_id is None:
            raise PayloadRejected(f"event {index} has no eventId", field=f"events.{index}.eventId")
        self.id = event_id
        self.type = enum_name(raw.get("eventType"), "EVENT_TYPE_") or ""
        self.time = parse_time(raw.get("eventTime"))
        attrs = next((v for k, v in raw.items() if k.endswith("EventAttributes") and isinstance(v, Mapping)), None)
        self.attrs: Mapping[str, Any] = attrs or {}
        meta = raw.get("userMetadata")
        self.summary = decode_payloads(meta.get("summary")) if isinstance(meta, Mapping) else None


def _events(doc: Mapping[str, Any]) -> list[_Event]:
    events = doc.get("events")
    if events is None and isinstance(doc.get("history"), Mapping):
        events = doc["history"].get("events")
    if not isinstance(events, list):
        raise PayloadRejected("expected a workflow history: {'events': [...]} or {'history': {'events': [...]}}",
                              field="events")  # fmt: skip
    return sorted((_Event(e, i) for i, e in enumerate(events)), key=lambda e: e.id)


def close_status(doc: Mapping[str, Any]) -> str:
    """Temporal's status of the run a history describes: ``RUNNING`` until a close event."""
    close = next((e for e in reversed(_events(doc)) if e.type in _RUN_CLOSE), None)
    return _RUN_CLOSE[close.type][1] if close else "RUNNING"


def _pick(doc: Mapping[str, Any], *names: str) -> Any:
    return next((doc[n] for n in names if doc.get(n) not in (None, "")), None)


def history_to_steps(
    doc: Mapping[str, Any],
    *,
    workflow_id: str | None = None,
    run_id: str | None = None,
    namespace: str | None = None,
) -> list[dict[str, Any]]:
    """One workflow history (see the module docstring) to step-record dicts.

    ``doc`` may also carry ``pendingActivities`` as ``temporal workflow describe`` prints them: they
    give the attempt, start time and last failure of activities that are still running.
    """
    events = _events(doc)
    started = next((e for e in events if e.type == "WORKFLOW_EXECUTION_STARTED"), None)
    sa: Mapping[str, Any] = started.attrs if started else {}
    workflow_id = workflow_id or _pick(doc, "workflowId", "workflow_id") or sa.get("workflowId")
    run_id = run_id or _pick(doc, "runId", "run_id") or sa.get("originalExecutionRunId")
    namespace = namespace or _pick(doc, "namespace")
    if not run_id:
        raise PayloadRejected("the history names no run id: pass runId beside events", field="runId")
    close = next((e for e in reversed(events) if e.type in _RUN_CLOSE), None)
    run_status, temporal_status = _RUN_CLOSE[close.type] if close else ("running", "RUNNING")
    run_attributes: dict[str, Any] = {"run_id": run_id, "temporal_status": temporal_status}
    if workflow_id:
        run_attributes["workflow_id"] = workflow_id
    if namespace:
        run_attributes["namespace"] = namespace
    if (sa.get("taskQueue") or {}).get("name"):
        run_attributes["task_queue"] = sa["taskQueue"]["name"]
    parent = sa.get("parentWorkflowExecution")
    if isinstance(parent, Mapping) and parent.get("workflowId"):
        run_attributes["parent_workflow_id"] = parent["workflowId"]
        run_attributes["parent_run_id"] = parent.get("runId")
    if close and close.attrs.get("newExecutionRunId"):
        run_attributes["new_execution_run_id"] = close.attrs["newExecutionRunId"]
    if events:
        run_attributes["last_event_id"] = events[-1].id
    common: dict[str, Any] = {
        "source": SOURCE,
        "run_key": run_id,
        "workflow": (sa.get("workflowType") or {}).get("name"),
        "run_status": run_status,
        "run_attributes": run_attributes,
    }
    closed_run = f"the workflow closed ({temporal_status}) before the step did" if close else None
    pending = {p.get("activityId"): p for p in doc.get("pendingActivities") or [] if isinstance(p, Mapping)}
    records = _activities(events, pending, closed_run) + _local_activities(events) + _children(events, closed_run)
    records.sort(key=lambda r: (r["attributes"]["event_id"], r["attempt"]))
    return [{**common, **r} for r in records]


def _open_status(closed_run: str | None, state: Any = None) -> dict[str, Any]:
    """A step with no close event: running, unless its workflow closed (then it was cancelled)."""
    if closed_run:
        return {"status": "cancelled", "error": {"type": "WorkflowClosed", "message": closed_run}}
    return {"status": "scheduled" if enum_name(state, "PENDING_ACTIVITY_STATE_") == "SCHEDULED" else "running"}


def _activities(events: list[_Event], pending: Mapping[Any, Any], closed_run: str | None) -> list[dict[str, Any]]:
    started: dict[int, _Event] = {}
    closed: dict[int, _Event] = {}
    for e in events:
        sched = _int(e.attrs.get("scheduledEventId"))
        if sched is None:
            continue
        if e.type == "ACTIVITY_TASK_STARTED":
            started[sched] = e
        elif e.type in _ACTIVITY_CLOSE:
            closed[sched] = e

    def attempt_info(e: _Event) -> tuple[int, Any, Any]:
        """Temporal's attempt of a scheduled activity, its last failure, and its pending info."""
        start = started.get(e.id)
        info = pending.get(e.attrs.get("activityId")) if e.id not in closed else None
        source = start.attrs if start else info or {}
        return _int(source.get("attempt")) or 1, source.get("lastFailure"), info

    # re-runs of one helper step (activity id evalsvc:<n>:<run>): one step key, attempts counted on
    reruns: dict[int, tuple[str, int, int]] = {}  # scheduled event id -> (step key, re-run, attempts before)
    groups: dict[str, tuple[str, int, int]] = {}
    for e in events:
        if e.type != "ACTIVITY_TASK_SCHEDULED":
            continue
        m = HELPER_ACTIVITY_ID.fullmatch(str(e.attrs.get("activityId") or ""))
        if m is None:
            continue
        key, n, used = groups.get(m.group(1), (f"activity:{e.id}", 0, 0))
        reruns[e.id] = (key, n + 1, used)
        groups[m.group(1)] = (key, n + 1, used + attempt_info(e)[0])
    out: list[dict[str, Any]] = []
    for e in events:
        if e.type != "ACTIVITY_TASK_SCHEDULED":
            continue
        a = e.attrs
        start, end = started.get(e.id), closed.get(e.id)
        temporal_attempt, last_failure, info = attempt_info(e)
        step_key, rerun, offset = reruns.get(e.id, (f"activity:{e.id}", 0, 0))
        attempt = offset + temporal_attempt
        attributes: dict[str, Any] = {
            "event_id": e.id,
            "activity_id": a.get("activityId"),
            "task_queue": (a.get("taskQueue") or {}).get("name"),
            "reset_event_id": _int(a.get("workflowTaskCompletedEventId")),
        }
        if rerun:
            attributes.update(rerun=rerun, temporal_attempt=temporal_attempt)
        max_attempts = _int((a.get("retryPolicy") or {}).get("maximumAttempts"))
        if max_attempts:
            attributes["max_attempts"] = max_attempts
        rec: dict[str, Any] = {
            "step_key": step_key,
            "name": (a.get("activityType") or {}).get("name") or f"activity:{e.id}",
            "kind": "activity",
            "input": decode_payloads(a.get("input")),
            "started_at": start.time if start else parse_time((info or {}).get("lastStartedTime")),
        }
        if end is None:
            rec.update(_open_status(closed_run, (info or {}).get("state")))
        else:
            rec["status"] = _ACTIVITY_CLOSE[end.type]
            rec["ended_at"] = end.time
            attributes["closed_event_id"] = end.id
            if start is None and rec["started_at"] is None and end.type == "ACTIVITY_TASK_CANCELED":
                attributes["cancelled_before_start"] = True
            if end.type == "ACTIVITY_TASK_COMPLETED":
                rec["output"] = decode_payloads(end.attrs.get("result"))
                rec.update(_llm_usage(rec["input"], rec["output"]))
            elif end.type == "ACTIVITY_TASK_CANCELED":
                details = decode_payloads(end.attrs.get("details"))
                if details is not None:
                    attributes["cancel_details"] = details
            else:
                rec["error"] = _failure(end.attrs.get("failure")) or {"message": end.type.lower()}
                retry_state = enum_name(end.attrs.get("retryState"), "RETRY_STATE_")
                if retry_state:
                    rec["error"]["retry_state"] = retry_state
            if end.attrs.get("identity") or (start and start.attrs.get("identity")):
                attributes["worker"] = end.attrs.get("identity") or (start.attrs.get("identity") if start else None)
        if start is not None:
            attributes["started_event_id"] = start.id
        if e.summary is not None:
            attributes["summary"] = e.summary
        rec["attempt"] = attempt
        rec["attributes"] = attributes
        out.append(rec)
        previous = _failure(last_failure)
        if temporal_attempt > 1 and previous is not None:
            # Temporal keeps the failure of the attempt before the last one, nothing older
            out.append({
                "step_key": rec["step_key"], "name": rec["name"], "kind": "activity", "input": rec["input"],
                "attempt": attempt - 1,
                "status": "timed_out" if previous["type"] == "TimeoutError" else "failed",
                "error": previous,
                "attributes": {**{k: attributes[k] for k in ("event_id", "activity_id", "task_queue")},
                               **({"rerun": rerun, "temporal_attempt": temporal_attempt - 1} if rerun else {}),
                               "from_last_failure": True},
            })  # fmt: skip
    return out


def _llm_usage(given: Any, result: Any) -> dict[str, Any]:
    """Model and token counts of an LLM-calling activity whose result carries a ``usage`` object
    (OpenAI's ``input_tokens``/``output_tokens`` or ``prompt_tokens``/``completion_tokens``)."""
    out: dict[str, Any] = {}
    usage = result.get("usage") if isinstance(result, Mapping) else None
    if isinstance(usage, Mapping):
        for target, names in (("input_tokens", ("input_tokens", "prompt_tokens")),
                              ("output_tokens", ("output_tokens", "completion_tokens"))):  # fmt: skip
            value = next((usage[n] for n in names if isinstance(usage.get(n), int) and usage[n] >= 0), None)
            if value is not None:
                out[target] = value
    for source in (result, given):
        model = source.get("model") or source.get("model_name") if isinstance(source, Mapping) else None
        if isinstance(model, str) and model:
            out["model"] = model[:256]
            break
    return out


def _local_activities(events: list[_Event]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for e in events:
        if e.type != "MARKER_RECORDED" or e.attrs.get("markerName") not in _LOCAL_ACTIVITY_MARKERS:
            continue
        details = {k: decode_payloads(v) for k, v in (e.attrs.get("details") or {}).items()}
        data = details.get("data")
        data = data[0] if isinstance(data, list) and data else data
        data = {str(k).lower().replace("_", ""): v for k, v in data.items()} if isinstance(data, Mapping) else {}
        error = _failure(e.attrs.get("failure"))
        rec: dict[str, Any] = {
            "step_key": f"local_activity:{e.id}",
            "name": data.get("activitytype") or data.get("type") or f"local_activity:{e.id}",
            "kind": "local_activity",
            "attempt": max(1, _int(data.get("attempt")) or 1),
            "status": "failed" if error else "completed",
            "ended_at": parse_time(data.get("completetime")) or e.time,
            "attributes": {"event_id": e.id, "activity_id": data.get("activityid"),
                           "reset_event_id": _int(e.attrs.get("workflowTaskCompletedEventId"))},
        }  # fmt: skip
        if error:
            rec["error"] = error
            if error.get("type") == "TimeoutError":
                rec["status"] = "timed_out"
        else:
            rec["output"] = details.get("result")
            rec.update(_llm_usage(None, rec["output"]))
        scheduled = parse_time(data.get("originalscheduletime"))
        if scheduled and scheduled <= rec["ended_at"]:
            rec["started_at"] = scheduled
        out.append(rec)
    return out


def _children(events: list[_Event], closed_run: str | None) -> list[dict[str, Any]]:
    started: dict[int, _Event] = {}
    closed: dict[int, _Event] = {}
    for e in events:
        init = _int(e.attrs.get("initiatedEventId"))
        if init is None:
            continue
        if e.type == "CHILD_WORKFLOW_EXECUTION_STARTED":
            started[init] = e
        elif e.type in _CHILD_CLOSE:
            closed[init] = e
    out: list[dict[str, Any]] = []
    for e in events:
        if e.type != "START_CHILD_WORKFLOW_EXECUTION_INITIATED":
            continue
        a = e.attrs
        start, end = started.get(e.id), closed.get(e.id)
        known = start or end
        execution = (known.attrs.get("workflowExecution") if known else None) or {}
        rec: dict[str, Any] = {
            "step_key": f"child:{e.id}",
            "name": (a.get("workflowType") or {}).get("name") or f"child:{e.id}",
            "kind": "child_workflow",
            "attempt": 1,
            "input": decode_payloads(a.get("input")),
            "started_at": start.time if start else None,
            "attributes": {
                "event_id": e.id,
                "child_workflow_id": execution.get("workflowId") or a.get("workflowId"),
                "child_run_id": execution.get("runId"),
                "child_namespace": a.get("namespace") or None,
                "reset_event_id": _int(a.get("workflowTaskCompletedEventId")),
            },
        }
        if end is None:
            rec.update(_open_status(closed_run))
        else:
            rec["status"] = _CHILD_CLOSE[end.type]
            rec["ended_at"] = end.time
            if end.type == "CHILD_WORKFLOW_EXECUTION_COMPLETED":
                rec["output"] = decode_payloads(end.attrs.get("result"))
            elif end.type == "START_CHILD_WORKFLOW_EXECUTION_FAILED":
                cause = enum_name(end.attrs.get("cause"), "START_CHILD_WORKFLOW_EXECUTION_FAILED_CAUSE_")
                rec["error"] = {"type": "StartChildWorkflowFailed", "message": cause or "start failed"}
            elif end.type in ("CHILD_WORKFLOW_EXECUTION_FAILED", "CHILD_WORKFLOW_EXECUTION_TIMED_OUT"):
                rec["error"] = _failure(end.attrs.get("failure")) or {"message": end.type.lower()}
        out.append(rec)
    return out


def _documents(payload: Any) -> Iterable[Mapping[str, Any]]:
    if isinstance(payload, Mapping):
        if "events" in payload or "history" in payload:
            return [payload]
        raise PayloadRejected("expected a workflow history with 'events' or 'history'", field="events")
    if isinstance(payload, list) and all(isinstance(d, Mapping) for d in payload):
        return payload
    raise PayloadRejected("expected a workflow history document or a list of them", field="events")


@register
class TemporalConnector:
    """The ``temporal`` connector: workflow histories (one or a list) to step records."""

    name: ClassVar[str] = "temporal"

    def __init__(self, *, workflow_id: str | None = None, run_id: str | None = None, namespace: str | None = None):
        self.workflow_id, self.run_id, self.namespace = workflow_id, run_id, namespace

    def to_steps(self, payload: Any) -> list[Any]:
        out: list[Any] = []
        for doc in _documents(payload):
            out.extend(
                history_to_steps(doc, workflow_id=self.workflow_id, run_id=self.run_id, namespace=self.namespace)
            )
        return out
