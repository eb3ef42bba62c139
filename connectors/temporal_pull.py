"""The live side of the Temporal connector: list workflow executions through the ``temporalio``
client, fetch the histories that changed since the last pull and translate them.

It never touches the store. The caller gives it a read-only view of what earlier pulls remembered
(:class:`StateView`), stores each :class:`PullItem`'s records, and only then saves the item's
``cursor`` updates, so a crash between the two makes the next pull fetch that history again (its
records come back as duplicates) and never skips one::

    >>> from temporalio.client import Client  # doctest: +SKIP
    >>> client = await Client.connect("127.0.0.1:7233", namespace="default")  # doctest: +SKIP
    >>> async for item in pull_executions(client, namespace="default", scope="127.0.0.1:7233",
    ...                                   query="WorkflowType='Agent'", state=view):  # doctest: +SKIP
    ...     store(item.records); view.save(item.cursor)  # doctest: +SKIP

State keys (values are JSON objects): ``run:<namespace>/<run id>`` for an execution ingested whole
after it closed, ``open:<namespace>/<run id>`` for one ingested while it ran (deleted when it closes
and is ingested whole), and ``watermark:<scope>/<namespace>/<query hash>``: the latest close time
seen, so that later listings ask only for running executions and those closed since then (less a
margin, for the visibility store's lag).
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from google.protobuf.json_format import MessageToDict
from temporalio.client import Client, WorkflowExecution, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from .temporal import close_status, history_to_steps, parse_time

__all__ = ["PullItem", "StateView", "pull_executions", "supersede", "watermark_key"]

_PAGE = 100


class StateView(Protocol):
    """Read access to what earlier pulls saved (the caller backs it with its store)."""

    def get(self, keys: Sequence[str]) -> Mapping[str, Any]: ...

    def prefix(self, prefix: str) -> Mapping[str, Any]: ...


@dataclass
class PullItem:
    """One execution's step records (empty when it was skipped) and the state to save after them."""

    workflow_id: str
    run_id: str
    status: str  # Temporal's: RUNNING, COMPLETED, FAILED, ...
    records: list[dict[str, Any]] = field(default_factory=list)
    cursor: dict[str, Any] = field(default_factory=dict)
    fetched: bool = False


def watermark_key(*, scope: str, namespace: str, query: str | None) -> str:
    digest = hashlib.sha256((query or "").encode()).hexdigest()[:16]
    return f"watermark:{scope}/{namespace}/{digest}"


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _list_query(query: str | None, since: datetime | None) -> str | None:
    parts = [f"({query})"] if query else []
    if since is not None:
        parts.append(f"(ExecutionStatus = 'Running' OR CloseTime >= '{_iso(since)}')")
    return " AND ".join(parts) or None


def _status(status: WorkflowExecutionStatus | None) -> str:
    return status.name if status is not None else "RUNNING"


def supersede(records: list[dict[str, Any]], running_before: Mapping[str, int]) -> list[dict[str, Any]]:
    """Records that close attempts an earlier pull stored as running and that the history no longer
    shows: Temporal keeps only the last attempt and the previous one's failure, so an attempt seen
    running and followed by a later one failed without a trace. Pure; ``running_before`` maps a step
    key to the attempt stored as running.

    >>> base = {"source": "temporal", "run_key": "r", "step_key": "activity:5", "name": "draft", "kind": "activity"}
    >>> [(r["attempt"], r["status"]) for r in supersede([{**base, "attempt": 3}], {"activity:5": 1})]
    [(1, 'failed')]
    """
    latest: dict[str, dict[str, Any]] = {}
    emitted = {(r["step_key"], r["attempt"]) for r in records}
    for r in records:
        if r["attempt"] > latest.get(r["step_key"], {}).get("attempt", 0):
            latest[r["step_key"]] = r
    out: list[dict[str, Any]] = []
    for step_key, attempt in running_before.items():
        last = latest.get(step_key)
        if last is None or attempt >= last["attempt"] or (step_key, attempt) in emitted:
            continue
        keep = ("source", "run_key", "workflow", "run_status", "run_attributes", "step_key", "name", "kind", "input")
        out.append({
            **{k: last[k] for k in keep if k in last},
            "attempt": attempt,
            "status": "failed",
            "error": {"type": "AttemptSuperseded",
                      "message": f"attempt {attempt} was retried as attempt {last['attempt']}; Temporal's history "
                                 "keeps no details of it"},
            "attributes": {"event_id": (last.get("attributes") or {}).get("event_id"), "superseded": True},
        })  # fmt: skip
    return out


async def _item(
    client: Client, *, namespace: str, workflow_id: str, run_id: str, seen: Mapping[str, Any] | None = None
) -> PullItem:
    """Fetch one execution's history (plus its pending activities while it runs) and translate it.

    ``seen`` is what an earlier pull saved while the execution ran (its ``open:`` state).
    """
    handle = client.get_workflow_handle(workflow_id, run_id=run_id)
    doc: dict[str, Any] = (await handle.fetch_history()).to_json_dict()
    doc.update(workflowId=workflow_id, runId=run_id, namespace=namespace)
    status = close_status(doc)
    if status == "RUNNING":
        description = await handle.describe()
        if description.status not in (None, WorkflowExecutionStatus.RUNNING):  # it has just closed
            return await _item(client, namespace=namespace, workflow_id=workflow_id, run_id=run_id, seen=seen)
        # the attempt, last failure and start time of activities still running
        doc["pendingActivities"] = [MessageToDict(p) for p in description.raw_description.pending_activities]
    records = history_to_steps(doc)
    running_before = (seen or {}).get("running") or {}
    if isinstance(running_before, Mapping):
        records += supersede(records, running_before)
    events = len(doc.get("events") or [])
    item = PullItem(workflow_id=workflow_id, run_id=run_id, status=status, records=records, fetched=True)
    run_key, open_key = f"run:{namespace}/{run_id}", f"open:{namespace}/{run_id}"
    if status == "RUNNING":
        running = {r["step_key"]: r["attempt"] for r in records if r.get("status") in ("running", "scheduled")}
        item.cursor = {open_key: {"workflow_id": workflow_id, "events": events, "running": running}}
    else:
        item.cursor = {run_key: {"workflow_id": workflow_id, "status": status, "events": events}, open_key: None}
    return item


async def pull_executions(
    client: Client,
    *,
    namespace: str,
    scope: str,
    state: StateView,
    query: str | None = None,
    margin: timedelta = timedelta(minutes=5),
) -> AsyncIterator[PullItem]:
    """Yield one :class:`PullItem` per listed execution (skipped ones carry no records), then one
    that carries only the new watermark.

    A closed execution already ingested whole is not fetched again; a running one is fetched when its
    history grew, and once more when it has closed, even if the listing no longer shows it.
    """
    wm_key = watermark_key(scope=scope, namespace=namespace, query=query)
    watermark = parse_time((state.get([wm_key]).get(wm_key) or {}).get("close_time"))
    newest = watermark
    listed: set[str] = set()

    async def page_items(page: list[WorkflowExecution]) -> AsyncIterator[PullItem]:
        nonlocal newest
        keys = [f"{p}:{namespace}/{ex.run_id}" for ex in page for p in ("run", "open")]
        known = state.get(keys)
        for ex in page:
            listed.add(ex.run_id)
            status = _status(ex.status)
            done = known.get(f"run:{namespace}/{ex.run_id}")
            seen = known.get(f"open:{namespace}/{ex.run_id}")
            if isinstance(done, Mapping):  # closed and ingested whole: a closed history never grows
                yield PullItem(workflow_id=ex.id, run_id=ex.run_id, status=str(done.get("status") or status))
            elif (
                status == "RUNNING"
                and isinstance(seen, Mapping)
                and int(seen.get("events", 0)) >= (ex.history_length or 0)
            ):
                yield PullItem(workflow_id=ex.id, run_id=ex.run_id, status=status)  # nothing new
            else:
                yield await _item(client, namespace=namespace, workflow_id=ex.id, run_id=ex.run_id, seen=seen)
            if ex.close_time is not None and (newest is None or ex.close_time > newest):
                newest = ex.close_time

    page: list[WorkflowExecution] = []
    async for ex in client.list_workflows(_list_query(query, watermark - margin if watermark else None)):
        page.append(ex)
        if len(page) >= _PAGE:
            async for item in page_items(page):
                yield item
            page = []
    async for item in page_items(page):
        yield item
    # executions ingested while running that the listing did not show again (closed long ago, or
    # the visibility store lags): ask for each directly
    for key, value in state.prefix(f"open:{namespace}/").items():
        run_id = key.rsplit("/", 1)[1]
        if run_id in listed or not isinstance(value, Mapping) or not value.get("workflow_id"):
            continue
        try:
            yield await _item(client, namespace=namespace, workflow_id=value["workflow_id"], run_id=run_id, seen=value)
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise
            # gone (past the namespace's retention): nothing more will come of it
            yield PullItem(workflow_id=value["workflow_id"], run_id=run_id, status="NOT_FOUND", cursor={key: None})
    if newest is not None and newest != watermark:
        yield PullItem(workflow_id="", run_id="", status="", cursor={wm_key: {"close_time": _iso(newest)}})
