"""The command line, as a person uses it: on the store that EVALSVC_HOME names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from evalsvc.cli import app

from .factories import record


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"EVALSVC_HOME": str(tmp_path / "home"), "EVALSVC_DATABASE_URL": "", "EVALSVC_BROKER_URL": "",
            "EVALSVC_WEBHOOK_SECRET": ""}  # fmt: skip


def run(env: dict[str, str], *args: str, code: int = 0) -> str:
    result = CliRunner().invoke(app, list(args), env=env)
    assert result.exit_code == code, (args, result.output, result.exception)
    return result.output


EVALUATORS = """
evaluators:
  - name: total_is_number
    scorer: json_schema
    target: {step: extract}
    params: {schema: {type: object, required: [total], properties: {total: {type: number}}}}
    on_fail: review
"""


def test_apply_ingest_find_and_review(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "evalsvc.yaml").write_text(EVALUATORS)
    out = run(env, "evaluators", "apply", str(tmp_path / "evalsvc.yaml"))
    assert "total_is_number" in out and "created" in out
    assert "json_schema" in run(env, "evaluators", "list")

    lines = [record("r1", "extract", output={"total": "12.50"}), record("r2", "extract"), record("r2", "reply")]
    (tmp_path / "runs.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    out = run(env, "ingest", str(tmp_path / "runs.jsonl"))
    assert "3 accepted, 0 duplicate, 0 rejected" in out and "1 failed" in out
    assert "0 accepted, 3 duplicate" in run(env, "ingest", str(tmp_path / "runs.jsonl"))

    out = run(env, "evals", "list", "--failed")
    assert "total_is_number" in out and "r1" in out and "r2" not in out
    failed = json.loads(run(env, "evals", "list", "--failed", "--json"))
    assert [(e["run_key"], e["step_key"], e["attempt"]) for e in failed] == [("r1", "extract", 1)]

    out = run(env, "runs", "show", "r1")
    assert "FAIL" in out and "total_is_number" in out and "extract" in out
    detail = json.loads(run(env, "runs", "show", "r1", "--json"))
    assert detail["steps"][0]["verdicts"][0]["passed"] is False
    assert "1" in run(env, "runs", "list", "--failed-evaluator", "total_is_number")

    (item,) = json.loads(run(env, "review", "list", "--json"))
    out = run(env, "review", "approve", str(item["id"]), "-m", "total is fine as text", "--reviewer", "ana", "--passed")
    assert f"review {item['id']} approved" in out
    assert "nothing found" in run(env, "review", "list")
    (done,) = json.loads(run(env, "review", "list", "--status", "all", "--json"))
    assert (done["status"], done["reviewer"], done["comment"], done["human_passed"]) == (
        "approved", "ana", "total is fine as text", True)  # fmt: skip
    assert "already approved" in run(env, "review", "reject", str(item["id"]), code=4)
    assert "review" in run(env, "actions", "list")


def test_ingest_reports_rejected_records_and_exits_1(env: dict[str, str], tmp_path: Path) -> None:
    body = [record("r1", "a"), {"run_key": "r1"}, record("r1", "b", attempt="two")]
    (tmp_path / "runs.json").write_text(json.dumps(body))
    out = run(env, "ingest", str(tmp_path / "runs.json"), code=1)
    assert "1 accepted, 0 duplicate, 2 rejected" in out
    assert "record 1: step_key: Field required" in out
    assert "record 2: attempt:" in out


@pytest.mark.parametrize(
    ("content", "fragment"),
    [("", "is empty"), ("[{]", "not a valid JSON array"), ('{"a": 1}\nnope\n', "line 2 is not JSON")],
)
def test_unreadable_files_are_clear_errors(env: dict[str, str], tmp_path: Path, content: str, fragment: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    result = subprocess.run([sys.executable, "-m", "evalsvc.cli", "ingest", str(path)], env={**os.environ, **env},
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 4, result.stderr
    assert fragment in result.stderr and "Traceback" not in result.stderr


def test_missing_file_and_unknown_run(env: dict[str, str], tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["ingest", str(tmp_path / "nope.json")], env=env)
    assert result.exit_code == 4
    result = CliRunner().invoke(app, ["runs", "show", "ghost"], env=env)
    assert result.exit_code == 4


def test_keys_create_prints_a_working_key_once(env: dict[str, str]) -> None:
    from fastapi.testclient import TestClient

    from evalsvc.api.main import create_app
    from evalsvc.settings import Settings

    out = run(env, "keys", "create", "--project", "acme")
    key = out.strip().splitlines()[-1]
    assert key.startswith("esk_")
    settings = Settings(home=Path(env["EVALSVC_HOME"]))
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/runs", headers={"authorization": f"Bearer {key}"}).status_code == 200
        run(env, "keys", "revoke", key[:12], "--project", "acme")
        assert client.get("/v1/runs", headers={"authorization": f"Bearer {key}"}).status_code == 401


def test_demo_runs_end_to_end_offline(env: dict[str, str], tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "evalsvc.cli", "demo", "--runs", "60"], env={**os.environ, **env},
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "simulated 60 runs" in out and "0 rejected" in out
    assert "pass rate per evaluator" in out and "invoice_extraction_schema" in out
    assert "failed evals" in out and "review queue" in out
    assert "0 bad signatures" in out and "signed deliveries verified" in out
    assert "evalsvc runs show inv-" in out
    # on_fail: retry went back to the simulated orchestrator, whose re-runs were ingested and scored
    assert "retry round 1: at evalsvc's request the orchestrator re-ran" in out
    assert "pass it on a later attempt" in out and "no orchestrator adapter" not in out
    retried = [e for e in json.loads(run(env, "evals", "list", "--project", "demo", "--json", "--limit", "10000"))
               if e["evaluator"] == "invoice_extraction_schema" and e["attempt"] > 1]  # fmt: skip
    assert retried and any(e["passed"] for e in retried)
    # the review queue, a page at a time, oldest first
    queue = json.loads(run(env, "review", "list", "--project", "demo", "--json"))
    page = json.loads(run(env, "review", "list", "--project", "demo", "--limit", "1", "--offset", "1", "--json"))
    assert len(queue) >= 2 and [r["id"] for r in page] == [queue[1]["id"]]
    assert json.loads(run(env, "review", "list", "--project", "demo", "--queue", "nope", "--json")) == []
    # the report's store is the one the other commands read
    shown = run(env, "evals", "list", "--failed", "--project", "demo", "--json")
    assert json.loads(shown)


def test_backfill_judges_steps_stored_before_the_evaluator(env: dict[str, str], tmp_path: Path) -> None:
    lines = [record("r1", "extract", output={"total": "x"}), record("r2", "extract"), record("r3", "reply")]
    (tmp_path / "runs.jsonl").write_text("\n".join(json.dumps(r) for r in lines))
    run(env, "ingest", str(tmp_path / "runs.jsonl"))
    (tmp_path / "evalsvc.yaml").write_text(EVALUATORS)
    run(env, "evaluators", "apply", str(tmp_path / "evalsvc.yaml"))
    assert "nothing found" in run(env, "evals", "list")  # applying judges nothing by itself
    assert "no active evaluator named nope" in run(env, "score", "--backfill", "--evaluator", "nope", code=4)
    out = run(env, "score", "--backfill")
    assert "scheduled 2 evals" in out and "1 passed, 1 failed" in out
    assert "scheduled 0 evals" in run(env, "score", "--backfill")  # nothing twice
    assert "scheduled 2 evals" in run(env, "score", "--rescore", "--evaluator", "total_is_number")
    evals = json.loads(run(env, "evals", "list", "--json"))
    assert sorted((e["run_key"], e["passed"]) for e in evals) == [("r1", False), ("r2", True)]
    assert len(json.loads(run(env, "review", "list", "--json"))) == 1  # the re-score did not open a second review


def test_read_commands_do_not_invent_projects(env: dict[str, str]) -> None:
    run(env, "keys", "create", "--project", "acme")
    out = run(env, "evals", "list", "--project", "acme-typo", code=4)
    assert "no project named 'acme-typo'" in out and "acme" in out
    assert "nothing found" in run(env, "runs", "list", "--project", "acme")


def test_webhook_evaluators_need_a_signing_secret(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "hook.yaml").write_text(
        "evaluators:\n  - {name: a, scorer: not_empty, on_fail: {action: webhook, url: 'https://example.com/h'}}\n"
    )
    out = run(env, "evaluators", "apply", str(tmp_path / "hook.yaml"), code=4)
    assert "evaluators.0.on_fail" in out and "EVALSVC_WEBHOOK_SECRET" in out


def test_bad_settings_name_the_variable(tmp_path: Path) -> None:
    env = {**os.environ, "EVALSVC_HOME": str(tmp_path), "EVALSVC_BROKER_URL": "http://nope"}
    result = subprocess.run([sys.executable, "-m", "evalsvc.cli", "runs", "list"], env=env, capture_output=True,
                            text=True, timeout=120)  # fmt: skip
    assert result.returncode == 4
    assert "EVALSVC_BROKER_URL: must be a redis://" in result.stderr and "Traceback" not in result.stderr
