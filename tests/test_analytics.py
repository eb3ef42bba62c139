"""pandas helpers (evalsvc.analytics.frames) and the replica's refresh, on both stores."""

from __future__ import annotations

from datetime import datetime

import pandas as pd
import pytest
import sqlalchemy as sa

from evalsvc.analytics import frames
from evalsvc.analytics.replica import refresh
from evalsvc.errors import InvalidInput, NotFound
from evalsvc.settings import Settings
from evalsvc.store.db import get_engine
from tests.conftest import Api
from tests.factories import record

YAML = """
evaluators:
  - {name: is_obj, scorer: json_schema, params: {schema: {type: object}}, on_fail: {action: retry, max_attempts: 3}}
  - {name: not_blank, scorer: not_empty, on_fail: review}
"""


def _fill(api: Api) -> None:
    api.apply(YAML)
    api.ingest([
        record("r1", "extract", output="oops", model="m-small"),
        record("r1", "extract", attempt=2, output={"total": 1}, model="m-small"),
        record("r2", "extract", output="bad", model="m-big"),
        record("r2", "extract", attempt=2, output="still bad", model="m-big"),
        record("r3", "extract", output="", model="m-big"),
        record("r4", "extract", output={"fine": True}, model="m-small"),
    ])  # fmt: skip


def test_failed_evaluator_report_answers_the_question(api: Api, settings: Settings) -> None:
    _fill(api)
    df = frames.failed_evaluator_report(project="default", evaluator="is_obj", settings=settings,
                                        since=datetime(2000, 1, 1))  # fmt: skip
    later = [None if pd.isna(x) else bool(x) for x in df.later_attempt_passed]
    got = sorted(zip(df.run_key, df.attempt, df.actions, later, df.worked, strict=True))
    assert got == [
        ("r1", 1, "retry:failed", True, True),  # the retry passed
        ("r2", 1, "retry:failed", False, False),  # it did not
        ("r2", 2, "retry:failed", None, False),
        ("r3", 1, "retry:failed", None, False),
    ]
    assert df.attrs["freshness"].lag_seconds >= 0
    with pytest.raises(NotFound):
        frames.failed_evaluator_report(project="default", evaluator="no_such", settings=settings)


def test_pass_rate_retries_reviews_and_spend(api: Api, settings: Settings) -> None:
    _fill(api)
    by = frames.pass_rate(project="default", by=("evaluator", "model"), settings=settings)
    row = by[(by.evaluator == "is_obj") & (by.model == "m-small")].iloc[0]
    assert (row.passed, row.failed, row.pass_rate) == (2, 1, pytest.approx(2 / 3))
    day = frames.pass_rate(project="default", by=("day",), settings=settings)
    assert int(day.passed.sum() + day.failed.sum()) == 12
    with pytest.raises(InvalidInput):
        frames.pass_rate(project="default", by=("colour",), settings=settings)
    retried = frames.retried_failures(project="default", evaluator="is_obj", settings=settings)
    assert sorted(zip(retried.run_key, retried.retry_passed, strict=True)) == [("r1", True), ("r2", False)]
    reviewed = frames.reviewed_or_paused_runs(project="default", settings=settings)
    assert list(reviewed.run_key) == ["r3"] and list(reviewed.review_status) == ["open"]
    assert frames.judge_spend(project="default", settings=settings).empty
    # a judge's verdicts carry their model and cost (written here as a judge scorer writes them)
    with get_engine(settings.resolved_database_url()).begin() as conn:
        conn.execute(sa.text("UPDATE eval_result SET judge_model = 'openai/gpt-4o-mini', cost_usd = 0.25 "
                             "WHERE evaluator = 'not_blank'"))  # fmt: skip
    # the replica was refreshed less than a second ago: a fresh read is asked for
    refresh(settings=settings, project_id=1, max_lag_seconds=0, full=True)
    spend = frames.judge_spend(project="default", settings=settings)
    assert list(spend.evaluator) == ["not_blank"] and spend.cost_usd.iloc[0] == pytest.approx(6 * 0.25)
    assert spend.judge_calls.iloc[0] == 6
    assert frames.drift_alerts(project="default", settings=settings).empty


def test_refresh_copies_only_what_changed(api: Api, settings: Settings) -> None:
    _fill(api)
    first = refresh(settings=settings, project_id=1, max_lag_seconds=0, full=True)
    assert first.copied_rows > 0 and "evals" in first.rebuilt
    cached = refresh(settings=settings, project_id=1, max_lag_seconds=3600)
    assert cached.refresh_ms is None and cached.refreshed_at == first.refreshed_at
    api.ingest([record("r9", "extract", output={"a": 1})])
    again = refresh(settings=settings, project_id=1, max_lag_seconds=0)
    assert again.rebuilt == [] and again.refreshed_at > first.refreshed_at
    df = frames.frame("SELECT count(*) AS n FROM runs WHERE run_key = 'r9'", project=1, settings=settings)
    assert df.n.iloc[0] == 1
