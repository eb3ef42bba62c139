"""Runs, as ingest keeps them: upserted from the run-level fields of their records, locked
against concurrent writers on PostgreSQL, and refreshed (start, end, derived status) from their
steps after each batch."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from evalsvc.schemas import RUN_STEP_KEY, RunStatus, StepRecord, StepStatus
from evalsvc.store.db import json_dumps
from evalsvc.store.models import Run, Step, table
from evalsvc.store.sql import chunks
from evalsvc.times import as_utc
from evalsvc.wire import WireRecord

from ._bulk import copy_to_scratch, dbapi, driver_cursor, insert_returning, key_match, pg_ts, sqlite_ts

__all__ = ["NaturalKey", "RunInfo", "refresh_runs", "upsert_runs"]

NaturalKey = tuple[str, str, str, int]  # (source, run key, step key, attempt)


_RUN_INSERT_COLS = (
    "project_id",
    "source",
    "run_key",
    "workflow",
    "status",
    "status_from_source",
    "started_at",
    "ended_at",
    "attributes",
    "created_at",
    "updated_at",
)
_ACTIVE_STEP = frozenset({StepStatus.running.value, StepStatus.scheduled.value})
_FAILED_STEP = frozenset({StepStatus.failed.value, StepStatus.timed_out.value})
_CANCELLED_ONLY = frozenset({StepStatus.cancelled.value})


@dataclass(slots=True)
class RunInfo:
    source: str
    run_key: str
    workflow: str | None = None
    status: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    id: int = 0
    created: bool = False  # inserted by this batch: none of its steps is stored yet


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


def upsert_runs(
    *,
    session: Session,
    project_id: int,
    records: Sequence[tuple[int, StepRecord | WireRecord]],
    now: datetime,
    steps: dict[NaturalKey, dict[str, Any]],
) -> dict[tuple[str, str], RunInfo]:
    """Insert the new runs (with the start, end and status that ``steps``, all of their steps, give
    them) and update the changed ones; answer every run of the batch by (source, run key)."""
    infos: dict[tuple[str, str], RunInfo] = {}
    info = RunInfo(source="", run_key="")
    for _, rec in records:
        if rec.run_key != info.run_key or rec.source != info.source:  # a run's records mostly come together
            key = (rec.source, rec.run_key)
            info = infos.get(key)  # type: ignore[assignment]
            if info is None:
                info = infos[key] = RunInfo(source=rec.source, run_key=rec.run_key)
        if rec.workflow:
            info.workflow = rec.workflow
        if rec.run_status:
            info.status = rec.run_status.value
        if rec.run_attributes:
            info.attributes.update(rec.run_attributes)

    _lock_runs(session=session, project_id=project_id, keys=list(infos))
    _, sqlite = dbapi(session)
    if sqlite:
        existing = _stored_runs(session, project_id, list(infos))
        _insert_new_runs(session, project_id, [i for k, i in infos.items() if k not in existing], steps, now)
    else:
        existing = _upsert_runs_pg(session, project_id, infos, steps, now)

    changed = []
    for key, info in infos.items():
        old = existing.get(key)
        if old is None:
            info.created = True
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
    t = table(Run)
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


@lru_cache(maxsize=1)
def _refresh_statements() -> tuple[Any, Any, Any]:
    """The statements of :func:`refresh_runs`, built once (with an expanding list of run ids, so
    that SQLAlchemy compiles each once too): building them per batch cost more than running them."""
    t = table(Step)
    r = table(Run)
    ids: Any = sa.bindparam("ids", expanding=True)
    latest = (
        sa.select(t.c.run_id, t.c.step_key, sa.func.max(t.c.attempt).label("attempt"))
        # the run step (run-level evaluators) describes the run; it never decides the run's status
        .where(t.c.run_id.in_(ids), t.c.step_key != RUN_STEP_KEY)
        .group_by(t.c.run_id, t.c.step_key)
        .subquery()
    )
    last = sa.select(t.c.run_id, t.c.status, t.c.started_at, t.c.ended_at).join(
        latest,
        sa.and_(t.c.run_id == latest.c.run_id, t.c.step_key == latest.c.step_key, t.c.attempt == latest.c.attempt),
    )
    first = (
        sa.select(t.c.run_id, sa.func.min(t.c.started_at))
        .where(t.c.run_id.in_(ids), t.c.step_key != RUN_STEP_KEY)
        .group_by(t.c.run_id)
    )
    update = (
        sa.update(r)
        .where(r.c.id == sa.bindparam("b_id"))
        .values(
            started_at=sa.bindparam("started_at"),
            ended_at=sa.bindparam("ended_at"),
            updated_at=sa.bindparam("updated_at"),
            status=sa.case((r.c.status_from_source == sa.true(), r.c.status), else_=sa.bindparam("derived")),
        )
    )
    return last, first, update


def refresh_runs(*, session: Session, run_ids: list[int], now: datetime) -> None:
    """Recompute each touched run's start, end and (unless the source said) status from its steps."""
    last, first_start, update = _refresh_statements()
    updates: list[dict[str, Any]] = []
    for part in chunks(run_ids, 500):
        agg: dict[int, dict[str, Any]] = {}
        for run_id, status, started, ended in session.execute(last, {"ids": part}):
            a = agg.setdefault(run_id, {"statuses": set(), "start": None, "end": None})
            a["statuses"].add(status)
            if started and (a["start"] is None or started < a["start"]):
                a["start"] = started
            if ended and (a["end"] is None or ended > a["end"]):
                a["end"] = ended
        # earliest start over all attempts, not just the latest
        for run_id, first in session.execute(first_start, {"ids": part}):
            if first is not None and run_id in agg:
                agg[run_id]["start"] = as_utc(first)
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
        session.connection().execute(update, updates)


def _run_aggregates(
    steps: dict[NaturalKey, dict[str, Any]], runs: set[tuple[str, str]]
) -> dict[tuple[str, str], tuple[datetime | None, datetime | None, str]]:
    """Start, end and derived status of runs whose every step is in ``steps`` (the runs this batch
    creates), computed as :func:`refresh_runs` computes them from the stored steps."""
    latest: dict[tuple[str, str], dict[str, tuple[int, dict[str, Any]]]] = {}
    first: dict[tuple[str, str], datetime] = {}
    for (source, run_key, step_key, attempt), part in steps.items():
        rkey = (source, run_key)
        if rkey not in runs:
            continue
        started = part.get("started_at")
        if started is not None:
            seen = first.get(rkey)
            if seen is None or started < seen:
                first[rkey] = started
        per_step = latest.get(rkey)
        if per_step is None:
            per_step = latest[rkey] = {}
        cur = per_step.get(step_key)
        if cur is None or attempt > cur[0]:
            per_step[step_key] = (attempt, part)
    out: dict[tuple[str, str], tuple[datetime | None, datetime | None, str]] = {}
    for rkey, per_step in latest.items():
        statuses: set[Any] = set()
        end: datetime | None = None
        for _, part in per_step.values():
            statuses.add(part.get("status"))
            ended = part.get("ended_at")
            if ended is not None and (end is None or ended > end):
                end = ended
        out[rkey] = (first.get(rkey), end, _derived_status(statuses))
    return out


def _derived_status(statuses: set[Any]) -> str:
    if statuses & _ACTIVE_STEP:
        return RunStatus.running.value
    if statuses & _FAILED_STEP:
        return RunStatus.failed.value
    if statuses == _CANCELLED_ONLY:
        return RunStatus.cancelled.value
    return RunStatus.completed.value


@dataclass(slots=True)
class _StoredRun:
    id: int
    workflow: str | None
    status: str
    status_from_source: bool
    attributes: dict[str, Any] | None


def _run_rows(
    project_id: int, infos: list[RunInfo], steps: dict[NaturalKey, dict[str, Any]], now: datetime, ts: Any
) -> list[tuple[Any, ...]]:
    """The insert rows of these runs, with the start, end and status their steps in ``steps`` give."""
    aggregates = _run_aggregates(steps, {(i.source, i.run_key) for i in infos})
    stamp = ts(now)
    rows = []
    for info in infos:
        start, end, derived = aggregates[(info.source, info.run_key)]
        rows.append((project_id, info.source, info.run_key, info.workflow, info.status or derived,
                     info.status is not None, ts(start), ts(end), json_dumps(info.attributes), stamp, stamp))  # fmt: skip
    return rows


def _insert_new_runs(
    session: Session, project_id: int, new: list[RunInfo], steps: dict[NaturalKey, dict[str, Any]], now: datetime
) -> None:
    """SQLite: insert the runs known to be new, and set their ids."""
    if not new:
        return
    t = table(Run)
    rows = _run_rows(project_id, new, steps, now, sqlite_ts)
    got = insert_returning(session, t.name, _RUN_INSERT_COLS, rows, returning=("source", "run_key"))
    if got is None:
        got = []
        for part in chunks([(i.source, i.run_key) for i in new], 400):
            q = sa.select(t.c.id, t.c.source, t.c.run_key).where(
                key_match((t.c.project_id, t.c.source, t.c.run_key), [(project_id, *k) for k in part])
            )
            got.extend(tuple(r) for r in session.execute(q))
    by_key = {(i.source, i.run_key): i for i in new}
    for rid, source, run_key in got:
        by_key[(source, run_key)].id = rid


def _upsert_runs_pg(
    session: Session,
    project_id: int,
    infos: dict[tuple[str, str], RunInfo],
    steps: dict[NaturalKey, dict[str, Any]],
    now: datetime,
) -> dict[tuple[str, str], _StoredRun]:
    """PostgreSQL: insert the batch's runs that are new and set their ids; answer the stored ones.

    The unique key's own index decides both (``ON CONFLICT``), whatever the planner knows of the
    table: a look-up by key could search another index that starts with ``project_id`` instead
    (while the table's statistics are missing or old, as for a new project in a large table), and
    filter all the project's runs for each key."""
    names = ", ".join(_RUN_INSERT_COLS)
    # a row for every run (a stored run's, made from this batch's steps alone, is never written: the
    # insert skips it and the upsert below changes nothing of it; refresh_runs recomputes it)
    rows = _run_rows(project_id, list(infos.values()), steps, now, pg_ts)
    existing: dict[tuple[str, str], _StoredRun] = {}
    with driver_cursor(session) as cur:
        scratch = copy_to_scratch(cur, table(Run).name, _RUN_INSERT_COLS, rows)
        cur.execute(
            f"INSERT INTO run ({names}) SELECT {names} FROM {scratch} "
            "ON CONFLICT (project_id, source, run_key) DO NOTHING RETURNING id, source, run_key"
        )
        for rid, source, run_key in cur.fetchall():
            infos[(source, run_key)].id = rid
        stored = [key for key, info in infos.items() if not info.id]
        if stored:
            # through the same index: an upsert that changes nothing answers the stored rows
            cur.execute(
                f"INSERT INTO run ({names}) SELECT {names} FROM {scratch} s "
                "WHERE (s.source, s.run_key) IN (SELECT * FROM unnest(%s::varchar[], %s::varchar[])) "
                "ON CONFLICT (project_id, source, run_key) DO UPDATE SET project_id = EXCLUDED.project_id "
                "RETURNING id, source, run_key, workflow, status, status_from_source, attributes",
                ([k[0] for k in stored], [k[1] for k in stored]),
            )
            for rid, source, run_key, workflow, status, from_source, attributes in cur.fetchall():
                existing[(source, run_key)] = _StoredRun(rid, workflow, status, from_source, attributes)
    return existing


def _stored_runs(session: Session, project_id: int, keys: list[tuple[str, str]]) -> dict[tuple[str, str], _StoredRun]:
    """SQLite: the stored runs among these (source, run key) pairs: a cheap probe through the
    driver first, so that a batch of new runs skips the typed look-up."""
    t = table(Run)
    by_source: dict[str, list[str]] = {}
    for source, run_key in keys:
        by_source.setdefault(source, []).append(run_key)
    found: list[tuple[str, str]] = []
    with driver_cursor(session) as cur:
        for source, run_keys in by_source.items():
            for part in chunks(run_keys, 2000):
                sql = (
                    f"SELECT run_key FROM {t.name} WHERE project_id = ? AND source = ? "
                    f"AND run_key IN ({', '.join(['?'] * len(part))})"
                )
                found.extend((source, run_key) for (run_key,) in cur.execute(sql, (project_id, source, *part)))
    existing: dict[tuple[str, str], _StoredRun] = {}
    for stored in chunks(found, 400):
        q = sa.select(
            t.c.id, t.c.source, t.c.run_key, t.c.workflow, t.c.status, t.c.status_from_source, t.c.attributes
        ).where(key_match((t.c.project_id, t.c.source, t.c.run_key), [(project_id, *k) for k in stored]))
        for row in session.execute(q):
            existing[(row.source, row.run_key)] = _StoredRun(
                row.id, row.workflow, row.status, row.status_from_source, row.attributes
            )
    return existing
