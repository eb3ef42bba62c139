"""Run-level evaluators (issue 3, point 6): judged once per final run, through the API and the CLI,
on both stores; a late record refreshes the run's verdict instead of adding one."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from evalsvc.api.main import create_app
from evalsvc.cli import app
from evalsvc.pipeline.run_evals import schedule_final_runs
from evalsvc.schemas import RUN_STEP_KEY, EvaluatorSpec
from evalsvc.settings import Settings
from evalsvc.store.db import get_engine
from evalsvc.worker.celery_app import sweep
from evalsvc.worker.runner import CeleryRunner

from .conftest import Api, make_key
from .factories import record
from .test_celery_runner import _drop_queue, celery_settings, queued, start_worker, wait_until  # noqa: F401

EVALUATORS = """
evaluators:
  - {name: has_output, scorer: not_empty}
  - name: clean_run
    scorer: expression
    target: {level: run}
    params: {expression: "status == 'completed' and attributes.counts.retries == 0 and attributes.counts.failed == 0"}
    on_fail: review
"""


def _evals(api: Api, evaluator: str) -> list[dict[str, Any]]:
    return [e for e in api.get("/v1/evals").json() if e["evaluator"] == evaluator]


def _run_step(api: Api, run_key: str) -> dict[str, Any] | None:
    steps = [s for s in api.get(f"/v1/runs/{run_key}").json()["steps"] if s["step_key"] == RUN_STEP_KEY]
    assert len(steps) <= 1
    return steps[0] if steps else None


def test_a_run_is_judged_once_when_final_and_again_after_a_late_retry(api: Api) -> None:
    api.apply(EVALUATORS)
    api.ingest([record("r1", "extract"), record("r1", "reply", status="running", ended_at=None)])
    assert [e["step_key"] for e in _evals(api, "has_output")] == ["extract"]
    assert _evals(api, "clean_run") == []  # the run is still running: no run step, no verdict
    assert _run_step(api, "r1") is None

    api.ingest([record("r1", "reply", output="Total is 12.50 EUR", cost_usd=0.25)])
    run = api.get("/v1/runs/r1").json()
    assert run["status"] == "completed"
    (verdict,) = _evals(api, "clean_run")
    assert verdict["passed"] is True and verdict["status"] == "completed"
    assert (verdict["run_key"], verdict["step_key"], verdict["run_id"]) == ("r1", RUN_STEP_KEY, run["id"])
    step = _run_step(api, "r1")
    assert step is not None and step["kind"] == "run" and step["name"] == "invoice-agent"
    assert step["input"] == {"text": "Invoice from ACME, total 12.50 EUR"} and step["output"] == "Total is 12.50 EUR"
    counts = step["attributes"]["counts"]
    assert counts == {"steps": 2, "attempts": 2, "retries": 0, "failed": 0}
    assert [s["step_key"] for s in step["attributes"]["steps"]] == ["extract", "reply"]
    assert step["attributes"]["cost_usd"] == 0.25
    assert [v["evaluator"] for v in step["verdicts"]] == ["clean_run"]
    assert api.get("/v1/reviews").json() == []

    # a late retry of a step: the run step is rewritten and judged again, not duplicated
    api.ingest([record("r1", "extract", attempt=2, output={"total": 12.5})])
    (again,) = _evals(api, "clean_run")
    assert again["id"] == verdict["id"] and again["passed"] is False
    step = _run_step(api, "r1")
    assert step is not None and step["attributes"]["counts"]["retries"] == 1
    assert len(_evals(api, "has_output")) == 3  # the earlier attempt keeps its own verdict
    (item,) = api.get("/v1/reviews").json()  # on_fail: review
    assert item["evaluator"] == "clean_run"

    # nothing new: another pass changes nothing
    api.ingest([record("r9", "extract", status="running", ended_at=None)])
    assert [e["id"] for e in _evals(api, "clean_run")] == [verdict["id"]]


def test_a_retry_that_succeeds_turns_a_failed_run_completed(api: Api) -> None:
    api.apply(EVALUATORS)
    api.ingest([record("r2", "extract", status="failed", output=None, error={"message": "timeout"})])
    assert api.get("/v1/runs/r2").json()["status"] == "failed"
    (verdict,) = _evals(api, "clean_run")
    assert verdict["passed"] is False
    step = _run_step(api, "r2")
    assert step is not None and step["status"] == "failed" and step["attributes"]["counts"]["failed"] == 1

    api.ingest([record("r2", "extract", attempt=2)])
    # the old run step (failed) does not keep the run failed
    assert api.get("/v1/runs/r2").json()["status"] == "completed"
    step = _run_step(api, "r2")
    assert step is not None and step["status"] == "completed"
    assert step["attributes"]["counts"] == {"steps": 1, "attempts": 2, "retries": 1, "failed": 0}
    (again,) = _evals(api, "clean_run")
    assert again["id"] == verdict["id"] and again["status"] == "completed" and again["passed"] is False


def test_run_level_evaluators_target_runs_only(api: Api) -> None:
    api.apply("""
evaluators:
  - {name: step_check, scorer: not_empty}
  - {name: failed_runs, scorer: not_empty, target: {level: run, status: failed}}
""")
    api.ingest([record("ok", "a"), record("bad", "a", status="failed")])
    assert sorted(e["run_key"] for e in _evals(api, "step_check")) == ["bad", "ok"]  # run steps are not steps
    assert [(e["run_key"], e["step_key"]) for e in _evals(api, "failed_runs")] == [("bad", RUN_STEP_KEY)]


def test_step_level_versions_are_unchanged_by_the_level_option() -> None:
    d = {"name": "a", "scorer": "expression", "params": {"expression": "true"}, "target": {"step": "x*"},
         "on_fail": "review"}  # fmt: skip
    plain = EvaluatorSpec.model_validate(d)
    explicit = EvaluatorSpec.model_validate({**d, "target": {"step": "x*", "level": "step"}})
    run = EvaluatorSpec.model_validate({**d, "target": {"step": "x*", "level": "run"}})
    assert plain.version() == explicit.version() == "b318b2fa2c94"  # the version before run levels existed
    assert run.version() != plain.version()


def test_cli_ingest_judges_the_run(tmp_path: Path) -> None:
    env = {"EVALSVC_HOME": str(tmp_path / "home"), "EVALSVC_DATABASE_URL": "", "EVALSVC_BROKER_URL": "",
           "EVALSVC_WEBHOOK_SECRET": ""}  # fmt: skip
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(app, list(args), env=env)
        assert result.exit_code == 0, (args, result.output, result.exception)
        return result.output

    (tmp_path / "evalsvc.yaml").write_text(EVALUATORS)
    run("evaluators", "apply", str(tmp_path / "evalsvc.yaml"))
    lines = [record("r1", "extract"), record("r1", "reply", status="failed")]
    (tmp_path / "runs.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    run("ingest", str(tmp_path / "runs.jsonl"))
    failed = json.loads(run("evals", "list", "--failed", "--json"))
    assert [(e["evaluator"], e["run_key"], e["step_key"]) for e in failed] == [("clean_run", "r1", RUN_STEP_KEY)]


def test_retry_is_refused_for_a_run_level_evaluator(api: Api) -> None:
    r = api.post("/v1/evaluators", content="evaluators:\n  - {name: x, scorer: not_empty, target: {level: run}, "
                 "on_fail: retry}\n", headers={"content-type": "application/yaml"})  # fmt: skip
    assert r.status_code in (400, 422) and "run-level" in r.text, r.text


def test_old_runs_are_left_alone(api: Api) -> None:
    api.ingest([record("old", "a")])
    api.apply(EVALUATORS)
    api.ingest([record("new", "a")])
    assert [e["run_key"] for e in _evals(api, "clean_run")] == ["new"]
    assert _run_step(api, "old") is None


@pytest.mark.parametrize("settings", ["postgres"], indirect=True)
def test_celery_sweep_sends_run_level_work_to_the_workers(settings: Settings, request: pytest.FixtureRequest) -> None:
    settings = request.getfixturevalue("celery_settings")  # the store of ``settings``, with the Celery runner
    with TestClient(create_app(settings)) as client:
        a = Api(client, make_key(settings, "default"))
        a.apply(EVALUATORS)
        # no worker yet: the step task waits, and so does the look for final runs that ingest
        # sent because the project has a run-level evaluator (no waiting for the 30 s sweep)
        a.ingest([record("r1", "extract"), record("r1", "reply")])
        assert queued() == 2 and _evals(a, "clean_run") == []
        runner = CeleryRunner(settings=settings)
        # the periodic sweep would send the new run-level result too, even while other tasks wait
        # (a result scored twice is claimed once: tests/test_exactly_once.py)
        assert sweep(settings, runner=runner, periodic=True) == (1, 0)
        assert queued() == 3
        runner.app.close()
        worker = request.getfixturevalue("start_worker")()

        def scored() -> list[dict[str, Any]] | None:
            rows = a.get("/v1/evals").json()
            return rows if len(rows) == 3 and all(e["status"] == "completed" for e in rows) else None

        rows = wait_until(scored, what="3 eval results to be scored", worker=worker)
        (verdict,) = [e for e in rows if e["evaluator"] == "clean_run"]
        assert verdict["passed"] is True and verdict["step_key"] == RUN_STEP_KEY


def test_the_run_step_key_is_reserved(api: Api) -> None:
    answer = api.ingest([record("r1", RUN_STEP_KEY), record("r1", "a")], expect=207)
    assert answer["accepted"] == 1
    assert answer["items"][0]["field"] == "step_key" and "reserved" in answer["items"][0]["reason"]


def test_a_run_changed_in_nothing_judged_is_not_judged_again(api: Api, settings: Settings) -> None:
    api.apply(EVALUATORS)
    api.ingest([record("r4", "extract", status="failed", output=None)])
    (verdict,) = _evals(api, "clean_run")
    before = _run_step(api, "r4")
    assert before is not None
    engine = get_engine(settings.resolved_database_url())
    later = datetime.now(UTC) + timedelta(seconds=1)
    with engine.begin() as conn:  # what a batch that changes nothing the run step shows does to the run
        conn.execute(sa.text("UPDATE run SET updated_at = :t WHERE run_key = 'r4'"), {"t": later})
    assert schedule_final_runs(engine=engine, full=True) == []  # refreshed, not set back to pending
    step = _run_step(api, "r4")
    assert step is not None and step["status"] == "failed"
    assert step["attributes"]["run_updated_at"] > before["attributes"]["run_updated_at"]  # the step was refreshed
    assert api.get("/v1/runs/r4").json()["status"] == "failed"
    (again,) = _evals(api, "clean_run")
    assert again == verdict


def test_run_steps_stay_out_of_ingest_counts_and_step_baselines(api: Api, settings: Settings) -> None:
    """A run step is evalsvc's own row, not an ingested record: /metrics does not count it, and a
    drift baseline takes it only when its target asks for kind ``run``."""
    from prometheus_client.parser import text_string_to_metric_families

    from evalsvc.pipeline.baselines import BaselineTarget, HistoryWindow, select_steps

    api.apply(EVALUATORS)
    api.ingest([record("r5", "extract"), record("r5", "reply", output="ok")])
    assert _run_step(api, "r5") is not None
    samples = {(s.name, s.labels.get("project")): s.value
               for f in text_string_to_metric_families(api.client.get("/metrics").text) for s in f.samples}  # fmt: skip
    assert samples[("evalsvc_records_ingested_total", "default")] == 2

    engine = get_engine(settings.resolved_database_url())
    with engine.connect() as conn:
        pid = conn.execute(sa.text("SELECT id FROM project WHERE name = 'default'")).scalar_one()

    def keys(**target: str) -> list[str]:
        steps, _ = select_steps(engine=engine, project_id=pid, target=BaselineTarget(**target),
                                window=HistoryWindow(), limit=100, seed=1)  # fmt: skip
        return sorted(s.step_key for s in steps)

    assert keys(workflow="invoice-agent") == ["extract", "reply"]
    assert keys(kind="run") == [RUN_STEP_KEY]


@pytest.mark.parametrize("settings", ["postgres"], indirect=True)
def test_with_celery_a_final_run_is_judged_without_waiting_for_the_sweep(
    settings: Settings, request: pytest.FixtureRequest
) -> None:
    """Ingest hands the look for final runs to the workers at once (the evalsvc.final_runs task)
    instead of leaving it to the workers' sweep, which runs at start and then every 30 s."""
    settings = request.getfixturevalue("celery_settings")
    with TestClient(create_app(settings)) as client:
        a = Api(client, make_key(settings, "default"))
        a.apply(EVALUATORS)
        worker = request.getfixturevalue("start_worker")()
        # (its start-up sweep may still see the run; the task in the log is what shows the hand-off)
        wait_until(lambda: " ready." in worker.log.read_text(), what="the worker to be ready", worker=worker)
        a.ingest([record("r7", "extract"), record("r7", "reply")])

        def judged() -> list[dict[str, Any]] | None:
            rows = [e for e in a.get("/v1/evals").json() if e["evaluator"] == "clean_run"]
            return rows if rows and rows[0]["status"] == "completed" else None

        (verdict,) = wait_until(judged, what="the run-level verdict", worker=worker)
        assert verdict["run_key"] == "r7" and verdict["step_key"] == RUN_STEP_KEY and verdict["passed"] is True
        assert "Task evalsvc.final_runs[" in worker.log.read_text()
