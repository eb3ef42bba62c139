"""Match finished steps with the project's active evaluators and queue their verdicts.

Each match becomes an EvalResult row, ``pending`` (to be scored) or ``skipped`` with the reason
``not sampled``. Sampling is deterministic: the draw is a hash of (source, run, step), so
re-ingesting a step repeats the decision, every attempt of a sampled step is judged, and two
evaluators with the same rate judge the same steps.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from fnmatch import fnmatchcase
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, select

from evalsvc.schemas import EvalStatus, EvaluatorSpec, Target
from evalsvc.store.models import EvalResult, Evaluator, table, utcnow
from evalsvc.store.sql import chunks, dialect_insert

__all__ = [
    "ActiveEvaluator",
    "ScheduledStep",
    "backfill",
    "load_active_evaluators",
    "matches",
    "sample_draw",
    "schedule_evals",
]

NOT_SAMPLED = "not sampled"


@dataclass(frozen=True, slots=True)
class ActiveEvaluator:
    id: int
    name: str
    version: str
    spec: EvaluatorSpec


@dataclass(frozen=True, slots=True)
class ScheduledStep:
    step_id: int
    run_id: int
    source: str
    run_key: str
    workflow: str | None
    step_key: str
    name: str
    kind: str
    status: str
    attributes: dict[str, Any]


def load_active_evaluators(*, session: Session, project_id: int) -> list[ActiveEvaluator]:
    rows = session.exec(
        select(Evaluator).where(Evaluator.project_id == project_id, Evaluator.active == sa.true())
    ).all()
    return [
        ActiveEvaluator(id=r.id or 0, name=r.name, version=r.version, spec=EvaluatorSpec.model_validate(r.definition))
        for r in rows
    ]


def _glob(pattern: str | None, value: str | None) -> bool:
    return pattern is None or (value is not None and fnmatchcase(value, pattern))


def matches(target: Target, step: ScheduledStep) -> bool:
    """Whether an evaluator's target selector picks this step (globs; unset fields match all)."""
    return (
        _glob(target.source, step.source)
        and _glob(target.workflow, step.workflow)
        and _glob(target.step, step.name)
        and _glob(target.kind, step.kind)
        and _glob(target.status, step.status)
        and all(_glob(pat, _attr_text(step.attributes.get(k))) for k, pat in target.attributes.items())
    )


def _attr_text(value: Any) -> str | None:
    return None if value is None else str(value)


def sample_draw(source: str, run_key: str, step_key: str) -> float:
    """A uniform number in [0, 1) fixed by the step's identity."""
    digest = hashlib.blake2b(f"{source}\x1f{run_key}\x1f{step_key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def schedule_evals(
    *,
    session: Session,
    project_id: int,
    steps: list[ScheduledStep],
    evaluators: list[ActiveEvaluator],
    reset: bool = True,
) -> list[int]:
    """Create the EvalResult rows of these steps; return the ids left ``pending``.

    With ``reset`` (a step changed after it finished) existing results are set back to pending;
    without it (a backfill) existing results are left alone."""
    if not steps or not evaluators:
        return []
    now: datetime = utcnow()
    rows: list[dict[str, Any]] = []
    for step in steps:
        draw: float | None = None
        for ev in evaluators:
            if not matches(ev.spec.target, step):
                continue
            if draw is None:
                draw = sample_draw(step.source, step.run_key, step.step_key)
            sampled = draw < ev.spec.sample.rate
            rows.append(
                {
                    "project_id": project_id,
                    "run_id": step.run_id,
                    "step_id": step.step_id,
                    "evaluator_id": ev.id,
                    "evaluator": ev.name,
                    "evaluator_version": ev.version,
                    "status": EvalStatus.pending if sampled else EvalStatus.skipped,
                    "skip_reason": None if sampled else NOT_SAMPLED,
                    "cache_hit": False,
                    "created_at": now,
                }
            )
    pending: list[int] = []
    t = table(EvalResult)
    for part in chunks(rows, 2000):
        stmt = dialect_insert(session, t)
        if not reset:
            stmt = stmt.on_conflict_do_nothing(index_elements=["step_id", "evaluator", "evaluator_version"])
            for rid, status in session.execute(stmt.returning(t.c.id, t.c.status), list(part)):
                if status == EvalStatus.pending:
                    pending.append(rid)
            continue
        stmt = stmt.on_conflict_do_update(
            index_elements=["step_id", "evaluator", "evaluator_version"],
            set_={
                "status": stmt.excluded.status,
                "skip_reason": stmt.excluded.skip_reason,
                "value": None,
                "passed": None,
                "label": None,
                "explanation": None,
                "error": None,
                "metadata": None,
                "started_at": None,
                "ended_at": None,
            },
        ).returning(t.c.id, t.c.status)
        for rid, status in session.execute(stmt, list(part)):
            if status == EvalStatus.pending:
                pending.append(rid)
    return pending


def backfill(
    *,
    session: Session,
    project_id: int,
    evaluators: list[ActiveEvaluator],
    since: datetime | None = None,
    rescore: bool = False,
    chunk: int = 5000,
) -> list[int]:
    """Schedule evaluators on steps already stored (an evaluator applied after its steps arrived).

    Steps that already have a result of the evaluator's version keep it, unless ``rescore``.
    Returns the ids of the pending results to score."""
    from evalsvc.schemas import TERMINAL_STEP_STATUSES
    from evalsvc.store.models import Run, Step, table

    st, rt = table(Step), table(Run)
    pending: list[int] = []
    after = 0
    while True:
        q = (
            sa.select(st.c.id, st.c.run_id, rt.c.source, rt.c.run_key, rt.c.workflow, st.c.step_key, st.c.name,
                      st.c.kind, st.c.status, st.c.attributes)
            .join(rt, rt.c.id == st.c.run_id)
            .where(st.c.project_id == project_id, st.c.id > after,
                   st.c.status.in_([s.value for s in TERMINAL_STEP_STATUSES]))
            .order_by(st.c.id)
            .limit(chunk)
        )  # fmt: skip
        if since is not None:
            q = q.where(st.c.updated_at >= since)
        rows = session.execute(q).all()
        if not rows:
            return pending
        after = rows[-1].id
        steps = [
            ScheduledStep(step_id=r.id, run_id=r.run_id, source=r.source, run_key=r.run_key, workflow=r.workflow,
                          step_key=r.step_key, name=r.name, kind=r.kind, status=r.status, attributes=r.attributes or {})
            for r in rows
        ]  # fmt: skip
        pending += schedule_evals(session=session, project_id=project_id, steps=steps, evaluators=evaluators,
                                  reset=rescore)  # fmt: skip
