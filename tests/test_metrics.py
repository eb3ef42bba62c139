"""``GET /metrics``: Prometheus text counted from the store, parsed with prometheus_client's own
parser; optional bearer token."""

from __future__ import annotations

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from sqlmodel import select

from evalsvc.api.main import create_app
from evalsvc.settings import Settings
from evalsvc.store.db import get_engine, session_scope
from evalsvc.store.models import Project
from evalsvc.store.models_scoring import BudgetUsage

from .conftest import Api
from .factories import SCHEMA_YAML, record


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def _get(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def test_metrics_count_the_store(api: Api, other_api: Api, settings: Settings) -> None:
    api.apply(SCHEMA_YAML)
    api.ingest([record("r1", "extract", output={"total": "x"}), record("r2", "extract"), record("r2", "extract")])
    other_api.ingest([record("o1", "extract")])
    # the LLM judge's counters, as evalsvc.pipeline.judging records them (tests/test_judge.py drives the judge)
    with session_scope(get_engine(settings.resolved_database_url())) as session:
        pid = session.exec(select(Project).where(Project.name == "default")).one().id or 0
        session.add(BudgetUsage(project_id=pid, evaluator="tone_judge", day="2026-11-01", calls=3, dollars=0.25))
        session.add(BudgetUsage(project_id=pid, evaluator="tone_judge", day="2026-11-02", calls=2, dollars=0.5,
                                over_budget=4))  # fmt: skip
        session.add(BudgetUsage(project_id=pid, evaluator="*", day="2026-11-01", calls=5, dollars=0.75))
    r = api.client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    m = _samples(r.text)
    assert _get(m, "evalsvc_records_ingested_total", project="default") == 2  # the duplicate is not counted
    assert _get(m, "evalsvc_records_ingested_total", project="other") == 1
    ev = {"project": "default", "evaluator": "total_is_number", "status": "completed"}
    assert _get(m, "evalsvc_eval_results", **ev, outcome="failed") == 1
    assert _get(m, "evalsvc_eval_results", **ev, outcome="passed") == 1
    assert _get(m, "evalsvc_actions", project="default", kind="review", status="succeeded") == 1
    assert _get(m, "evalsvc_queue_depth", project="default") == 0
    assert _get(m, "evalsvc_queue_depth", project="other") == 0
    judge = {"project": "default", "evaluator": "tone_judge"}
    assert _get(m, "evalsvc_judge_calls_total", **judge) == 5
    assert _get(m, "evalsvc_judge_dollars_total", **judge) == 0.75
    assert _get(m, "evalsvc_judge_over_budget_total", **judge) == 4
    assert _get(m, "evalsvc_judge_calls_total", project="default", evaluator="*") is None  # not counted twice


def test_metrics_token(settings: Settings) -> None:
    guarded = settings.model_copy(update={"metrics_token": SecretStr("s3cret")})
    with TestClient(create_app(guarded, start_worker=False)) as client:
        r = client.get("/metrics")
        assert r.status_code == 401 and r.json()["field"] == "authorization"
        assert client.get("/metrics", headers={"authorization": "Bearer nope"}).status_code == 401
        r = client.get("/metrics", headers={"authorization": "Bearer s3cret"})
        assert r.status_code == 200 and "evalsvc_queue_depth" in r.text
