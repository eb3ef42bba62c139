"""Read queries the web UI needs beyond :mod:`evalsvc.store.queries` (which it reuses for runs,
evals and reviews): filter choices, a run's review items, an evaluator's pass rate per day, its drift
status and its judge spend. All scoped to one project; all read-only.

>>> from evalsvc.store.db import get_engine, migrate
>>> from sqlmodel import Session
>>> engine = get_engine("sqlite:////tmp/evalsvc-doc-ui.db"); migrate(engine)
>>> with Session(engine) as session:
...     pass_rate_by_day(session=session, project_id=1, evaluator="nope")
[]
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from evalsvc.store.models import Action, EvalResult, Evaluator, ReviewItem, Run, Step, table
from evalsvc.store.models_scoring import BudgetUsage
from evalsvc.store.models_stats import DriftReport

__all__ = [
    "DayRate",
    "DriftStatus",
    "SpendDay",
    "actions_by_run",
    "evaluator_names",
    "evaluator_totals",
    "judge_spend",
    "latest_drift",
    "pass_rate_by_day",
    "run_reviews",
    "workflows",
]


@dataclass(frozen=True)
class DayRate:
    day: str  # YYYY-MM-DD, UTC
    passed: int
    failed: int

    @property
    def rate(self) -> float:
        return self.passed / (self.passed + self.failed) if self.passed + self.failed else 0.0


@dataclass(frozen=True)
class SpendDay:
    day: str
    calls: int
    dollars: float
    over_budget: int


@dataclass(frozen=True)
class DriftStatus:
    check_id: str
    baseline: str
    baseline_version: int
    target: dict[str, Any]
    created_at: datetime
    window_start: datetime | None
    window_end: datetime | None
    drifted: bool
    features: list[dict[str, Any]]


def workflows(*, session: Session, project_id: int, limit: int = 200) -> list[str]:
    r = table(Run)
    q = (
        sa.select(r.c.workflow)
        .where(r.c.project_id == project_id, r.c.workflow.is_not(None))
        .distinct()
        .order_by(r.c.workflow)
        .limit(limit)
    )
    return [w for (w,) in session.execute(q)]


def evaluator_names(*, session: Session, project_id: int) -> list[str]:
    e = table(Evaluator)
    q = sa.select(e.c.name).where(e.c.project_id == project_id).distinct().order_by(e.c.name)
    return [n for (n,) in session.execute(q)]


def evaluator_totals(*, session: Session, project_id: int) -> dict[str, tuple[int, int]]:
    """(passed, failed) per evaluator name, all versions together."""
    r = table(EvalResult)
    q = (
        sa.select(r.c.evaluator, r.c.passed, sa.func.count())
        .where(r.c.project_id == project_id, r.c.passed.is_not(None))
        .group_by(r.c.evaluator, r.c.passed)
    )
    out: dict[str, tuple[int, int]] = {}
    for name, passed, n in session.execute(q):
        p, f = out.get(name, (0, 0))
        out[name] = (p + int(n), f) if passed else (p, f + int(n))
    return out


def actions_by_run(*, session: Session, project_id: int, run_ids: list[int]) -> dict[int, list[tuple[str, str, int]]]:
    """(kind, status, count) of the actions taken on each of these runs."""
    if not run_ids:
        return {}
    a = table(Action)
    q = (
        sa.select(a.c.run_id, a.c.kind, a.c.status, sa.func.count())
        .where(a.c.project_id == project_id, a.c.run_id.in_(run_ids))
        .group_by(a.c.run_id, a.c.kind, a.c.status)
        .order_by(a.c.run_id, a.c.kind, a.c.status)
    )
    out: dict[int, list[tuple[str, str, int]]] = {}
    for run_id, kind, status, n in session.execute(q):
        out.setdefault(int(run_id), []).append((kind, status, int(n)))
    return out


def run_reviews(*, session: Session, project_id: int, run_id: int) -> list[ReviewItem]:
    rows = session.execute(
        sa.select(ReviewItem)
        .where(sa.and_(table(ReviewItem).c.project_id == project_id, table(ReviewItem).c.run_id == run_id))
        .order_by(table(ReviewItem).c.id)
    ).scalars()
    return list(rows)


def _day(session: Session, column: Any) -> Any:
    if session.get_bind().dialect.name == "postgresql":
        return sa.func.to_char(sa.func.timezone("UTC", column), "YYYY-MM-DD")
    return sa.func.strftime("%Y-%m-%d", column)


def pass_rate_by_day(*, session: Session, project_id: int, evaluator: str, days: int = 90) -> list[DayRate]:
    """Passed and failed verdicts per UTC day of the judged step (its start, else the verdict's time),
    the latest ``days`` days that have any, oldest first."""
    r, s = table(EvalResult), table(Step)
    day = _day(session, sa.func.coalesce(s.c.started_at, r.c.created_at)).label("day")
    q = (
        sa.select(day, r.c.passed, sa.func.count())
        .select_from(r.join(s, s.c.id == r.c.step_id))
        .where(r.c.project_id == project_id, r.c.evaluator == evaluator, r.c.passed.is_not(None))
        .group_by(day, r.c.passed)
    )
    counts: dict[str, list[int]] = {}
    for d, passed, n in session.execute(q):
        counts.setdefault(str(d), [0, 0])[0 if passed else 1] += int(n)
    return [DayRate(d, p, f) for d, (p, f) in sorted(counts.items())[-days:]]


def judge_spend(*, session: Session, project_id: int, evaluator: str, days: int = 30) -> list[SpendDay]:
    """The LLM judge's calls and dollars per UTC day, as the judge's budget counters recorded them."""
    u = table(BudgetUsage)
    q = (
        sa.select(u.c.day, u.c.calls, u.c.dollars, u.c.over_budget)
        .where(u.c.project_id == project_id, u.c.evaluator == evaluator)
        .order_by(u.c.day.desc())
        .limit(days)
    )
    return [SpendDay(d, int(c), float(usd), int(o)) for d, c, usd, o in session.execute(q)][::-1]


def _overlaps(evaluator_target: dict[str, Any], drift_target: dict[str, Any]) -> bool:
    for name in ("source", "workflow", "step", "kind"):
        a, b = evaluator_target.get(name), drift_target.get(name)
        if a is None or b is None:
            continue
        if not (fnmatch.fnmatchcase(str(a), str(b)) or fnmatch.fnmatchcase(str(b), str(a))):
            return False
    return True


def latest_drift(*, session: Session, project_id: int, target: dict[str, Any], scan: int = 500) -> DriftStatus | None:
    """The most recent drift check whose target overlaps the evaluator's (same source, workflow, step
    and kind where both name one, globs allowed), with its features; ``None`` when there is none."""
    d = table(DriftReport)
    rows = session.execute(
        sa.select(d).where(d.c.project_id == project_id).order_by(d.c.created_at.desc(), d.c.id.desc()).limit(scan)
    ).all()
    check: str | None = None
    picked: list[Any] = []
    for row in rows:
        if check is None and _overlaps(target, dict(row.target or {})):
            check = row.check_id
        if check is not None and row.check_id == check:
            picked.append(row)
    if not picked:
        return None
    first = picked[0]
    features = [
        {"feature": x.feature, "kind": x.kind, "statistic": x.statistic, "value": x.value, "p_value": x.p_value,
         "threshold": x.threshold, "drifted": x.drifted, "n_baseline": x.n_baseline, "n_window": x.n_window}
        for x in sorted(picked, key=lambda x: (not x.drifted, x.feature))
    ]  # fmt: skip
    return DriftStatus(
        check_id=first.check_id,
        baseline=first.baseline,
        baseline_version=first.baseline_version,
        target=dict(first.target or {}),
        created_at=first.created_at,
        window_start=first.window_start,
        window_end=first.window_end,
        drifted=any(x.drifted for x in picked),
        features=features,
    )
