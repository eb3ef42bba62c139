"""pandas DataFrames for the common questions about a project's eval history.

Each helper is one SQL query over the same views as ``evalsvc query`` (the constants below), run
on the project's refreshed, read-only replica; ``frame.attrs["freshness"]`` says how fresh it is::

    >>> from evalsvc.analytics import frames
    >>> frames.pass_rate(project="demo", by=("evaluator", "day"))  # doctest: +SKIP
    >>> frames.failed_evaluator_report(project="demo", evaluator="invoice_extraction_schema")  # doctest: +SKIP

``failed_evaluator_report`` answers "which runs failed evaluator X this week, what did evalsvc do
about them, and did it work?": one row per failed verdict with its run and step, the actions
taken and their outcome, the review decision, and whether a later attempt of the step passed.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd  # type: ignore[import-untyped,unused-ignore]

from evalsvc.errors import InvalidInput, NotFound
from evalsvc.settings import Settings

from .query import sandbox_config
from .replica import open_project, refresh

__all__ = [
    "FAILED_EVALUATOR_SQL",
    "drift_alerts",
    "failed_evaluator_report",
    "frame",
    "judge_spend",
    "pass_rate",
    "project_id",
    "retried_failures",
    "reviewed_or_paused_runs",
]

# the day of a verdict: when it was scored (when it was created, if it never was)
_DAY = "CAST(date_trunc('day', coalesce(e.ended_at, e.created_at)) AS DATE)"
_GROUPS = {
    "evaluator": "e.evaluator",
    "day": _DAY,
    "step": "s.name",
    "model": "s.model",
    "workflow": "r.workflow",
    "evaluator_version": "e.evaluator_version",
}


def project_id(*, project: str | int, settings: Settings) -> int:
    """The id of a project named ``project`` (an int is taken as the id)."""
    if isinstance(project, int):
        return project
    from evalsvc.pipeline.projects import get_project
    from evalsvc.store.db import get_engine, migrate, session_scope

    engine = get_engine(settings.resolved_database_url())
    migrate(engine)
    with session_scope(engine) as session:
        return get_project(session=session, name=project).id or 0


def frame(
    sql: str,
    params: Sequence[Any] | dict[str, Any] | None = None,
    *,
    project: str | int,
    settings: Settings | None = None,
) -> pd.DataFrame:
    """Run ``sql`` (one SELECT over the views, with ``$name`` or ``?`` parameters) on the project's
    refreshed replica; no row limit. ``.attrs["freshness"]`` holds the :class:`Freshness`."""
    settings = settings or Settings()
    pid = project_id(project=project, settings=settings)
    fresh = refresh(settings=settings, project_id=pid)
    with open_project(settings=settings, project_id=pid, config=sandbox_config(settings)) as con:
        df = con.execute(sql, params).df()
    df.attrs["freshness"] = fresh
    return df


def pass_rate(
    *,
    project: str | int,
    by: Sequence[str] = ("evaluator",),
    since: datetime | None = None,
    settings: Settings | None = None,
) -> pd.DataFrame:
    """Passed, failed, skipped and errors, and the pass rate (passed / judged), grouped by any of
    ``evaluator``, ``day``, ``step``, ``model``, ``workflow``, ``evaluator_version``."""
    unknown = [b for b in by if b not in _GROUPS]
    if unknown or not by:
        raise InvalidInput(f"group by one or more of {', '.join(_GROUPS)}; got {list(by)}", field="by")
    keys = ", ".join(f"{_GROUPS[b]} AS {b}" for b in by)
    n = ", ".join(str(i + 1) for i in range(len(by)))
    sql = f"""
        SELECT {keys},
               count(*) FILTER (WHERE e.passed) AS passed,
               count(*) FILTER (WHERE NOT e.passed) AS failed,
               count(*) FILTER (WHERE e.status = 'skipped') AS skipped,
               count(*) FILTER (WHERE e.status = 'error') AS errors,
               avg(CAST(e.passed AS INTEGER)) AS pass_rate
        FROM evals e JOIN steps s ON s.id = e.step_id JOIN runs r ON r.id = e.run_id
        WHERE coalesce(e.ended_at, e.created_at) >= $since
        GROUP BY {n} ORDER BY {n}"""
    return frame(sql, {"since": since or datetime(1970, 1, 1)}, project=project, settings=settings)


RETRIED_SQL = """
    -- failed verdicts with the next attempt of the same step and that attempt's verdict (same evaluator)
    WITH failed AS (
        SELECT e.id AS eval_id, e.evaluator, e.explanation, e.run_id, s.step_key, s.attempt, s.name AS step
        FROM evals e JOIN steps s ON s.id = e.step_id
        WHERE NOT e.passed AND ($evaluator IS NULL OR e.evaluator = $evaluator)
    ),
    nxt AS (
        SELECT f.eval_id, min(s2.attempt) AS retry_attempt
        FROM failed f JOIN steps s2 ON s2.run_id = f.run_id AND s2.step_key = f.step_key AND s2.attempt > f.attempt
        GROUP BY 1
    )
    SELECT r.run_key, r.workflow, f.step, f.step_key, f.attempt, f.evaluator, f.explanation, n.retry_attempt,
           e2.passed AS retry_passed, e2.status AS retry_eval_status
    FROM failed f JOIN runs r ON r.id = f.run_id
    JOIN nxt n ON n.eval_id = f.eval_id
    LEFT JOIN steps s2 ON s2.run_id = f.run_id AND s2.step_key = f.step_key AND s2.attempt = n.retry_attempt
    LEFT JOIN evals e2 ON e2.step_id = s2.id AND e2.evaluator = f.evaluator
    ORDER BY r.run_key, f.step_key, f.attempt"""


def retried_failures(
    *, project: str | int, evaluator: str | None = None, settings: Settings | None = None
) -> pd.DataFrame:
    """Failed verdicts whose step was tried again, and whether the retry passed the same evaluator
    (``retry_passed`` is empty when the retry was not judged by it)."""
    return frame(RETRIED_SQL, {"evaluator": evaluator}, project=project, settings=settings)


REVIEWED_OR_PAUSED_SQL = """
    -- runs sent to review or paused by an action, and how they ended
    SELECT r.run_key, r.workflow, r.status AS run_status, r.ended_at AS run_ended_at,
           a.kind AS action, a.status AS action_status, a.last_error AS action_error,
           e.evaluator, v.status AS review_status, v.human_passed, v.reviewer, v.comment, v.decided_at
    FROM actions a JOIN runs r ON r.id = a.run_id JOIN evals e ON e.id = a.eval_result_id
    LEFT JOIN reviews v ON v.eval_result_id = a.eval_result_id
    WHERE a.kind IN ('review', 'pause') OR r.status = 'paused'
    ORDER BY r.run_key, a.id"""


def reviewed_or_paused_runs(*, project: str | int, settings: Settings | None = None) -> pd.DataFrame:
    """Runs that evalsvc sent to review or paused, with the review's decision and the run's end."""
    return frame(REVIEWED_OR_PAUSED_SQL, project=project, settings=settings)


JUDGE_SPEND_SQL = f"""
    -- judge calls and dollars per evaluator and day (the result's judge_model and cost_usd columns)
    SELECT e.evaluator, {_DAY} AS day,
           count(*) FILTER (WHERE e.judge_model IS NOT NULL AND NOT e.cache_hit) AS judge_calls,
           count(*) FILTER (WHERE e.cache_hit) AS cache_hits,
           coalesce(sum(e.cost_usd), 0) AS cost_usd
    FROM evals e
    WHERE e.judge_model IS NOT NULL OR e.cost_usd IS NOT NULL
    GROUP BY 1, 2 ORDER BY 2, 1"""


def judge_spend(*, project: str | int, settings: Settings | None = None) -> pd.DataFrame:
    """LLM judge calls, cache hits and dollars per evaluator and day (rule scorers cost nothing and
    do not appear)."""
    return frame(JUDGE_SPEND_SQL, project=project, settings=settings)


DRIFT_SQL = """
    -- drifted features of each drift check, one row per example run
    SELECT d.check_id, d.created_at, d.baseline, d.feature, d.statistic, d.value, d.p_value, d.threshold,
           CAST(x.ex->>'run_key' AS VARCHAR) AS run_key, CAST(x.ex->>'step_key' AS VARCHAR) AS step_key,
           TRY_CAST(x.ex->>'attempt' AS INTEGER) AS attempt, r.status AS run_status, r.workflow
    FROM drift d
    LEFT JOIN LATERAL (SELECT unnest(CAST(d.example_runs AS JSON[])) AS ex) x ON true
    LEFT JOIN runs r ON r.id = TRY_CAST(x.ex->>'run_id' AS BIGINT)
    WHERE d.drifted
    ORDER BY d.created_at DESC, d.feature"""


def drift_alerts(*, project: str | int, settings: Settings | None = None) -> pd.DataFrame:
    """Drifted features of the drift checks (``evalsvc drift check``) with the example runs each
    report links to."""
    return frame(DRIFT_SQL, project=project, settings=settings)


FAILED_EVALUATOR_SQL = """
    -- which runs failed evaluator $evaluator since $since, what did evalsvc do, and did it work?
    SELECT r.run_key, r.workflow, s.step_key, s.attempt, e.id AS eval_id, e.explanation,
           coalesce(e.ended_at, e.created_at) AS failed_at,
           string_agg(DISTINCT a.kind || ':' || a.status, ', ') AS actions,
           any_value(v.status) AS review_status,
           any_value(v.human_passed) AS review_passed,
           (SELECT bool_or(e2.passed) FROM steps s2 JOIN evals e2 ON e2.step_id = s2.id
             WHERE s2.run_id = s.run_id AND s2.step_key = s.step_key AND s2.attempt > s.attempt
               AND e2.evaluator = e.evaluator) AS later_attempt_passed,
           r.status AS run_status
    FROM evals e JOIN steps s ON s.id = e.step_id JOIN runs r ON r.id = e.run_id
    LEFT JOIN actions a ON a.eval_result_id = e.id
    LEFT JOIN reviews v ON v.eval_result_id = e.id
    WHERE e.evaluator = $evaluator AND NOT e.passed AND coalesce(e.ended_at, e.created_at) >= $since
    GROUP BY ALL
    ORDER BY failed_at DESC, r.run_key, s.attempt"""


def failed_evaluator_report(
    *,
    project: str | int,
    evaluator: str,
    since: datetime | None = None,
    settings: Settings | None = None,
) -> pd.DataFrame:
    """Each failed verdict of ``evaluator`` since ``since`` (default: the last 7 days): its run and
    step, the actions evalsvc took (``kind:status``), the review decision, whether a later attempt
    of the step passed the same evaluator, and how the run ended; ``worked`` sums it up (a later
    attempt passed, or a reviewer approved)."""
    since = since or datetime.now(UTC).replace(tzinfo=None) - timedelta(days=7)
    df = frame(FAILED_EVALUATOR_SQL, {"evaluator": evaluator, "since": since}, project=project, settings=settings)
    if df.empty and not _evaluator_known(evaluator, project=project, settings=settings):
        raise NotFound(f"no results of evaluator {evaluator!r} in this project", field="evaluator")
    passed = df["later_attempt_passed"].eq(True).fillna(False).astype(bool)
    df["worked"] = passed | df["review_status"].eq("approved").fillna(False).astype(bool)
    return df


def _evaluator_known(evaluator: str, *, project: str | int, settings: Settings | None) -> bool:
    got = frame("SELECT count(*) AS n FROM evals WHERE evaluator = ?", [evaluator], project=project, settings=settings)
    return bool(got["n"].iloc[0])
