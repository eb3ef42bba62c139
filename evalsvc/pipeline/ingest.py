"""Ingest step records: validate each item, upsert runs and steps on their natural keys, and
schedule the evaluators of every step that has finished.

Idempotent and order-free: a record's key is (project, source, run_key, step_key, attempt).
Records for one key merge field by field; the record that is further along (by status: scheduled <
running < an end state, then by ``ended_at``) wins where both carry a value, and the other fills the
gaps. So a step's start and end converge to the same row in either order, and the same record twice
is stored once (the second answer is ``duplicate``)::

    >>> from evalsvc.pipeline.ingest import parse_items
    >>> ok, rejected = parse_items([{"source": "json", "run_key": "r1", "step_key": "a"},
    ...                             {"source": "json", "run_key": "r1", "attempt": 0}], max_record_bytes=10_000)
    >>> [(i.index, i.field, i.reason) for i in rejected]
    [(1, 'step_key', 'Field required')]
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
import sqlalchemy as sa
from pydantic import ValidationError
from sqlmodel import Session

from evalsvc.schemas import TERMINAL_STEP_STATUSES, RunStatus, StepRecord, StepStatus, step_status_rank
from evalsvc.store.models import Run, Step, table, utcnow
from evalsvc.store.sql import chunks, key_filter

from .schedule import ActiveEvaluator, ScheduledStep, load_active_evaluators, schedule_evals

__all__ = ["IngestReport", "ItemResult", "ingest_batch", "ingest_records", "parse_items"]

ItemStatus = Literal["accepted", "duplicate", "rejected"]

MERGE_FIELDS = (
    "name",
    "kind",
    "status",
    "started_at",
    "ended_at",
    "input",
    "output",
    "expected",
    "error",
    "parent_step_key",
    "model",
    "input_tokens",
    "output_tokens",
    "cost_usd",
)
_MIN_TS = datetime.min.replace(tzinfo=UTC)


@dataclass(slots=True)
class ItemResult:
    index: int
    status: ItemStatus
    op: Literal["created", "updated"] | None = None
    field: str | None = None
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index, "status": self.status}
        if self.op:
            out["op"] = self.op
        if self.status == "rejected":
            out["field"] = self.field
            out["reason"] = self.reason
        return out


@dataclass
class IngestReport:
    items: list[ItemResult] = field(default_factory=list)
    pending_eval_ids: list[int] = field(default_factory=list)

    def count(self, status: ItemStatus) -> int:
        return sum(1 for i in self.items if i.status == status)

    def summary(self) -> dict[str, int]:
        return {s: self.count(s) for s in ("accepted", "duplicate", "rejected")}

    def extend(self, other: IngestReport) -> None:
        self.items.extend(other.items)
        self.pending_eval_ids.extend(other.pending_eval_ids)


def _reject(index: int, loc: Sequence[Any], msg: str) -> ItemResult:
    return ItemResult(index=index, status="rejected", field=".".join(str(p) for p in loc) or None, reason=msg)


def parse_items(
    items: Sequence[Any], *, max_record_bytes: int, offset: int = 0
) -> tuple[list[tuple[int, StepRecord]], list[ItemResult]]:
    """Validate raw items as step records; each bad item is rejected on its own, naming its field."""
    good: list[tuple[int, StepRecord]] = []
    bad: list[ItemResult] = []
    for i, item in enumerate(items, start=offset):
        if not isinstance(item, dict):
            bad.append(_reject(i, (), f"a record must be a JSON object, got {type(item).__name__}"))
            continue
        size = len(orjson.dumps(item, option=orjson.OPT_NON_STR_KEYS))
        if size > max_record_bytes:
            bad.append(_reject(i, (), f"record is {size} bytes, over the limit of {max_record_bytes}"))
            continue
        try:
            good.append((i, StepRecord.model_validate(item)))
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            msg = err["msg"].removeprefix("Value error, ")
            bad.append(_reject(i, err["loc"], msg))
    return good, bad


# ---- merging ----------------------------------------------------------------------------------


def _partial(rec: StepRecord) -> dict[str, Any]:
    """The fields this record actually says something about."""
    out: dict[str, Any] = {}
    for name in MERGE_FIELDS:
        if name in rec.model_fields_set or name == "status":
            value = getattr(rec, name)
            if value is not None:
                out[name] = value.model_dump(mode="json", exclude_none=True) if name == "error" else value
    if isinstance(out.get("status"), StepStatus):
        out["status"] = out["status"].value
    out["attributes"] = dict(rec.attributes)
    return out


def _precedence(row: dict[str, Any]) -> tuple[int, datetime]:
    status = row.get("status")
    return (step_status_rank(status) if status else -1, row.get("ended_at") or _MIN_TS)


def merge_step(base: dict[str, Any], incoming: dict[str, Any], *, step_key: str | None = None) -> dict[str, Any]:
    """Merge two partial rows of the same step key; the result does not depend on their order
    when they differ in progress (status, then end time); at a tie the incoming record corrects.

    Defaults are weak: a stored ``kind`` of ``step`` or a ``name`` equal to the step key gives way
    to a real value from the other record, whichever wins."""
    win, lose = (incoming, base) if _precedence(incoming) >= _precedence(base) else (base, incoming)
    out = {}
    for name in MERGE_FIELDS:
        value = win.get(name)
        other = lose.get(name)
        if value is None or (other is not None and _weak(name, value, step_key) and not _weak(name, other, step_key)):
            value = other
        out[name] = value
    out["attributes"] = {**(lose.get("attributes") or {}), **(win.get("attributes") or {})}
    return out


def _weak(name: str, value: Any, step_key: str | None) -> bool:
    return (name == "kind" and value == "step") or (name == "name" and value == step_key)


def _latency(row: dict[str, Any]) -> float | None:
    start, end = row.get("started_at"), row.get("ended_at")
    if start is None or end is None:
        return None
    delta: float = (end - start).total_seconds()
    return delta * 1000.0


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a.get(n) == b.get(n) for n in MERGE_FIELDS) and (a.get("attributes") or {}) == (
        b.get("attributes") or {}
    )


# ---- the use case -----------------------------------------------------------------------------

_STEP_COLS = ("id", "run_id", "step_key", "attempt", *MERGE_FIELDS, "attributes")


@dataclass(slots=True)
class _RunInfo:
    source: str
    run_key: str
    workflow: str | None = None
    status: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    id: int = 0


def ingest_records(
    *,
    session: Session,
    project_id: int,
    records: Sequence[tuple[int, StepRecord]],
    evaluators: list[ActiveEvaluator] | None = None,
) -> IngestReport:
    """Upsert validated records (with their item indexes) and schedule evaluators.

    Call inside :func:`evalsvc.store.db.write_session`, which holds the write lock, so that two
    writers never interleave a read-merge-write of the same keys.
    """
    report = IngestReport()
    if not records:
        return report
    now = utcnow()
    runs = _upsert_runs(session=session, project_id=project_id, records=records, now=now)

    # merge records of the same key inside the batch first
    batch: dict[tuple[int, str, int], dict[str, Any]] = {}
    answers: list[tuple[int, tuple[int, str, int]]] = []
    dup_in_batch: set[int] = set()
    for index, rec in records:
        key = (runs[(rec.source, rec.run_key)].id, rec.step_key, rec.attempt)
        part = _partial(rec)
        if key in batch:
            merged = merge_step(batch[key], part, step_key=rec.step_key)
            if _same(merged, batch[key]):
                dup_in_batch.add(index)
            batch[key] = merged
        else:
            batch[key] = part
        answers.append((index, key))

    existing = _load_steps(session=session, keys=list(batch))
    inserts: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    op_of: dict[tuple[int, str, int], Literal["created", "updated"] | None] = {}
    for key, part in batch.items():
        old = existing.get(key)
        if old is None:
            row = merge_step({}, part)
            row["name"] = row["name"] or key[1]
            row["kind"] = row["kind"] or "step"
            inserts.append(
                {
                    **row,
                    "project_id": project_id,
                    "run_id": key[0],
                    "step_key": key[1],
                    "attempt": key[2],
                    "latency_ms": _latency(row),
                    "created_at": now,
                    "updated_at": now,
                }
            )
            op_of[key] = "created"
        else:
            row = merge_step(old, part, step_key=key[1])
            if _same(row, old):
                op_of[key] = None
                continue
            updates.append({**row, "b_id": old["id"], "latency_ms": _latency(row), "updated_at": now})
            op_of[key] = "updated"

    step_ids = _write_steps(session=session, inserts=inserts, updates=updates)
    for index, key in answers:
        op = op_of[key]
        if op is None or index in dup_in_batch:
            report.items.append(ItemResult(index=index, status="duplicate"))
        else:
            report.items.append(ItemResult(index=index, status="accepted", op=op))

    _refresh_runs(session=session, run_ids=sorted({r.id for r in runs.values()}), now=now)

    # schedule evaluators for the steps that finished or changed after finishing
    by_id = {r.id: r for r in runs.values()}
    to_score: list[ScheduledStep] = []
    for row in [*inserts, *updates]:
        if row["status"] not in TERMINAL_STEP_STATUSES:
            continue
        sid = row.get("b_id") or step_ids[(row["run_id"], row["step_key"], row["attempt"])]
        run = by_id[row.get("run_id") or _run_of(existing, sid)]
        key_name = row.get("step_key") or _key_of(existing, sid)
        to_score.append(
            ScheduledStep(
                step_id=sid,
                run_id=run.id,
                source=run.source,
                run_key=run.run_key,
                workflow=run.workflow,
                step_key=key_name,
                name=row["name"],
                kind=row["kind"],
                status=row["status"],
                attributes=row["attributes"],
            )
        )
    if to_score:
        if evaluators is None:
            evaluators = load_active_evaluators(session=session, project_id=project_id)
        report.pending_eval_ids = schedule_evals(
            session=session, project_id=project_id, steps=to_score, evaluators=evaluators
        )
    return report


def _run_of(existing: dict[tuple[int, str, int], dict[str, Any]], step_id: int) -> int:
    return next(k[0] for k, v in existing.items() if v["id"] == step_id)


def _key_of(existing: dict[tuple[int, str, int], dict[str, Any]], step_id: int) -> str:
    return next(k[1] for k, v in existing.items() if v["id"] == step_id)


def _lock_runs(*, session: Session, project_id: int, keys: list[tuple[str, str]]) -> None:
    """PostgreSQL: serialise writers of the same runs on transaction-scoped advisory locks, taken in
    one sorted order (no deadlock), so two batches cannot both insert a new key. SQLite needs
    nothing here: ``write_session`` began with ``BEGIN IMMEDIATE``."""
    if session.get_bind().dialect.name != "postgresql":
        return
    ids = sorted(
        {int.from_bytes(hashlib.blake2b(f"{project_id}\x1f{s}\x1f{r}".encode(), digest_size=8).digest(), "big",
                        signed=True) for s, r in keys}
    )  # fmt: skip
    session.execute(
        sa.text(
            "SELECT count(pg_advisory_xact_lock(k)) FROM (SELECT unnest(CAST(:ids AS bigint[])) AS k ORDER BY 1) s"
        ),
        {"ids": ids},
    )


def _upsert_runs(
    *, session: Session, project_id: int, records: Sequence[tuple[int, StepRecord]], now: datetime
) -> dict[tuple[str, str], _RunInfo]:
    infos: dict[tuple[str, str], _RunInfo] = {}
    for _, rec in records:
        info = infos.get((rec.source, rec.run_key))
        if info is None:
            info = infos[(rec.source, rec.run_key)] = _RunInfo(source=rec.source, run_key=rec.run_key)
        if rec.workflow:
            info.workflow = rec.workflow
        if rec.run_status:
            info.status = rec.run_status.value
        info.attributes.update(rec.run_attributes)

    _lock_runs(session=session, project_id=project_id, keys=list(infos))
    t = table(Run)
    existing: dict[tuple[str, str], Any] = {}
    for part in chunks(list(infos), 400):
        q = sa.select(
            t.c.id, t.c.source, t.c.run_key, t.c.workflow, t.c.status, t.c.status_from_source, t.c.attributes
        ).where(t.c.project_id == project_id, key_filter((t.c.source, t.c.run_key), part))
        for row in session.execute(q):
            existing[(row.source, row.run_key)] = row

    new_rows, changed = [], []
    for key, info in infos.items():
        old = existing.get(key)
        if old is None:
            new_rows.append(
                {
                    "project_id": project_id,
                    "source": info.source,
                    "run_key": info.run_key,
                    "workflow": info.workflow,
                    "status": info.status or RunStatus.running.value,
                    "status_from_source": info.status is not None,
                    "attributes": info.attributes,
                    "created_at": now,
                    "updated_at": now,
                }
            )
            continue
        info.id = old.id
        attrs = {**(old.attributes or {}), **info.attributes}
        workflow = info.workflow or old.workflow
        status = info.status or old.status
        if attrs != (old.attributes or {}) or workflow != old.workflow or (info.status and info.status != old.status):
            changed.append(
                {
                    "b_id": old.id,
                    "workflow": workflow,
                    "attributes": attrs,
                    "status": status,
                    "status_from_source": old.status_from_source or info.status is not None,
                }
            )
    if new_rows:
        ins = sa.insert(t).returning(t.c.id, t.c.source, t.c.run_key)
        for rid, source, run_key in session.execute(ins, new_rows):
            infos[(source, run_key)].id = rid
    if changed:
        stmt = (
            sa.update(t)
            .where(t.c.id == sa.bindparam("b_id"))
            .values(
                workflow=sa.bindparam("workflow"),
                attributes=sa.bindparam("attributes"),
                status=sa.bindparam("status"),
                status_from_source=sa.bindparam("status_from_source"),
            )
        )
        session.connection().execute(stmt, changed)
    for key, info in infos.items():
        if not info.workflow and key in existing:
            info.workflow = existing[key].workflow
    return infos


def _load_steps(*, session: Session, keys: list[tuple[int, str, int]]) -> dict[tuple[int, str, int], dict[str, Any]]:
    t = table(Step)
    cols = [t.c[name] for name in _STEP_COLS]
    out: dict[tuple[int, str, int], dict[str, Any]] = {}
    for part in chunks(keys, 300):
        q = sa.select(*cols).where(key_filter((t.c.run_id, t.c.step_key, t.c.attempt), part))
        for row in session.execute(q):
            m = dict(row._mapping)
            out[(m["run_id"], m["step_key"], m["attempt"])] = m
    return out


def _write_steps(
    *, session: Session, inserts: list[dict[str, Any]], updates: list[dict[str, Any]]
) -> dict[tuple[int, str, int], int]:
    t = table(Step)
    ids: dict[tuple[int, str, int], int] = {}
    conn = session.connection()
    if inserts:
        ins = sa.insert(t).returning(t.c.id, t.c.run_id, t.c.step_key, t.c.attempt)
        for sid, run_id, step_key, attempt in conn.execute(ins, inserts):
            ids[(run_id, step_key, attempt)] = sid
    if updates:
        cols = [*MERGE_FIELDS, "attributes", "latency_ms", "updated_at"]
        stmt = sa.update(t).where(t.c.id == sa.bindparam("b_id")).values({c: sa.bindparam(c) for c in cols})
        conn.execute(stmt, updates)
    return ids


def _refresh_runs(*, session: Session, run_ids: list[int], now: datetime) -> None:
    """Recompute each touched run's start, end and (unless the source said) status from its steps."""
    t = table(Step)
    r = table(Run)
    updates: list[dict[str, Any]] = []
    for part in chunks(run_ids, 500):
        latest = (
            sa.select(t.c.run_id, t.c.step_key, sa.func.max(t.c.attempt).label("attempt"))
            .where(t.c.run_id.in_(part))
            .group_by(t.c.run_id, t.c.step_key)
            .subquery()
        )
        q = sa.select(t.c.run_id, t.c.status, t.c.started_at, t.c.ended_at).join(
            latest,
            sa.and_(t.c.run_id == latest.c.run_id, t.c.step_key == latest.c.step_key, t.c.attempt == latest.c.attempt),
        )
        agg: dict[int, dict[str, Any]] = {}
        for run_id, status, started, ended in session.execute(q):
            a = agg.setdefault(run_id, {"statuses": set(), "start": None, "end": None})
            a["statuses"].add(status)
            if started and (a["start"] is None or started < a["start"]):
                a["start"] = started
            if ended and (a["end"] is None or ended > a["end"]):
                a["end"] = ended
        # earliest start over all attempts, not just the latest
        for run_id, first in session.execute(
            sa.select(t.c.run_id, sa.func.min(t.c.started_at)).where(t.c.run_id.in_(part)).group_by(t.c.run_id)
        ):
            if first is not None and run_id in agg:
                agg[run_id]["start"] = _aware(first)
        for run_id, a in agg.items():
            statuses = a["statuses"]
            if statuses & {StepStatus.running.value, StepStatus.scheduled.value}:
                derived = RunStatus.running.value
            elif statuses & {StepStatus.failed.value, StepStatus.timed_out.value}:
                derived = RunStatus.failed.value
            elif statuses == {StepStatus.cancelled.value}:
                derived = RunStatus.cancelled.value
            else:
                derived = RunStatus.completed.value
            updates.append(
                {"b_id": run_id, "started_at": a["start"], "ended_at": a["end"], "derived": derived, "updated_at": now}
            )
    if updates:
        stmt = (
            sa.update(r)
            .where(r.c.id == sa.bindparam("b_id"))
            .values(
                started_at=sa.bindparam("started_at"),
                ended_at=sa.bindparam("ended_at"),
                updated_at=sa.bindparam("updated_at"),
                status=sa.case((r.c.status_from_source == sa.true(), r.c.status), else_=sa.bindparam("derived")),
            )
        )
        session.connection().execute(stmt, updates)


def _aware(value: datetime) -> datetime:
    if isinstance(value, str):  # SQLite aggregates return text
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def ingest_batch(
    *,
    engine: Any,
    project_id: int,
    items: Sequence[Any],
    max_batch_records: int,
    max_record_bytes: int,
    offset: int = 0,
    evaluators: list[ActiveEvaluator] | None = None,
) -> IngestReport:
    """Validate and store one batch (a connector's output): the front door of API and CLI alike.

    Items may be :class:`StepRecord` s or dicts; each gets its own answer, in input order.
    """
    from evalsvc.errors import PayloadTooLarge
    from evalsvc.store.db import write_session

    if len(items) > max_batch_records:
        raise PayloadTooLarge(f"batch has {len(items)} records; the limit is {max_batch_records}", field="records")
    ready = [(i, it) for i, it in enumerate(items, start=offset) if isinstance(it, StepRecord)]
    raw = [it for it in items if not isinstance(it, StepRecord)]
    raw_index = [i for i, it in enumerate(items, start=offset) if not isinstance(it, StepRecord)]
    good, bad = parse_items(raw, max_record_bytes=max_record_bytes)
    good = [(raw_index[i], rec) for i, rec in good] + ready
    for b in bad:
        b.index = raw_index[b.index]
    with write_session(engine) as session:
        report = ingest_records(session=session, project_id=project_id, records=good, evaluators=evaluators)
    report.items.extend(bad)
    report.items.sort(key=lambda it: it.index)
    return report
