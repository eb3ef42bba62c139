"""Score pending eval results: read them, run their scorers, write the verdicts, plan actions.

The database is the source of truth: a task carries result ids only, re-reads the rows, skips
what is no longer ``pending``, and writes each verdict with ``WHERE status = 'pending'``, so a task
that runs twice writes once. A scorer that raises is recorded as ``error`` on its own row, never as
a pass or a fail. No transaction is held while scorers run (an LLM judge may take seconds)::

    >>> from evalsvc.pipeline.score import score_pending  # doctest: +SKIP
    >>> report = score_pending(engine=engine, ids=[1, 2, 3])  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from evalsvc.errors import EvalServiceError
from evalsvc.schemas import EvalStatus, EvaluatorSpec, Score, StepPublic
from evalsvc.store.db import write_session
from evalsvc.store.models import EvalResult, Evaluator, Run, Step, table, utcnow
from evalsvc.store.sql import chunks
from scorers.base import Scorer
from scorers.registry import create

from .remediate import FailedEval, plan_actions

__all__ = ["ScoreReport", "pending_ids", "score_pending"]

logger = logging.getLogger(__name__)
_CONCURRENCY = 32


@dataclass
class ScoreReport:
    scored: int = 0
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    action_ids: list[int] = field(default_factory=list)

    def add(self, other: ScoreReport) -> None:
        self.scored += other.scored
        self.passed += other.passed
        self.failed += other.failed
        self.errors += other.errors
        self.skipped += other.skipped
        self.action_ids.extend(other.action_ids)


@lru_cache(maxsize=1024)
def _scorer_for(evaluator_id: int, scorer: str, params_json: str) -> Scorer:
    import orjson

    return create(scorer, orjson.loads(params_json))


def pending_ids(*, engine: Engine, limit: int, after_id: int = 0) -> list[int]:
    """Ids of pending results, oldest first (what a restarted worker picks up again)."""
    t = table(EvalResult)
    q = sa.select(t.c.id).where(t.c.status == EvalStatus.pending.value, t.c.id > after_id).order_by(t.c.id).limit(limit)
    with engine.connect() as conn:
        return [r[0] for r in conn.execute(q)]


_STEP_COLS = (
    "id",
    "run_id",
    "step_key",
    "attempt",
    "name",
    "kind",
    "status",
    "started_at",
    "ended_at",
    "latency_ms",
    "input",
    "output",
    "expected",
    "error",
    "parent_step_key",
    "model",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "attributes",
)


def _load(engine: Engine, ids: Sequence[int]) -> list[dict[str, Any]]:
    e = table(EvalResult)
    s = table(Step)
    r = table(Run)
    v = table(Evaluator)
    cols = [
        e.c.id.label("result_id"),
        e.c.project_id.label("project_id"),
        e.c.evaluator_id,
        e.c.evaluator,
        v.c.scorer,
        v.c.definition,
        r.c.source,
        r.c.run_key,
        r.c.workflow,
        *[s.c[c].label(f"s_{c}") for c in _STEP_COLS],
    ]
    q = (
        sa.select(*cols)
        .select_from(e.join(s, s.c.id == e.c.step_id).join(r, r.c.id == e.c.run_id).join(v, v.c.id == e.c.evaluator_id))
        .where(e.c.id.in_(list(ids)), e.c.status == EvalStatus.pending.value)
    )
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(q)]


def _step_public(row: dict[str, Any]) -> StepPublic:
    data = {c: row[f"s_{c}"] for c in _STEP_COLS}
    data["attributes"] = data["attributes"] or {}
    data.update(source=row["source"], run_key=row["run_key"], workflow=row["workflow"])
    return StepPublic.model_validate(data)


async def _run_one(scorer: Scorer, step: StepPublic, sem: asyncio.Semaphore) -> tuple[Score | None, str | None, float]:
    async with sem:
        t0 = time.perf_counter()
        try:
            score = await scorer.score(step)
            return score, None, (time.perf_counter() - t0) * 1000
        except Exception as exc:  # a scorer's failure is recorded on its own row
            return None, f"{type(exc).__name__}: {exc}", (time.perf_counter() - t0) * 1000


async def _run_all(jobs: list[tuple[Scorer, StepPublic]]) -> list[tuple[Score | None, str | None, float]]:
    sem = asyncio.Semaphore(_CONCURRENCY)
    return await asyncio.gather(*(_run_one(sc, st, sem) for sc, st in jobs))


def score_pending(*, engine: Engine, ids: Sequence[int]) -> ScoreReport:
    """Score the given pending results (others are skipped quietly) and plan the actions of failures."""
    report = ScoreReport()
    for part in chunks(list(ids), 2000):
        report.add(_score_chunk(engine, part))
    return report


def _score_chunk(engine: Engine, ids: Sequence[int]) -> ScoreReport:
    report = ScoreReport()
    rows = _load(engine, ids)
    if not rows:
        return report
    started = utcnow()
    specs: dict[int, EvaluatorSpec] = {}
    jobs: list[tuple[Scorer, StepPublic]] = []
    outcomes: list[dict[str, Any]] = []
    import orjson

    for row in rows:
        spec = specs.get(row["evaluator_id"])
        if spec is None:
            spec = specs[row["evaluator_id"]] = EvaluatorSpec.model_validate(row["definition"])
        try:
            scorer = _scorer_for(row["evaluator_id"], spec.scorer, orjson.dumps(spec.params).decode())
            step = _step_public(row)
        except (EvalServiceError, ValueError) as exc:
            outcomes.append({"row": row, "error": f"{type(exc).__name__}: {exc}"})
            continue
        jobs.append((scorer, step))
        outcomes.append({"row": row, "job": len(jobs) - 1})

    results = asyncio.run(_run_all(jobs)) if jobs else []
    ended = utcnow()
    updates: list[dict[str, Any]] = []
    failures: list[FailedEval] = []
    for out in outcomes:
        row = out["row"]
        spec = specs[row["evaluator_id"]]
        upd: dict[str, Any] = {
            "b_id": row["result_id"],
            "value": None,
            "passed": None,
            "label": None,
            "explanation": None,
            "metadata": None,
            "error": None,
            "skip_reason": None,
            "latency_ms": None,
            "started_at": started,
            "ended_at": ended,
        }
        if "error" in out:
            upd.update(status=EvalStatus.error.value, error=out["error"])
            report.errors += 1
        else:
            score, error, latency = results[out["job"]]
            upd["latency_ms"] = latency
            if score is None:
                upd.update(status=EvalStatus.error.value, error=error)
                report.errors += 1
            elif score.value is None and score.passed is None:
                upd.update(
                    status=EvalStatus.skipped.value, skip_reason=score.explanation or "scorer had nothing to judge"
                )
                report.skipped += 1
            else:
                passed = (
                    score.passed
                    if score.passed is not None
                    else bool(score.value is not None and score.value >= spec.threshold)
                )
                upd.update(
                    status=EvalStatus.completed.value,
                    value=score.value,
                    passed=passed,
                    label=score.label,
                    explanation=score.explanation,
                    metadata=score.metadata or None,
                )
                report.scored += 1
                if passed:
                    report.passed += 1
                else:
                    report.failed += 1
                    if spec.on_fail.action != "none":
                        failures.append(
                            FailedEval(
                                result_id=row["result_id"],
                                project_id=row["project_id"],
                                run_id=row["s_run_id"],
                                step_id=row["s_id"],
                                source=row["source"],
                                evaluator=row["evaluator"],
                                on_fail=spec.on_fail,
                            )
                        )
        updates.append(upd)

    e = table(EvalResult)
    cols = [
        "status",
        "value",
        "passed",
        "label",
        "explanation",
        "metadata",
        "error",
        "skip_reason",
        "latency_ms",
        "started_at",
        "ended_at",
    ]
    stmt = (
        sa.update(e)
        .where(e.c.id == sa.bindparam("b_id"), e.c.status == EvalStatus.pending.value)
        .values({c: sa.bindparam(c) for c in cols})
    )
    with write_session(engine) as session:
        session.connection().execute(stmt, updates)
        if failures:
            report.action_ids = plan_actions(session=session, failures=failures)
    logger.debug("scored %d results", len(updates), extra={"failed": report.failed, "errors": report.errors})
    return report
