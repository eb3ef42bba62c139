"""Run-level evaluators: judge a whole run once it is final (issue 3, point 6).

An evaluator with ``target: {level: run}`` is never matched against a workflow's own steps. When a
run is final (``completed``, ``failed`` or ``cancelled``; not ``running`` or ``paused``) this module
stores one synthetic *run step* for it (step key :data:`~evalsvc.schemas.RUN_STEP_KEY`, kind
``run``, attempt 1, named after the workflow) and schedules the run-level evaluators on it, so
every scorer works unchanged and the verdicts link to the run like any other:

- ``input``: the first step's input; ``output``: the run's ``output`` attribute if a source gave
  one, else the output of the step that finished last; ``status``, start and end: the run's;
- ``attributes``: the run's attributes, plus ``steps`` (one compact entry per stored attempt:
  step_key, name, kind, attempt, status, latency_ms, cost_usd), ``counts`` (steps, attempts,
  retries, failed), the run's totals (``cost_usd``, ``input_tokens``, ``output_tokens``,
  ``duration_ms``) and ``run_updated_at`` (which version of the run the step describes).

The totals stay in ``attributes``, not in the step's own columns, so that sums over steps do not
count a run twice. When more records make a run final again (a late retry), its run step is
rewritten and, if it changed, its run-level results are set back to pending (as a changed step's
are). Runs that are not final get no run step.

The worker side calls :func:`schedule_final_runs` before it scores (``drain``, the in-process
worker, the Celery sweep, the CLI after ``evalsvc ingest``)::

    >>> from evalsvc.pipeline.run_evals import schedule_final_runs
    >>> pending_ids = schedule_final_runs(engine=engine)  # doctest: +SKIP

A pass looks only at runs changed since the previous pass of this process (with a margin, and a
full look every ``FULL_SCAN_SECONDS`` and whenever the run-level evaluators change), so an idle
pass costs two small queries.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session

from evalsvc.schemas import RUN_STEP_KEY, RunStatus, StepStatus
from evalsvc.store.db import write_session
from evalsvc.store.models import Evaluator, Run, Step, table, utcnow
from evalsvc.store.sql import chunks
from evalsvc.times import as_utc

from .schedule import ActiveEvaluator, ScheduledStep, _spec, schedule_evals

__all__ = [
    "FINAL_RUN_STATUSES",
    "FULL_SCAN_SECONDS",
    "RUN_STEP_KIND",
    "run_level_evaluators",
    "schedule_final_runs",
]

RUN_STEP_KIND = "run"
FINAL_RUN_STATUSES = frozenset({RunStatus.completed.value, RunStatus.failed.value, RunStatus.cancelled.value})
FULL_SCAN_SECONDS = 300.0
MARGIN_SECONDS = 15.0  # a run's updated_at is stamped before its ingest commits (the full look catches the rest)
_TERMINAL = frozenset(
    {StepStatus.completed.value, StepStatus.failed.value, StepStatus.cancelled.value, StepStatus.timed_out.value}
)
_FAILED = frozenset({StepStatus.failed.value, StepStatus.timed_out.value})

# per process: (database, project) -> (run-level evaluator versions, look from, last full look)
_MARKS: dict[tuple[str, int], tuple[tuple[str, ...], datetime, datetime]] = {}
_MARKS_LOCK = threading.Lock()


def run_level_evaluators(engine: Engine) -> dict[int, tuple[list[ActiveEvaluator], datetime]]:
    """The active run-level evaluators by project, with when the first of them was applied (a
    small table, read whole)."""
    t = table(Evaluator)
    out: dict[int, tuple[list[ActiveEvaluator], datetime]] = {}
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(t.c.id, t.c.project_id, t.c.name, t.c.version, t.c.definition, t.c.created_at)
            .where(t.c.active == sa.true())
            .order_by(t.c.id)
        ).all()
    for r in rows:
        definition = r.definition or {}
        if not isinstance(definition, dict) or (definition.get("target") or {}).get("level") != "run":
            continue
        evaluators, first = out.get(r.project_id, ([], as_utc(r.created_at)))
        evaluators.append(ActiveEvaluator(id=r.id, name=r.name, version=r.version, spec=_spec(r.version, definition)))
        out[r.project_id] = (evaluators, min(first, as_utc(r.created_at)))
    return out


def schedule_final_runs(*, engine: Engine, full: bool = False) -> list[int]:
    """Store or refresh the run steps of final runs and schedule the run-level evaluators on them;
    return the ids of the results left pending (to score). ``full`` looks at every run changed
    since the project's first run-level evaluator was applied (older runs are left alone, as steps
    stored before their evaluator are)."""
    by_project = run_level_evaluators(engine)
    pending: list[int] = []
    for project_id, (evaluators, applied) in by_project.items():
        key = (engine.url.render_as_string(hide_password=True), project_id)
        versions = tuple(sorted(f"{ev.id}:{ev.version}" for ev in evaluators))
        started = utcnow()
        with _MARKS_LOCK:
            mark = _MARKS.get(key)
        # runs last changed before the first run-level evaluator was applied are left alone, as steps
        # stored before their evaluator are
        since = applied
        last_full = started
        if (
            not full
            and mark is not None
            and mark[0] == versions
            and (started - mark[2]).total_seconds() < FULL_SCAN_SECONDS
        ):
            since, last_full = max(mark[1], applied), mark[2]
        with engine.connect() as conn:  # a read first: an idle pass takes no write lock
            if not _stale_runs(conn, project_id, since):
                with _MARKS_LOCK:
                    _MARKS[key] = (versions, started - timedelta(seconds=MARGIN_SECONDS), last_full)
                continue
        with write_session(engine) as session:
            if not _try_lock(session, project_id):
                continue  # another process is doing this project's pass right now
            pending += _refresh_project(session=session, project_id=project_id, evaluators=evaluators, since=since)
        with _MARKS_LOCK:
            _MARKS[key] = (versions, started - timedelta(seconds=MARGIN_SECONDS), last_full)
    return pending


def _try_lock(session: Session, project_id: int) -> bool:
    """PostgreSQL: one pass per project at a time (a transaction-scoped advisory lock); SQLite's
    ``BEGIN IMMEDIATE`` serialises writers already."""
    if session.get_bind().dialect.name != "postgresql":
        return True
    k = int.from_bytes(hashlib.blake2b(f"run_evals\x1f{project_id}".encode(), digest_size=8).digest(), "big",
                       signed=True)  # fmt: skip
    return bool(session.execute(sa.text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": k}).scalar())


def _stale_runs(session: Session | Connection, project_id: int, since: datetime) -> list[Any]:
    """Final runs whose run step is missing or describes an older version of the run."""
    r, s = table(Run), table(Step)
    marker = s.c.attributes["run_updated_at"].as_string()
    q = (
        sa.select(r.c.id, r.c.updated_at, r.c.status_from_source, s.c.id.label("sid"), s.c.status.label("sstatus"),
                  marker.label("marker"))
        .select_from(r.outerjoin(s, sa.and_(s.c.run_id == r.c.id, s.c.step_key == RUN_STEP_KEY, s.c.attempt == 1)))
        .where(r.c.project_id == project_id, r.c.status.in_(sorted(FINAL_RUN_STATUSES)))
    )  # fmt: skip
    q = q.where(r.c.updated_at >= since)
    out = []
    for row in session.execute(q):
        if row.sid is None or row.marker is None or _parse(row.marker) < as_utc(row.updated_at):
            out.append(row)
    return out


def _refresh_project(
    *, session: Session, project_id: int, evaluators: list[ActiveEvaluator], since: datetime
) -> list[int]:
    stale = _stale_runs(session, project_id, since)
    if not stale:
        return []
    pending: list[int] = []
    for part in chunks([row.id for row in stale], 500):
        pending += _materialise(session=session, project_id=project_id, run_ids=list(part), evaluators=evaluators)
    return pending


def _materialise(
    *, session: Session, project_id: int, run_ids: list[int], evaluators: list[ActiveEvaluator]
) -> list[int]:
    """Write the run steps of these runs (those that are final) and schedule them; a run that is
    not final (any more) keeps its run step as it was, until it is final again."""
    r, s = table(Run), table(Step)
    runs = {row.id: row for row in session.execute(sa.select(r).where(r.c.id.in_(run_ids)))}
    steps: dict[int, list[Any]] = {}
    existing: dict[int, Any] = {}
    for row in session.execute(sa.select(s).where(s.c.run_id.in_(run_ids)).order_by(s.c.id)):
        if row.step_key == RUN_STEP_KEY:
            existing[row.run_id] = row
        else:
            steps.setdefault(row.run_id, []).append(row)
    scheduled: list[ScheduledStep] = []
    changed: set[int] = set()
    now = utcnow()
    for run_id, run in runs.items():
        if run.status not in FINAL_RUN_STATUSES or not steps.get(run_id):
            continue
        values = _run_step(run, steps[run_id])
        old = existing.get(run_id)
        if old is None:
            sid = session.execute(
                sa.insert(s).values(**values, created_at=now, updated_at=now).returning(s.c.id)
            ).scalar_one()
            changed.add(sid)
        else:
            sid = old.id
            if _content(values) != _content(dict(old._mapping)):
                changed.add(sid)
            session.execute(sa.update(s).where(s.c.id == sid).values(**values, updated_at=now))
        scheduled.append(
            ScheduledStep(step_id=sid, run_id=run_id, source=run.source, run_key=run.run_key, workflow=run.workflow,
                          step_key=RUN_STEP_KEY, name=values["name"], kind=RUN_STEP_KIND, status=run.status,
                          attributes=values["attributes"])
        )  # fmt: skip
    # a changed run step is judged again; an unchanged one only gets evaluators it lacks
    fresh = [step for step in scheduled if step.step_id in changed]
    same = [step for step in scheduled if step.step_id not in changed]
    pending = schedule_evals(session=session, project_id=project_id, steps=fresh, evaluators=evaluators, reset=True)
    pending += schedule_evals(session=session, project_id=project_id, steps=same, evaluators=evaluators, reset=False)
    return pending


def _run_step(run: Any, steps: list[Any]) -> dict[str, Any]:
    """The columns of a run's run step, from the run and its stored steps (every attempt)."""
    ordered = sorted(steps, key=lambda st: (_sort_time(st.started_at), st.id))
    latest: dict[str, Any] = {}
    for st in steps:
        if st.step_key not in latest or st.attempt > latest[st.step_key].attempt:
            latest[st.step_key] = st
    finished = [st for st in steps if st.status in _TERMINAL]
    last = max(finished, key=lambda st: (_sort_time(st.ended_at), st.id)) if finished else None
    run_attrs = dict(run.attributes or {})
    cost = [st.cost_usd for st in steps if st.cost_usd is not None]
    started, ended = as_utc(run.started_at), as_utc(run.ended_at)
    attributes = {
        **run_attrs,
        "steps": [
            {"step_key": st.step_key, "name": st.name, "kind": st.kind, "attempt": st.attempt, "status": st.status,
             "latency_ms": st.latency_ms, "cost_usd": st.cost_usd}
            for st in ordered
        ],
        "counts": {
            "steps": len(latest),
            "attempts": len(steps),
            "retries": len(steps) - len(latest),
            "failed": sum(1 for st in latest.values() if st.status in _FAILED),
        },
        "cost_usd": round(sum(cost), 10) if cost else None,
        "input_tokens": _total(st.input_tokens for st in steps),
        "output_tokens": _total(st.output_tokens for st in steps),
        "duration_ms": (ended - started).total_seconds() * 1000 if started and ended else None,
        "run_updated_at": as_utc(run.updated_at).isoformat(),
    }  # fmt: skip
    return {
        "project_id": run.project_id,
        "run_id": run.id,
        "step_key": RUN_STEP_KEY,
        "attempt": 1,
        "name": (run.workflow or run.run_key)[:256],
        "kind": RUN_STEP_KIND,
        "status": run.status,
        "started_at": started,
        "ended_at": ended,
        "input": ordered[0].input,
        "output": run_attrs.get("output", last.output if last is not None else None),
        "attributes": attributes,
    }


def _content(values: Any) -> tuple[Any, ...]:
    """What a run-level verdict may depend on (not the version marker)."""
    attrs = {k: v for k, v in (values["attributes"] or {}).items() if k != "run_updated_at"}
    return (values["name"], values["status"], as_utc(values["started_at"]), as_utc(values["ended_at"]),
            values["input"], values["output"], attrs)  # fmt: skip


def _total(values: Iterable[int | None]) -> int | None:
    got = [v for v in values if v is not None]
    return sum(got) if got else None


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _sort_time(value: datetime | None) -> datetime:
    return _EPOCH if value is None else as_utc(value)


def _parse(marker: str) -> datetime:
    try:
        return as_utc(marker)
    except ValueError:
        return _EPOCH  # unreadable: treat the run step as stale
