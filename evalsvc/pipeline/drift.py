"""Window-level drift: compare a recent window of a target's steps with a fitted baseline.

For each profiled feature the check runs its tests (numeric: KS, PSI, Wasserstein; labels:
chi-square, PSI; text: TF-IDF cosine, out-of-vocabulary share, plus length and word counts as
numbers), stores one :class:`~evalsvc.store.models_stats.DriftReport` per test (statistic, p-value,
threshold, drifted, sizes, example runs) under one ``check_id``, and returns them. The window's
target is the baseline's, with any field overridden (another model version, another step name).
``evalsvc drift check`` calls it; a periodic job can call :func:`check_all`::

    >>> from evalsvc.pipeline.drift import check_drift  # doctest: +SKIP
    >>> check = check_drift(engine=engine, project_id=1, name="extract_prod", settings=settings,  # doctest: +SKIP
    ...                     overrides={"model": "gpt-4o-2024-11-20"})
    >>> [r.statistic for r in check.reports if r.drifted]  # doctest: +SKIP
    ['ks', 'psi']
"""

from __future__ import annotations

import math
import uuid
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from evalsvc.errors import InvalidInput
from evalsvc.settings import Settings
from evalsvc.store.db import write_session
from evalsvc.store.models import table, utcnow
from evalsvc.store.models_stats import DriftReport, StatBaseline

if TYPE_CHECKING:
    from .baselines import HistoryWindow

__all__ = ["DriftCheck", "DriftReportPublic", "check_all", "check_drift", "list_reports"]


class DriftReportPublic(BaseModel):
    id: int | None = None  # None when the check was not stored
    check_id: str
    baseline: str
    baseline_version: int
    target: dict[str, Any]
    window_start: datetime | None
    window_end: datetime | None
    feature: str
    kind: str
    statistic: str
    value: float | None
    p_value: float | None
    threshold: float
    drifted: bool
    n_baseline: int
    n_window: int
    example_runs: list[Any] | None
    detail: dict[str, Any] | None
    created_at: datetime


class DriftCheck(BaseModel):
    check_id: str
    baseline: str
    baseline_version: int
    target: dict[str, Any]
    window: dict[str, Any]
    n_window: int
    drifted: bool
    reports: list[DriftReportPublic]


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def check_drift(
    *,
    engine: Engine,
    project_id: int,
    name: str,
    settings: Settings,
    version: int | None = None,
    overrides: dict[str, Any] | None = None,
    window: HistoryWindow | None = None,
    alpha: float | None = None,
    psi_threshold: float | None = None,
    store: bool = True,
    now: datetime | None = None,
) -> DriftCheck:
    """Compare the window (default: the last ``EVALSVC_DRIFT_WINDOW_HOURS``) with the baseline."""
    # numpy and the statistical scorers load with the first check, not with the API (idle memory)
    from .baselines import BaselineTarget, HistoryWindow, load_profile, resolve_baseline, select_steps, steps_by_index

    alpha = settings.drift_alpha if alpha is None else alpha
    if not 0 < alpha < 1:
        raise InvalidInput("must be between 0 and 1", field="alpha")
    psi = settings.drift_psi_threshold if psi_threshold is None else psi_threshold
    with Session(engine) as session:
        row = resolve_baseline(session=session, project_id=project_id, name=name, version=version)
    target = BaselineTarget.model_validate(row.target).merged(**(overrides or {}))
    if window is None or (window.since is None and window.until is None and not window.runs):
        end = now or utcnow()
        window = HistoryWindow(since=end - timedelta(hours=settings.drift_window_hours), until=end)
    steps, total = select_steps(engine=engine, project_id=project_id, target=target, window=window,
                                limit=settings.drift_max_sample, seed=settings.drift_seed)  # fmt: skip
    profile = load_profile(row)
    drifts = profile.compare(steps, alpha=alpha, psi_threshold=psi, permutations=settings.drift_permutations)
    check_id = uuid.uuid4().hex
    created = utcnow()
    target_json = target.model_dump(exclude_defaults=True)
    rows = [
        DriftReport(
            project_id=project_id,
            check_id=check_id,
            baseline_id=row.id or 0,
            baseline=row.name,
            baseline_version=row.version,
            target=target_json,
            window_start=window.since,
            window_end=window.until,
            feature=d.feature,
            kind=d.kind,
            statistic=d.test.statistic,
            value=_num(d.test.value),
            p_value=_num(d.test.p_value),
            threshold=d.test.threshold,
            drifted=bool(d.test.drifted),
            n_baseline=d.test.n_baseline,
            n_window=d.test.n_window,
            example_runs=steps_by_index(steps, d.examples) if d.test.drifted else [],
            detail=d.test.detail or None,
            created_at=created,
        )
        for d in drifts
    ]
    if store and rows:
        with write_session(engine) as session:
            session.add_all(rows)
            session.flush()
    reports = [_public(r) for r in rows]
    return DriftCheck(
        check_id=check_id,
        baseline=row.name,
        baseline_version=row.version,
        target=target_json,
        window=window.model_dump(mode="json", exclude_defaults=True) | {"steps": total},
        n_window=total,
        drifted=any(r.drifted for r in reports),
        reports=reports,
    )


def _public(r: DriftReport) -> DriftReportPublic:
    return DriftReportPublic.model_validate(r.model_dump())


def check_all(*, engine: Engine, project_id: int, settings: Settings, now: datetime | None = None) -> list[DriftCheck]:
    """Check the current version of every baseline of a project over the last window (periodic job)."""
    with Session(engine) as session:
        names = sorted(set(session.exec(select(StatBaseline.name).where(StatBaseline.project_id == project_id))))
    return [check_drift(engine=engine, project_id=project_id, name=n, settings=settings, now=now) for n in names]


def list_reports(
    *,
    session: Session,
    project_id: int,
    baseline: str | None = None,
    check_id: str | None = None,
    drifted: bool | None = None,
    limit: int = 100,
) -> list[DriftReportPublic]:
    """Stored drift reports, newest first."""
    q = select(DriftReport).where(DriftReport.project_id == project_id)
    if baseline is not None:
        q = q.where(DriftReport.baseline == baseline)
    if check_id is not None:
        q = q.where(DriftReport.check_id == check_id)
    if drifted is not None:
        q = q.where(DriftReport.drifted == drifted)
    t = table(DriftReport)
    return [_public(r) for r in session.exec(q.order_by(t.c.created_at.desc(), t.c.id).limit(limit)).all()]
