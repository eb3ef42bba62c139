"""Human review: a review item shows the failed evals with the step and its run; a decision with a
comment (API and CLI) dispatches the follow-up action; a reviewer's own verdict sits beside the
scorer's on the eval result."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from evalsvc.cli import app

from .conftest import Api
from .factories import record
from .test_remediation_policies import Recorder

REVIEW_YAML = """
evaluators:
  - {name: not_blank, scorer: not_empty, target: {step: reply}, on_fail: {action: review, assignee: ana}}
  - {name: is_object, scorer: json_schema, params: {schema: {type: object}}, target: {step: reply}, on_fail: review}
  - {name: total_ok, scorer: json_schema, params: {schema: {type: object}}, target: {step: extract}}
"""


@pytest.fixture(autouse=True)
def _fresh_recorder() -> None:
    Recorder.calls.clear()


def _steps(source: str = "recorder") -> list[dict[str, Any]]:
    return [
        record("r1", "extract", source=source, output={"total": 12.5}),
        record(
            "r1",
            "reply",
            source=source,
            input={"question": "total?"},
            output="",
            started_at="2026-11-01T10:00:02Z",
            ended_at="2026-11-01T10:00:03Z",
        ),
    ]


def test_review_detail_shows_the_failed_evals_the_step_and_the_run(api: Api) -> None:
    api.apply(REVIEW_YAML)
    api.ingest(_steps())
    (item,) = api.get("/v1/reviews").json()
    detail = api.get(f"/v1/reviews/{item['id']}").json()
    assert detail["status"] == "open" and detail["assignee"] == "ana"
    assert sorted(v["evaluator"] for v in detail["failed"]) == ["is_object", "not_blank"]
    assert all(v["passed"] is False and v["human_passed"] is None for v in detail["failed"])
    assert detail["step"]["step_key"] == "reply" and detail["step"]["input"] == {"question": "total?"}
    assert detail["step"]["output"] == ""
    assert set(detail["reasons"][0].removeprefix("failed: ").split(", ")) == {"is_object", "not_blank"}
    steps = {s["step_key"]: s for s in detail["run"]["steps"]}
    assert set(steps) == {"extract", "reply"}
    assert [(v["evaluator"], v["passed"]) for v in steps["extract"]["verdicts"]] == [("total_ok", True)]
    assert api.get("/v1/reviews/999999").status_code == 404


def test_approve_with_override_resumes_and_keeps_both_verdicts(api: Api, other_api: Api) -> None:
    api.apply(REVIEW_YAML)
    api.ingest(_steps())
    (item,) = api.get("/v1/reviews").json()
    assert other_api.post(f"/v1/reviews/{item['id']}/approve").status_code == 404  # another project's item
    assert other_api.get(f"/v1/reviews/{item['id']}").status_code == 404
    assert api.client.get(f"/v1/reviews/{item['id']}").status_code == 401  # no key
    r = api.post(f"/v1/reviews/{item['id']}/approve", json={"reviewer": "ana", "comment": "blank is fine here",
                                                           "human_passed": True})  # fmt: skip
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["review"]["status"] == "approved" and body["review"]["comment"] == "blank is fine here"
    api.wait_idle()
    follow = api.get("/v1/actions?kind=resume").json()
    assert [(a["id"], a["status"], a["reason"]) for a in follow] == [
        (body["follow_up_action_id"], "succeeded", f"review {item['id']} approved")]  # fmt: skip
    assert [(c["kind"], c["run"], c["step"]) for c in Recorder.calls] == [("resume", "r1", "reply")]
    # the scorer's verdict stays; the person's sits beside it
    reply = next(s for s in api.get("/v1/runs/r1").json()["steps"] if s["step_key"] == "reply")
    assert {(v["evaluator"], v["passed"], v["human_passed"]) for v in reply["verdicts"]} == {
        ("not_blank", False, True), ("is_object", False, True)}  # fmt: skip
    evals = {e["evaluator"]: e for e in api.get("/v1/evals?passed=false").json()}
    assert evals["not_blank"]["human_passed"] is True
    again = api.post(f"/v1/reviews/{item['id']}/reject", json={"comment": "changed my mind"})
    assert again.status_code == 409 and again.json()["field"] == "review_id"


def test_reject_cancels_and_no_adapter_means_no_follow_up(api: Api) -> None:
    api.apply(REVIEW_YAML)
    api.ingest([*_steps(), record("r2", "reply", output="")])  # r2 comes from "json": no orchestrator adapter
    items = {i["run_key"]: i for i in api.get("/v1/reviews").json()}
    r = api.post(f"/v1/reviews/{items['r1']['id']}/reject", json={"comment": "wrong answer", "human_passed": False})
    assert r.status_code == 200 and r.json()["follow_up_action_id"] is not None
    api.wait_idle()
    assert [(c["kind"], c["run"]) for c in Recorder.calls] == [("cancel", "r1")]
    r = api.post(f"/v1/reviews/{items['r2']['id']}/approve")
    assert r.status_code == 200 and r.json()["follow_up_action_id"] is None
    assert api.get("/v1/reviews?status=all").json()[1]["status"] == "approved"


def test_review_through_the_cli(tmp_path: Path) -> None:
    env = {"EVALSVC_HOME": str(tmp_path / "home"), "EVALSVC_DATABASE_URL": "", "EVALSVC_BROKER_URL": "",
           "EVALSVC_WEBHOOK_SECRET": "", "EVALSVC_RUNNER": "inprocess"}  # fmt: skip

    def run(*args: str, code: int = 0) -> str:
        result = CliRunner().invoke(app, list(args), env=env)
        assert result.exit_code == code, (args, result.output, result.exception)
        return result.output

    (tmp_path / "evalsvc.yaml").write_text(REVIEW_YAML)
    run("evaluators", "apply", str(tmp_path / "evalsvc.yaml"))
    (tmp_path / "runs.jsonl").write_text("\n".join(json.dumps(r) for r in _steps()) + "\n")
    run("ingest", str(tmp_path / "runs.jsonl"))
    (item,) = json.loads(run("review", "list", "--json"))
    out = run("review", "show", str(item["id"]))
    assert "failed not_blank" in out and '{"question":"total?"}' in out and "extract" in out
    shown = json.loads(run("review", "show", str(item["id"]), "--json"))
    assert shown["step"]["input"] == {"question": "total?"} and len(shown["failed"]) == 2
    out = run("review", "reject", str(item["id"]), "-m", "wrong", "--reviewer", "bo", "--failed")
    assert f"review {item['id']} rejected" in out and "follow-up action" in out
    actions = json.loads(run("actions", "list", "--run", "r1", "--json"))
    assert sorted(a["kind"] for a in actions) == ["cancel", "review"]
    cancel = next(a for a in actions if a["kind"] == "cancel")
    assert cancel["status"] == "succeeded" and cancel["reason"] == f"review {item['id']} rejected"
    assert "no run 'nope'" in run("actions", "list", "--run", "nope", code=4)
    assert "no review item 4242" in run("review", "show", "4242", code=4)
