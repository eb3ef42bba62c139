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

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import attrgetter, itemgetter
from typing import Any, Literal

import orjson
import sqlalchemy as sa
from pydantic import ValidationError
from sqlmodel import Session

from evalsvc.schemas import TERMINAL_STEP_STATUSES, StepRecord, StepStatus, step_status_rank
from evalsvc.store.models import Step, table, utcnow
from evalsvc.store.sql import chunks
from evalsvc.wire import WireRecord, record_partial

from ._bulk import dbapi, gc_paused, insert_returning, key_match, pg_ts, sqlite_ts, writer_turn
from .runs import NaturalKey, RunInfo, refresh_runs, upsert_runs
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
_MERGE_SET = frozenset(MERGE_FIELDS)
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
    # steps finished in a project with run-level evaluators: a run may have become final, and its
    # run-level evaluations are due (evalsvc.pipeline.run_evals.schedule_final_runs)
    run_level: bool = False

    def count(self, status: ItemStatus) -> int:
        return sum(1 for i in self.items if i.status == status)

    def summary(self) -> dict[str, int]:
        counts = Counter(i.status for i in self.items)
        return {s: counts[s] for s in ("accepted", "duplicate", "rejected")}

    def extend(self, other: IngestReport) -> None:
        self.items.extend(other.items)
        self.pending_eval_ids.extend(other.pending_eval_ids)
        self.run_level = self.run_level or other.run_level


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


def _partial(rec: StepRecord | WireRecord) -> dict[str, Any]:
    """The fields this record actually says something about."""
    if type(rec) is WireRecord:
        return record_partial(rec)
    assert isinstance(rec, StepRecord)
    out: dict[str, Any] = {}
    values = rec.__dict__
    for name in _MERGE_SET.intersection(rec.model_fields_set):
        value = values[name]
        if value is not None:
            out[name] = value.model_dump(mode="json", exclude_none=True) if name == "error" else value
    status = rec.status
    if status is not None:
        out["status"] = status.value if isinstance(status, StepStatus) else status
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
# the step columns an insert writes, in the order of the rows that _write_steps builds
_STEP_INSERT_COLS = (
    "project_id", "run_id", "step_key", "attempt", *MERGE_FIELDS, "latency_ms", "attributes", "created_at", "updated_at",
)  # fmt: skip
_StepKey = tuple[int, str, int]  # (run id, step key, attempt)


def ingest_records(
    *,
    session: Session,
    project_id: int,
    records: Sequence[tuple[int, StepRecord | WireRecord]],
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

    # merge records of the same key inside the batch first (a run and its key are one-to-one)
    batch: dict[NaturalKey, dict[str, Any]] = {}
    answers: list[tuple[int, NaturalKey]] = []
    dup_in_batch: set[int] = set()
    for index, rec in records:
        nkey = (rec.source, rec.run_key, rec.step_key, rec.attempt)
        part = record_partial(rec) if type(rec) is WireRecord else _partial(rec)
        prev = batch.get(nkey)
        if prev is None:
            batch[nkey] = part
        else:
            merged = merge_step(prev, part, step_key=rec.step_key)
            if _same(merged, prev):
                dup_in_batch.add(index)
            batch[nkey] = merged
        answers.append((index, nkey))

    runs = upsert_runs(session=session, project_id=project_id, records=records, now=now, steps=batch)

    # only runs that existed before this batch can have stored steps
    old_keys: list[_StepKey] = []
    if not all(run.created for run in runs.values()):
        for nkey in batch:
            run = runs[(nkey[0], nkey[1])]
            if not run.created:
                old_keys.append((run.id, nkey[2], nkey[3]))
    existing = _load_steps(session=session, keys=old_keys) if old_keys else {}

    inserts: list[tuple[_StepKey, dict[str, Any]]] = []
    updates: list[dict[str, Any]] = []
    update_keys: list[_StepKey] = []
    op_of: dict[NaturalKey, Literal["created", "updated"] | None] = {}
    run = RunInfo(source="", run_key="")
    for nkey, part in batch.items():
        if nkey[1] != run.run_key or nkey[0] != run.source:  # records of a run mostly come together
            run = runs[(nkey[0], nkey[1])]
        key = (run.id, nkey[2], nkey[3])
        old = existing.get(key) if not run.created else None
        if old is None:
            inserts.append((key, part))
            op_of[nkey] = "created"
        else:
            row = merge_step(old, part, step_key=key[1])
            if _same(row, old):
                op_of[nkey] = None
                continue
            updates.append({**row, "b_id": old["id"], "latency_ms": _latency(row), "updated_at": now})
            update_keys.append(key)
            op_of[nkey] = "updated"

    # the steps that finished (or changed after finishing) are scheduled, if any evaluator is active
    terminal = [(key, part) for key, part in inserts if part.get("status") in TERMINAL_STEP_STATUSES]
    terminal_updates = [
        (key, row) for key, row in zip(update_keys, updates, strict=True) if row["status"] in TERMINAL_STEP_STATUSES
    ]
    if (terminal or terminal_updates) and evaluators is None:
        evaluators = load_active_evaluators(session=session, project_id=project_id)
    scheduling = bool(evaluators) and bool(terminal or terminal_updates)
    report.run_level = scheduling and any(ev.spec.target.level == "run" for ev in evaluators or [])

    step_ids = _write_steps(
        session=session,
        project_id=project_id,
        inserts=inserts,
        updates=updates,
        now=now,
        need_ids=scheduling and bool(terminal),
    )
    items = report.items
    for index, nkey in answers:
        op = op_of[nkey]
        if op is None or index in dup_in_batch:
            items.append(ItemResult(index=index, status="duplicate"))
        else:
            items.append(ItemResult(index=index, status="accepted", op=op))

    # runs created by this batch got their start, end and status with their insert
    old_run_ids = sorted({r.id for r in runs.values() if not r.created})
    if old_run_ids:
        refresh_runs(session=session, run_ids=old_run_ids, now=now)

    if not scheduling:
        return report
    by_id = {r.id: r for r in runs.values()}
    to_score: list[ScheduledStep] = []
    for key, part in terminal:
        name, kind = part.get("name") or key[1], part.get("kind") or "step"
        to_score.append(_scheduled(by_id[key[0]], key, step_ids[key], name, kind, part))
    for key, row in terminal_updates:
        to_score.append(_scheduled(by_id[key[0]], key, existing[key]["id"], row["name"], row["kind"], row))
    report.pending_eval_ids = schedule_evals(
        session=session, project_id=project_id, steps=to_score, evaluators=evaluators or []
    )
    return report


def _scheduled(run: RunInfo, key: _StepKey, step_id: int, name: str, kind: str, row: dict[str, Any]) -> ScheduledStep:
    return ScheduledStep(
        step_id=step_id,
        run_id=run.id,
        source=run.source,
        run_key=run.run_key,
        workflow=run.workflow,
        step_key=key[1],
        name=name,
        kind=kind,
        status=row["status"],
        attributes=row.get("attributes") or {},
        model=row.get("model"),
    )


def _load_steps(*, session: Session, keys: list[tuple[int, str, int]]) -> dict[tuple[int, str, int], dict[str, Any]]:
    t = table(Step)
    cols = [t.c[name] for name in _STEP_COLS]
    out: dict[tuple[int, str, int], dict[str, Any]] = {}
    for part in chunks(keys, 300):
        q = sa.select(*cols).where(key_match((t.c.run_id, t.c.step_key, t.c.attempt), part))
        for row in session.execute(q):
            m = dict(row._mapping)
            out[(m["run_id"], m["step_key"], m["attempt"])] = m
    return out


def _write_steps(
    *,
    session: Session,
    project_id: int,
    inserts: list[tuple[_StepKey, dict[str, Any]]],
    updates: list[dict[str, Any]],
    now: datetime,
    need_ids: bool,
) -> dict[_StepKey, int]:
    """Insert new steps (partial rows: absent fields are NULL, name and kind get their defaults)
    and update changed ones; with ``need_ids``, answer the ids of the inserted steps by key."""
    t = table(Step)
    ids: dict[_StepKey, int] = {}
    if inserts:
        _, sqlite = dbapi(session)
        ts = sqlite_ts if sqlite else pg_ts
        stamp = ts(now)
        dumps, opt = orjson.dumps, orjson.OPT_NON_STR_KEYS  # what json_dumps does, without its call

        def rows() -> Iterator[tuple[Any, ...]]:  # made as they are sent (insert_returning)
            for (run_id, step_key, attempt), p in inserts:
                get = p.get
                started, ended = get("started_at"), get("ended_at")
                inp, out, expected, error = get("input"), get("output"), get("expected"), get("error")
                yield (
                    project_id,
                    run_id,
                    step_key,
                    attempt,
                    get("name") or step_key,
                    get("kind") or "step",
                    get("status"),
                    None if started is None else ts(started),
                    None if ended is None else ts(ended),
                    None if inp is None else dumps(inp, option=opt).decode(),
                    None if out is None else dumps(out, option=opt).decode(),
                    None if expected is None else dumps(expected, option=opt).decode(),
                    None if error is None else dumps(error, option=opt).decode(),
                    get("parent_step_key"),
                    get("model"),
                    get("input_tokens"),
                    get("output_tokens"),
                    get("cost_usd"),
                    None if started is None or ended is None else (ended - started).total_seconds() * 1000.0,
                    dumps(get("attributes") or {}, option=opt).decode(),
                    stamp,
                    stamp,
                )

        got = insert_returning(
            session,
            t.name,
            _STEP_INSERT_COLS,
            rows(),
            returning=("run_id", "step_key", "attempt") if need_ids else None,
        )
        if need_ids:
            if got is None:
                got = []
                for part in chunks([key for key, _ in inserts], 300):
                    q = sa.select(t.c.id, t.c.run_id, t.c.step_key, t.c.attempt).where(
                        key_match((t.c.run_id, t.c.step_key, t.c.attempt), part)
                    )
                    got.extend(tuple(r) for r in session.execute(q))
            for sid, run_id, step_key, attempt in got:
                ids[(run_id, step_key, attempt)] = sid
    if updates:
        cols = [*MERGE_FIELDS, "attributes", "latency_ms", "updated_at"]
        stmt = sa.update(t).where(t.c.id == sa.bindparam("b_id")).values({c: sa.bindparam(c) for c in cols})
        session.connection().execute(stmt, updates)
    return ids


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

    Items may be :class:`StepRecord` s, :class:`~evalsvc.wire.WireRecord` s (checked already by
    the JSON connector's fast lane) or dicts; each gets its own answer, in input order.
    """
    from evalsvc.errors import PayloadTooLarge
    from evalsvc.store.db import write_session

    if len(items) > max_batch_records:
        raise PayloadTooLarge(f"batch has {len(items)} records; the limit is {max_batch_records}", field="records")
    with gc_paused():
        checked = (StepRecord, WireRecord)
        ready: list[tuple[int, StepRecord | WireRecord]] = [
            (i, it) for i, it in enumerate(items, start=offset) if isinstance(it, checked)
        ]
        raw = [it for it in items if not isinstance(it, checked)]
        raw_index = [i for i, it in enumerate(items, start=offset) if not isinstance(it, checked)]
        parsed, bad = parse_items(raw, max_record_bytes=max_record_bytes)
        good: list[tuple[int, StepRecord | WireRecord]] = [(raw_index[i], rec) for i, rec in parsed]
        if ready:  # in input order: at a tie between two records of one key, the later one corrects
            good = sorted(good + ready, key=itemgetter(0)) if good else ready
        for b in bad:
            b.index = raw_index[b.index]
        with writer_turn(engine), write_session(engine) as session:
            report = ingest_records(session=session, project_id=project_id, records=good, evaluators=evaluators)
        if bad:  # otherwise the answers are in input order already
            report.items.extend(bad)
            report.items.sort(key=attrgetter("index"))
    return report
