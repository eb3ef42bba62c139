"""The Temporal connector's translation, on the real histories in ``../shared/fixtures/temporal``
(table-driven), plus the edge cases of the format, and `evalsvc ingest FILE --connector temporal`."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from connectors import get as get_connector
from connectors.temporal import TemporalConnector, close_status, decode_payloads, enum_name, parse_time
from evalsvc.cli import app
from evalsvc.errors import PayloadRejected
from evalsvc.schemas import StepRecord

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "temporal"
pytestmark = pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"shared fixtures not found at {FIXTURES}")


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


# file -> workflow, run status, Temporal status, run key, workflow id, steps as
# (step_key, attempt, name, kind, status)
CASES: dict[str, dict[str, Any]] = {
    "py_replayer_complete_history.json": {
        "workflow": "SayHelloWorkflow", "run_status": "completed", "temporal": "COMPLETED",
        "run_key": "577fbf9c-bed0-4fcb-b582-3e7447adeca6", "workflow_id": None,
        "steps": [("activity:5", 1, "say_hello", "activity", "completed")],
    },
    "py_signals_timer_update_activity.json": {
        "workflow": "SignalsActivitiesTimersUpdatesTracingWorkflow", "run_status": "completed", "temporal": "COMPLETED",
        "run_key": "af6b802e-0485-4953-9625-c46e9b2243e6", "workflow_id": "wf-13b9e507-6f00-42e7-b9f3-3c07ba101ff4",
        "steps": [("activity:7", 1, "say_hello", "activity", "completed")],
    },
    "py_openai_agents_research_12_llm_activities.json": {
        "workflow": "ResearchWorkflow", "run_status": "completed", "temporal": "COMPLETED",
        "run_key": "0197c1cb-b463-748c-b871-7ae94b2add9a",
        "workflow_id": "research-workflow-73f9d702-cddc-4608-91d8-c9999dc21a77",
        "steps": [(f"activity:{i}", 1, "invoke_model_activity", "activity", "completed")
                  for i in (5, *range(11, 21), 71)],
    },
    "java_activity_retry_then_fail.json": {
        "workflow": "TestWorkflow1", "run_status": "failed", "temporal": "FAILED",
        "run_key": "abdb8767-2b5c-4b1d-bda5-c40581f9eeb5", "workflow_id": None,
        "steps": [("activity:5", 1, "HeartbeatAndThrowIO", "activity", "failed"),
                  ("activity:5", 2, "HeartbeatAndThrowIO", "activity", "failed")],
    },
    "go_signal_activity_timeout_workflow_failed.json": {
        "workflow": "RainbowStatusesWorkflow", "run_status": "failed", "temporal": "FAILED",
        "run_key": "ce42fef2-e58b-4ae1-a7ae-74aa04c3fae5", "workflow_id": None,
        "steps": [("activity:6", 1, "LongActivity", "activity", "timed_out")],
    },
    "ts_child_workflow_signal_external_timer.json": {
        "workflow": "topSecretGreeting", "run_status": "completed", "temporal": "COMPLETED",
        "run_key": "019f0463-96d0-73d0-985f-2233d58d6fdc", "workflow_id": "9ec3b30a-3b44-4779-8fb8-355adb809a95",
        "steps": [("child:5", 1, "topSecretGreetingChild", "child_workflow", "completed")],
    },
    "ui_reverse_order_terminated.json": {
        "workflow": "workflow.reset.base", "run_status": "cancelled", "temporal": "TERMINATED",
        "run_key": "16c5fbe5-f82d-43c1-acbc-18c65c449ace", "workflow_id": None,
        "steps": [("activity:7", 1, "activity.reset.base", "activity", "completed"),
                  ("activity:8", 1, "activity.reset.base", "activity", "cancelled"),
                  ("activity:9", 1, "activity.reset.base", "activity", "cancelled")],
    },
}  # fmt: skip


def test_every_fixture_has_a_case() -> None:
    assert sorted(p.name for p in FIXTURES.glob("*.json")) == sorted(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_fixture_steps(name: str) -> None:
    case = CASES[name]
    records = TemporalConnector().to_steps(load(name))
    assert [(r["step_key"], r["attempt"], r["name"], r["kind"], r["status"]) for r in records] == case["steps"]
    for r in records:
        assert r["source"] == "temporal" and r["run_key"] == case["run_key"]
        assert r["workflow"] == case["workflow"] and r["run_status"] == case["run_status"]
        assert r["run_attributes"]["temporal_status"] == case["temporal"]
        assert r["run_attributes"]["run_id"] == case["run_key"]
        assert r["run_attributes"].get("workflow_id") == case["workflow_id"]
        StepRecord.model_validate(r)  # every record is a valid step record
    assert close_status(load(name)) == case["temporal"]


def _by_key(name: str, **kw: Any) -> dict[tuple[str, int], dict[str, Any]]:
    return {(r["step_key"], r["attempt"]): r for r in TemporalConnector(**kw).to_steps(load(name))}


def test_simple_activity_payloads_and_times() -> None:
    r = _by_key("py_replayer_complete_history.json")[("activity:5", 1)]
    assert (r["input"], r["output"], r.get("error")) == ("Temporal", "Hello, Temporal!", None)
    assert r["started_at"].isoformat() == "2022-08-17T16:27:34+00:00"
    assert r["ended_at"].isoformat() == "2022-08-17T16:27:34+00:00"
    assert r["attributes"]["activity_id"] == "1" and r["attributes"]["reset_event_id"] == 4


def test_nanosecond_times_and_proto_json_enums() -> None:
    r = _by_key("py_signals_timer_update_activity.json")[("activity:7", 1)]
    assert (r["input"], r["output"]) == ("Enchi", "Hello, Enchi!")
    assert r["started_at"].isoformat() == "2024-12-30T22:38:44.855391+00:00"
    assert r["ended_at"].isoformat() == "2024-12-30T22:38:44.858633+00:00"


def test_llm_activities_payloads_usage_and_summary() -> None:
    steps = _by_key("py_openai_agents_research_12_llm_activities.json")
    first = steps[("activity:5", 1)]
    assert first["input"]["system_instructions"].startswith("You are a helpful research assistant.")
    assert first["input"]["input"][0]["role"] == "user"
    assert json.loads(first["output"]["output"][0]["content"][0]["text"])["searches"]
    assert (first["input_tokens"], first["output_tokens"]) == (156, 264)
    assert first["attributes"]["summary"].startswith("Query: Caribbean vacation spots in April")
    assert steps[("activity:71", 1)]["input"]["system_instructions"].startswith("You are a senior researcher")
    assert all(s["output"]["usage"]["total_tokens"] > 0 for s in steps.values())


def test_retry_keeps_the_previous_attempts_failure() -> None:
    steps = _by_key("java_activity_retry_then_fail.json")
    last, previous = steps[("activity:5", 2)], steps[("activity:5", 1)]
    assert last["error"]["type"] == "java.io.IOException" and last["error"]["message"] == "simulated IO problem"
    assert last["error"]["retry_state"] == "MAXIMUM_ATTEMPTS_REACHED"
    assert last["error"]["stack"].startswith("io.temporal.workflow.WorkflowTest$TestActivitiesImpl")
    assert last["attributes"]["max_attempts"] == 3 and last["started_at"].isoformat() == "2020-07-14T15:04:04+00:00"
    assert previous["error"]["message"] == "simulated IO problem" and previous["attributes"]["from_last_failure"]
    assert previous.get("started_at") is None and previous.get("ended_at") is None


def test_activity_timeout_is_timed_out_with_legacy_enums() -> None:
    r = _by_key("go_signal_activity_timeout_workflow_failed.json")[("activity:6", 1)]
    assert r["error"]["type"] == "TimeoutError" and r["error"]["timeout_type"] == "START_TO_CLOSE"
    assert r["error"]["retry_state"] == "MAXIMUM_ATTEMPTS_REACHED" and r["error"]["source"] == "Server"
    assert r["input"] is None and r["ended_at"].isoformat() == "2021-09-16T17:16:16+00:00"


def test_child_workflow_step() -> None:
    r = _by_key("ts_child_workflow_signal_external_timer.json", namespace="default")[("child:5", 1)]
    assert (r["input"], r["output"]) == ("Temporal", "Hello Temporal")
    assert r["attributes"]["child_workflow_id"] == "ec7c1204-b5cf-4882-8bb2-87b184bd202b"
    assert r["attributes"]["child_run_id"] == "019f0463-96eb-75fb-99e7-5c2a1f188a44"
    assert r["run_attributes"]["namespace"] == "default"


def test_descending_wrapper_and_steps_cut_off_by_termination() -> None:
    doc = load("ui_reverse_order_terminated.json")
    steps = _by_key("ui_reverse_order_terminated.json")
    assert steps[("activity:7", 1)]["input"] == 1 and steps[("activity:7", 1)]["output"] is None
    assert steps[("activity:8", 1)]["input"] == 30
    assert steps[("activity:8", 1)]["error"]["type"] == "WorkflowClosed"
    assert steps[("activity:7", 1)]["run_attributes"]["parent_workflow_id"] == "temporal.fixture.terminated.workflow.id"
    # the same history in ascending order, bare, gives the same records
    ascending = {"events": list(reversed(doc["history"]["events"]))}
    assert TemporalConnector().to_steps(ascending) == TemporalConnector().to_steps(doc)


def test_running_history_has_running_steps() -> None:
    events = load("py_replayer_complete_history.json")["events"]
    cut = [e for e in events if int(e["eventId"]) <= 5]  # the activity is scheduled, nothing more
    [r] = TemporalConnector(workflow_id="wf-1", run_id="run-1").to_steps({"events": cut})
    assert (r["status"], r["run_status"], r["run_key"], r["attempt"]) == ("running", "running", "run-1", 1)
    assert r["run_attributes"]["workflow_id"] == "wf-1" and r["run_attributes"]["temporal_status"] == "RUNNING"
    # a pending activity (as `temporal workflow describe` shows it) gives its attempt and last failure
    pending = [{"activityId": "1", "state": "PENDING_ACTIVITY_STATE_STARTED", "attempt": 3,
                "lastStartedTime": "2022-08-17T16:27:40Z", "lastFailure": {"message": "boom"}}]  # fmt: skip
    recs = TemporalConnector().to_steps({"events": cut, "runId": "run-1", "pendingActivities": pending})
    assert [(r["attempt"], r["status"]) for r in recs] == [(2, "failed"), (3, "running")]
    assert recs[1]["started_at"].isoformat() == "2022-08-17T16:27:40+00:00" and recs[0]["error"]["message"] == "boom"


def test_list_of_documents_and_ids_from_the_envelope() -> None:
    docs = [
        {**load("py_replayer_complete_history.json"), "workflowId": "hello-1", "namespace": "prod"},
        load("go_signal_activity_timeout_workflow_failed.json"),
    ]
    records = get_connector("temporal").to_steps(docs)
    assert [r["workflow"] for r in records] == ["SayHelloWorkflow", "RainbowStatusesWorkflow"]
    assert records[0]["run_attributes"]["workflow_id"] == "hello-1"
    assert records[0]["run_attributes"]["namespace"] == "prod"


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"nope": 1}, "events"),
        ({"events": "x"}, "events"),
        ({"events": [{"eventType": "ActivityTaskScheduled"}]}, "events.0.eventId"),
        (
            {"events": [{"eventId": "1", "eventTime": "yesterday", "eventType": "WorkflowExecutionStarted"}]},
            "eventTime",
        ),
        ({"events": [{"eventId": "1", "eventType": "WorkflowExecutionStarted"}]}, "runId"),
        ([1, 2], "events"),
    ],
)
def test_malformed_histories_are_rejected_naming_the_field(payload: Any, field: str) -> None:
    with pytest.raises(PayloadRejected) as exc:
        TemporalConnector().to_steps(payload)
    assert exc.value.field == field


def _payload(encoding: str, data: bytes | None) -> dict[str, Any]:
    p: dict[str, Any] = {"metadata": {"encoding": base64.b64encode(encoding.encode()).decode()}}
    if data is not None:
        p["data"] = base64.b64encode(data).decode()
    return p


@pytest.mark.parametrize(
    ("payloads", "expected"),
    [
        ([_payload("json/plain", b'{"a": [1, 2]}')], {"a": [1, 2]}),
        ([_payload("binary/null", None)], None),
        ([_payload("binary/plain", b"hello")], "hello"),
        ([_payload("json/plain", b"1"), _payload("json/plain", b'"x"')], [1, "x"]),
        ([], None),
        ([{"metadata": {"encoding": "json/plain"}, "data": base64.b64encode(b"true").decode()}], True),
    ],
)
def test_payload_decoding(payloads: list[Any], expected: Any) -> None:
    assert decode_payloads({"payloads": payloads}) == expected


def test_opaque_payloads_stay_encoded() -> None:
    value = decode_payloads({"payloads": [_payload("binary/encrypted", b"\x00\x01secret")]})
    assert value["encoding"] == "binary/encrypted" and base64.b64decode(value["data"]) == b"\x00\x01secret"


@pytest.mark.parametrize(
    ("value", "prefix", "expected"),
    [
        ("RETRY_STATE_MAXIMUM_ATTEMPTS_REACHED", "RETRY_STATE_", "MAXIMUM_ATTEMPTS_REACHED"),
        ("MaximumAttemptsReached", "RETRY_STATE_", "MAXIMUM_ATTEMPTS_REACHED"),
        ("ActivityTaskTimedOut", "EVENT_TYPE_", "ACTIVITY_TASK_TIMED_OUT"),
        ("EVENT_TYPE_MARKER_RECORDED", "EVENT_TYPE_", "MARKER_RECORDED"),
        ("StartToClose", "TIMEOUT_TYPE_", "START_TO_CLOSE"),
        (None, "", None),
    ],
)
def test_enum_dialects(value: Any, prefix: str, expected: Any) -> None:
    assert enum_name(value, prefix) == expected


def test_times() -> None:
    assert parse_time("2022-07-01T20:14:51.002030504Z").isoformat() == "2022-07-01T20:14:51.002030+00:00"  # type: ignore[union-attr]
    assert parse_time({"seconds": "1795320513", "nanos": 419714439}).isoformat() == "2026-11-22T04:08:33.419714+00:00"  # type: ignore[union-attr]
    assert parse_time("1970-01-01T00:00:00Z") is None and parse_time(None) is None


def test_cli_ingest_every_fixture(tmp_path: Path) -> None:
    env = {"EVALSVC_HOME": str(tmp_path / "home"), "EVALSVC_DATABASE_URL": "", "EVALSVC_BROKER_URL": ""}
    runner = CliRunner()
    for name, case in sorted(CASES.items()):
        result = runner.invoke(app, ["ingest", str(FIXTURES / name), "--connector", "temporal"], env=env)
        assert result.exit_code == 0, result.output
        assert f"{len(case['steps'])} accepted, 0 duplicate, 0 rejected" in result.output
        again = runner.invoke(app, ["ingest", str(FIXTURES / name), "--connector", "temporal"], env=env)
        assert f"0 accepted, {len(case['steps'])} duplicate, 0 rejected" in again.output
    shown = runner.invoke(app, ["runs", "show", CASES["java_activity_retry_then_fail.json"]["run_key"], "--json"],
                          env=env)  # fmt: skip
    run = json.loads(shown.output)
    assert run["workflow"] == "TestWorkflow1" and run["status"] == "failed"
    assert sorted((s["step_key"], s["attempt"], s["status"]) for s in run["steps"]) == [
        ("activity:5", 1, "failed"), ("activity:5", 2, "failed")]  # fmt: skip
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"events": [{"eventType": "WorkflowExecutionStarted"}]}))
    result = runner.invoke(app, ["ingest", str(bad), "--connector", "temporal"], env=env)
    assert result.exit_code == 4 and "eventId" in result.output


def test_cursor_state_round_trip(engine: Any) -> None:
    """connector_state on both stores: upsert, read by key and by prefix, delete with None."""
    from evalsvc.pipeline.cursors import load_prefix, load_states, save_states
    from evalsvc.pipeline.projects import ensure_project
    from evalsvc.store.db import write_session

    with write_session(engine) as s:
        pid = ensure_project(session=s, name="cursors").id or 0
        other = ensure_project(session=s, name="other").id or 0
        save_states(session=s, project_id=pid, connector="temporal",
                    values={"open:ns/r1": {"events": 5}, "open:ns/r2": {"events": 7}, "open:n_s/r3": {"events": 1},
                            "run:ns/r0": {"closed": True}})  # fmt: skip
        save_states(session=s, project_id=other, connector="temporal", values={"open:ns/r9": {"events": 1}})
    with write_session(engine) as s:
        save_states(
            session=s,
            project_id=pid,
            connector="temporal",
            values={"open:ns/r1": None, "run:ns/r1": {"closed": True, "events": 9}, "open:ns/r2": {"events": 8}},
        )
    with write_session(engine) as s:
        assert load_prefix(session=s, project_id=pid, connector="temporal", prefix="open:ns/") == {
            "open:ns/r2": {"events": 8}}  # fmt: skip
        got = load_states(session=s, project_id=pid, connector="temporal", keys=["run:ns/r1", "run:ns/r0", "run:x"])
        assert got == {"run:ns/r1": {"closed": True, "events": 9}, "run:ns/r0": {"closed": True}}
        assert load_states(session=s, project_id=pid, connector="celery", keys=["run:ns/r1"]) == {}


def test_supersede_closes_attempts_seen_running() -> None:
    from connectors.temporal_pull import supersede

    events = load("java_activity_retry_then_fail.json")["events"]
    records = TemporalConnector(run_id="r-1").to_steps({"events": events})  # attempts 1 (lastFailure) and 2
    # an earlier pull stored attempt 1 as running: the history explains it, nothing to add
    assert supersede(records, {"activity:5": 1}) == []
    # attempt 2 is the one that ran last; an attempt stored as running at 2 or later is not superseded
    assert supersede(records, {"activity:5": 2}) == []
    # a history whose last attempt is 4 supersedes an attempt 1 seen running (3 is lastFailure's)
    later = [{**r, "attempt": r["attempt"] + 2} for r in records]
    [closed] = supersede(later, {"activity:5": 1, "activity:99": 1})
    assert (closed["step_key"], closed["attempt"], closed["status"]) == ("activity:5", 1, "failed")
    assert closed["error"]["type"] == "AttemptSuperseded" and closed["run_key"] == "r-1"
    StepRecord.model_validate(closed)


def test_http_ingest_histories_with_verdicts(api: Any) -> None:
    """POST /v1/ingest/temporal on both stores: a list of histories, scored, and a bad one named."""
    api.apply(
        "evaluators:\n  - name: said_hello\n    scorer: regex\n"
        "    target: {source: temporal, step: say_hello}\n    params: {pattern: '^Hello, '}\n"
    )
    docs = [load("py_replayer_complete_history.json"), load("java_activity_retry_then_fail.json")]
    r = api.post("/v1/ingest/temporal", json=docs)
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 3
    api.wait_idle()
    run = api.get("/v1/runs/577fbf9c-bed0-4fcb-b582-3e7447adeca6").json()
    assert run["workflow"] == "SayHelloWorkflow" and run["status"] == "completed"
    [step] = run["steps"]
    assert (step["step_key"], step["output"]) == ("activity:5", "Hello, Temporal!")
    assert [(v["evaluator"], v["passed"]) for v in step["verdicts"]] == [("said_hello", True)]
    assert api.post("/v1/ingest/temporal", json=docs).json()["duplicate"] == 3
    bad = api.post("/v1/ingest/temporal", json={"history": {"events": [{"eventType": "ActivityTaskScheduled"}]}})
    assert bad.status_code == 422 and bad.json()["field"] == "events.0.eventId", bad.text


def _event(event_id: int, kind: str, **attrs: Any) -> dict[str, Any]:
    name = kind[0].lower() + kind[1:]
    return {"eventId": str(event_id), "eventTime": f"2026-01-01T00:00:{event_id:02d}Z", "eventType": kind,
            f"{name}EventAttributes": attrs}  # fmt: skip


def _json(value: Any) -> dict[str, Any]:
    enc = base64.b64encode(b"json/plain").decode()
    return {
        "payloads": [{"metadata": {"encoding": enc}, "data": base64.b64encode(json.dumps(value).encode()).decode()}]
    }


def _run_of(event_id: int, activity_id: str, attempt: int, result: Any | None) -> list[dict[str, Any]]:
    """An activity scheduled at ``event_id``, started at ``attempt``; completed with ``result`` (None: open)."""
    failure = {"message": "429", "applicationFailureInfo": {"type": "RateLimitError"}} if attempt > 1 else None
    events = [
        _event(event_id, "ActivityTaskScheduled", activityId=activity_id, activityType={"name": "extract"},
               workflowTaskCompletedEventId=str(event_id - 1)),
        _event(event_id + 1, "ActivityTaskStarted", scheduledEventId=str(event_id), attempt=attempt,
               **({"lastFailure": failure} if failure else {})),
    ]  # fmt: skip
    if result is None:
        return events[:1]
    return [
        *events,
        _event(event_id + 2, "ActivityTaskCompleted", scheduledEventId=str(event_id), result=_json(result)),
    ]


def test_helper_reruns_are_attempts_of_one_step() -> None:
    """The runs of one step of evalsvc's workflow helper (activity ids ``evalsvc:<step>:<run>``) share the
    first run's step key; attempts go on across runs, Temporal's own retries included."""
    started = _event(1, "WorkflowExecutionStarted", workflowType={"name": "Gated"}, originalExecutionRunId="r-1")
    history = [
        started,
        *_run_of(5, "evalsvc:1:1", 2, {"total": "x"}),  # run 1 took 2 Temporal attempts: attempts 1-2
        *_run_of(11, "evalsvc:1:2", 1, {"total": 1}),  # run 2: attempt 3
        *_run_of(17, "plain-id", 1, {"ok": True}),  # not the helper's: its own key, as always
        *_run_of(23, "evalsvc:2:1", 1, {"total": 2}),  # the helper's next step: a key of its own
        *_run_of(29, "evalsvc:2:2", 0, None),  # its run 2, waiting for a worker
    ]
    pending = [{"activityId": "evalsvc:2:2", "state": "PENDING_ACTIVITY_STATE_SCHEDULED", "attempt": 2,
                "lastFailure": {"message": "boom"}}]  # fmt: skip
    records = TemporalConnector().to_steps({"events": history, "pendingActivities": pending})
    got = [(r["step_key"], r["attempt"], r["status"], r["attributes"].get("rerun"),
            r["attributes"].get("temporal_attempt"), r["attributes"]["event_id"]) for r in records]  # fmt: skip
    assert got == [
        ("activity:5", 1, "failed", 1, 1, 5),  # the failure Temporal kept of run 1's first attempt
        ("activity:5", 2, "completed", 1, 2, 5),
        ("activity:5", 3, "completed", 2, 1, 11),
        ("activity:17", 1, "completed", None, None, 17),
        ("activity:23", 1, "completed", 1, 1, 23),
        ("activity:23", 2, "failed", 2, 1, 29),  # pending run 2: its Temporal attempt 2 goes on from 1
        ("activity:23", 3, "scheduled", 2, 2, 29),
    ]
    assert records[2]["output"] == {"total": 1} and records[2]["attributes"]["reset_event_id"] == 10
    assert records[0]["error"]["type"] == "RateLimitError"
    # a shorter history (as the helper posts it after run 1) gives run 1 the same key and attempts
    early = TemporalConnector().to_steps({"events": history[:4]})
    assert [(r["step_key"], r["attempt"]) for r in early] == [("activity:5", 1), ("activity:5", 2)]
    assert all(StepRecord.model_validate(r) for r in records)
