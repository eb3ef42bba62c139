"""The scoring loop: pending rows are scored by the runner, errors stay on their own rows, and a
restarted service picks up what a dead one left pending."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar, Literal

import sqlalchemy as sa
from fastapi.testclient import TestClient

from evalsvc.api.main import create_app
from evalsvc.pipeline.evaluators import apply_evaluators, parse_config
from evalsvc.pipeline.ingest import ingest_batch
from evalsvc.pipeline.projects import ensure_project
from evalsvc.pipeline.score import score_pending
from evalsvc.schemas import Score, StepPublic
from evalsvc.settings import Settings
from evalsvc.store.db import get_engine, migrate, session_scope
from scorers import BaseScorer, register

from .conftest import Api, make_key
from .factories import record


@register
class Explodes(BaseScorer):
    """A third-party scorer that fails on some steps."""

    name: ClassVar[str] = "test_explodes"
    when: str = "boom"

    async def score(self, step: StepPublic) -> Score:
        if step.output == self.when:
            raise RuntimeError("scorer blew up")
        return Score(value=1.0)


def test_scorer_error_is_recorded_on_its_own_row(api: Api) -> None:
    api.apply("""
evaluators:
  - {name: fragile, scorer: test_explodes, on_fail: review}
  - {name: not_blank, scorer: not_empty}
""")
    answer = api.ingest([record("r1", "a", output="boom"), record("r2", "a", output="calm")])
    assert answer["accepted"] == 2  # ingest is not stopped by a scorer
    evals = {(e["evaluator"], e["run_key"]): e for e in api.get("/v1/evals").json()}
    bad = evals[("fragile", "r1")]
    assert bad["status"] == "error" and bad["passed"] is None and "scorer blew up" in bad["error"]
    assert evals[("fragile", "r2")]["passed"] is True
    assert evals[("not_blank", "r1")]["passed"] is True  # the other evaluator on the same step ran
    assert api.get("/v1/reviews").json() == []  # an error is not a failure: no review


def test_skipped_when_the_rule_has_nothing_to_judge(api: Api) -> None:
    api.apply("evaluators:\n  - {name: fast, scorer: max_latency_ms, params: {max_ms: 1000}}\n")
    api.ingest([record("r1", "a", started_at=None), record("r2", "a")])
    evals = {e["run_key"]: e for e in api.get("/v1/evals").json()}
    assert evals["r1"]["status"] == "skipped" and "no latency" in evals["r1"]["skip_reason"]
    assert evals["r2"]["passed"] is False and "1500 ms" in evals["r2"]["explanation"]


def test_pending_rows_left_by_a_dead_process_are_scored_on_start(settings: Settings) -> None:
    engine = get_engine(settings.resolved_database_url())
    migrate(engine)
    with session_scope(engine) as session:
        project_id = ensure_project(session=session, name="default").id or 0
        specs = parse_config("evaluators:\n  - {name: not_blank, scorer: not_empty}\n")
        apply_evaluators(session=session, project_id=project_id, specs=specs, settings=settings)
    # a process that ingested and died before scoring
    report = ingest_batch(engine=engine, project_id=project_id, items=[record("r1", "a"), record("r2", "a", output="")],
                          max_batch_records=100, max_record_bytes=10_000)  # fmt: skip
    assert len(report.pending_eval_ids) == 2
    with TestClient(create_app(settings)) as client:
        api = Api(client, make_key(settings, "default"))
        api.wait_idle()
        evals = {e["run_key"]: e for e in api.get("/v1/evals").json()}
    assert evals["r1"]["status"] == "completed" and evals["r1"]["passed"] is True
    assert evals["r2"]["status"] == "completed" and evals["r2"]["passed"] is False


def test_verdicts_link_to_run_step_and_attempt(api: Api) -> None:
    api.apply("evaluators:\n  - {name: is_obj, scorer: json_schema, params: {schema: {type: object}}}\n")
    api.ingest([record("r1", "extract", attempt=1, output="oops", status="completed"),
                record("r1", "extract", attempt=2, output={"total": 1})])  # fmt: skip
    run = api.get("/v1/runs/r1").json()
    attempts = {s["attempt"]: s for s in run["steps"]}
    assert attempts[1]["verdicts"][0]["passed"] is False and attempts[2]["verdicts"][0]["passed"] is True
    assert run["failed_evals"] == 1
    (failed,) = api.get("/v1/evals?passed=false").json()
    assert (failed["run_key"], failed["step_key"], failed["attempt"]) == ("r1", "extract", 1)
    assert failed["step_id"] == attempts[1]["id"] and failed["run_id"] == run["id"]
    assert failed["links"]["run"] == "/v1/runs/r1?source=json"
    assert api.get(failed["links"]["run"]).status_code == 200
    assert [r["run_key"] for r in api.get("/v1/runs?failed_evaluator=is_obj").json()] == ["r1"]


@register
class SlowJudge(BaseScorer):
    """Stands in for an LLM judge: slow, and counts its calls."""

    name: ClassVar[str] = "test_slow_judge"
    kind: ClassVar[Literal["rule", "statistical", "llm"]] = "llm"
    calls: ClassVar[int] = 0

    async def score(self, step: StepPublic) -> Score:
        type(self).calls += 1
        await asyncio.sleep(0.3)
        return Score(value=0.9)


def test_two_workers_given_the_same_ids_judge_each_step_once(settings: Settings) -> None:
    engine = get_engine(settings.resolved_database_url())
    migrate(engine)
    with session_scope(engine) as session:
        project_id = ensure_project(session=session, name="default").id or 0
        specs = parse_config("evaluators:\n  - {name: judge, scorer: test_slow_judge}\n")
        apply_evaluators(session=session, project_id=project_id, specs=specs, settings=settings)
    report = ingest_batch(engine=engine, project_id=project_id, items=[record(f"r{i}", "a") for i in range(10)],
                          max_batch_records=100, max_record_bytes=10_000)  # fmt: skip
    ids = report.pending_eval_ids
    SlowJudge.calls = 0
    with ThreadPoolExecutor(max_workers=2) as pool:
        reports = list(pool.map(lambda _: score_pending(engine=engine, ids=ids), range(2)))
    assert SlowJudge.calls == 10
    assert sum(r.scored for r in reports) == 10


def test_a_drain_of_many_chunks_scores_each_result_once(settings: Settings) -> None:
    """drain() streams chunks (evalsvc.pipeline.score.score_stream): on PostgreSQL a chunk's
    verdicts are stored while the next is scored. Rule chunks and judge chunks mixed, chunks of 7:
    every result is scored once, in its own row, and each failure gets its review item once."""
    from evalsvc.store.models import EvalResult, ReviewItem, table
    from evalsvc.worker import drain

    engine = get_engine(settings.resolved_database_url())
    migrate(engine)
    config = """
evaluators:
  - {name: not_blank, scorer: not_empty, target: {step: a}, on_fail: review}
  - {name: judge, scorer: test_slow_judge, target: {step: b}}
"""
    with session_scope(engine) as session:
        project_id = ensure_project(session=session, name="default").id or 0
        apply_evaluators(session=session, project_id=project_id, specs=parse_config(config), settings=settings)
    items = [record(f"r{i}", "a", output="" if i % 5 == 0 else "ok") for i in range(60)]
    items += [record(f"r{i}", "b") for i in range(0, 60, 6)]  # judge results among the rules, by id
    items.sort(key=lambda r: r["run_key"])
    report = ingest_batch(engine=engine, project_id=project_id, items=items, max_batch_records=1000,
                          max_record_bytes=10_000)  # fmt: skip
    assert len(report.pending_eval_ids) == 70
    SlowJudge.calls = 0
    done = drain(engine=engine, settings=settings.model_copy(update={"score_batch_size": 7}))
    assert (done.score.scored, done.score.failed, SlowJudge.calls) == (70, 12, 10)
    e, r = table(EvalResult), table(ReviewItem)
    with engine.connect() as conn:
        statuses = dict(conn.execute(sa.select(e.c.status, sa.func.count()).group_by(e.c.status)).all())
        reviews = conn.execute(sa.select(sa.func.count()).select_from(r)).scalar_one()
    assert statuses == {"completed": 70} and reviews == 12
    assert drain(engine=engine, settings=settings).score.scored == 0  # nothing left, nothing twice
