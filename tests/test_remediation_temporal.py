"""Remediation inside Temporal, end to end: a real dev server, a real Worker in this process running
sandboxed workflows with evalsvc's helper, and a real ``evalsvc serve`` (in-process worker) whose
Temporal adapter signals, cancels and resets them.

- retry with the helper: the first extraction fails its eval, evalsvc signals ``retry``, the workflow
  runs the activity again, that run passes and the workflow completes;
- review: approval through the API resumes the waiting workflow, a rejection cancels it;
- retry without the helper: evalsvc resets the workflow to before the failed activity.
Every Action is recorded once, with the orchestrator's response.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from evalsvc.adapters import ActionContext, ActionFailed
from evalsvc.adapters import get as get_adapter
from evalsvc.client.temporal import SIGNAL, EvalsvcActivities
from evalsvc.pipeline.remediate import dispatch_action
from evalsvc.settings import Settings
from evalsvc.store.db import get_engine
from evalsvc.store.models import Action, table, utcnow

from . import temporal_server
from .temporal_workflows import (
    CALLS,
    GatedInvoiceWorkflow,
    PlainInvoiceWorkflow,
    ReviewedReplyWorkflow,
    check_stock,
    draft_refund,
    draft_reply,
    extract_garbage,
    extract_invoice,
)

temporal_address = temporal_server.temporal_address  # the shared dev server fixture

pytestmark = pytest.mark.slow

EVALUATORS = """
evaluators:
  - name: total_is_number
    scorer: json_schema
    target: {source: temporal, step: "extract_*"}
    params: {schema: {type: object, required: [total], properties: {total: {type: number}}}}
    on_fail: {action: retry, max_attempts: 3}
  - name: reply_is_polite
    scorer: regex
    target: {source: temporal, step: draft_reply}
    params: {pattern: "^(Hello|Thanks)"}
    on_fail: review
  - name: refund_is_polite
    scorer: regex
    target: {source: temporal, step: draft_refund}
    params: {pattern: "^(Hello|Thanks)"}
    on_fail: {action: review, on_reject: terminate}
  - name: stock_is_known
    scorer: regex
    target: {source: temporal, step: check_stock}
    params: {pattern: "^in stock"}
    on_fail: pause
"""


@dataclass
class Served:
    base: str
    key: str
    http: httpx.Client
    settings: Settings  # the same store and Temporal address as the served process


@pytest.fixture
def served(tmp_path: Path, temporal_address: str) -> Iterator[Served]:
    """A real `evalsvc serve` (SQLite, in-process worker) whose adapter talks to the dev server."""
    env = {**os.environ, "EVALSVC_HOME": str(tmp_path / "home"), "EVALSVC_DATABASE_URL": "", "EVALSVC_BROKER_URL": "",
           "EVALSVC_TEMPORAL_ADDRESS": temporal_address, "EVALSVC_ACTION_BACKOFF_SECONDS": "0.1"}  # fmt: skip
    key = subprocess.run([sys.executable, "-m", "evalsvc.cli", "keys", "create"], env=env, capture_output=True,
                         text=True, check=True, timeout=120).stdout.strip()  # fmt: skip
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "evalsvc.cli", "serve", "--port", str(port)], env=env,
                                stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    http = httpx.Client(base_url=base, headers={"authorization": f"Bearer {key}"}, timeout=30)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if http.get("/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        r = http.post("/v1/evaluators", content=EVALUATORS, headers={"content-type": "application/yaml"})
        assert r.status_code == 200, r.text
        yield Served(base, key, http, Settings(home=tmp_path / "home", temporal_address=temporal_address))
    finally:
        http.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def _worker(client: Client, task_queue: str, served: Served) -> Worker:
    reporter = EvalsvcActivities(served.base, api_key=served.key)
    return Worker(
        client,
        task_queue=task_queue,
        workflows=[GatedInvoiceWorkflow, ReviewedReplyWorkflow, PlainInvoiceWorkflow],
        activities=[extract_invoice, extract_garbage, draft_reply, draft_refund, check_stock, reporter.report_step],
        # the default sandbox; the test's own modules are passed through (pytest imports them its way)
        workflow_runner=SandboxedWorkflowRunner(
            restrictions=SandboxRestrictions.default.with_passthrough_modules("tests")
        ),
    )


def _run(served: Served, run_key: str) -> dict[str, Any]:
    r = served.http.get(f"/v1/runs/{run_key}", params={"source": "temporal"})
    assert r.status_code == 200, r.text
    detail: dict[str, Any] = r.json()
    return detail


def _wait(predicate: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def _redispatch_after_crash(served: Served, action_id: int) -> dict[str, Any]:
    """What a worker that died between the side effect and its record leaves behind: the action stays
    `dispatched`; once its lease has run out it is claimed and sent again, with the same request id."""
    engine = get_engine(served.settings.resolved_database_url())
    a = table(Action)
    with engine.begin() as conn:
        conn.execute(sa.update(a).where(a.c.id == action_id).values(
            status="dispatched", claimed_at=utcnow() - timedelta(seconds=served.settings.lease_seconds + 1)))  # fmt: skip
    # this test or the served process's worker wins the claim: either way it is sent once more
    outcome = dispatch_action(engine=engine, settings=served.settings, action_id=action_id)
    assert outcome.status in ("succeeded", "skipped"), outcome

    def settled() -> dict[str, Any] | None:
        rows = [x for x in served.http.get("/v1/actions", params={"limit": 1000}).json() if x["id"] == action_id]
        return rows[0] if rows and rows[0]["status"] == "succeeded" else None

    settled_action: dict[str, Any] = _wait(settled)
    return settled_action


async def _await_for(coro: Any, timeout: float = 90.0) -> Any:
    return await asyncio.wait_for(coro, timeout)


def test_failed_eval_retries_the_activity_and_the_run_completes(temporal_address: str, served: Served) -> None:
    tag = uuid.uuid4().hex[:8]
    task_queue, wid = f"remediate-{tag}", f"invoice-{tag}"

    async def scenario() -> tuple[str, dict[str, Any]]:
        client = await Client.connect(temporal_address)
        async with _worker(client, task_queue, served):
            handle = await client.start_workflow(GatedInvoiceWorkflow.run, "invoice 42", id=wid, task_queue=task_queue)
            result: dict[str, Any] = await _await_for(handle.result())
            return handle.result_run_id or "", result

    run_id, result = asyncio.run(scenario())
    assert result["invoice"]["total"] == 12.5 and CALLS[wid] == 2
    first, decision, second = result["history"]
    assert (first["state"], first["planned"], first["failed_evaluators"]) == ("failed", ["retry"], ["total_is_number"])
    assert decision["decision"]["action"] == "retry" and decision["decision"]["step_key"] == first["step_key"]
    # the run again is the next attempt of the same step, not a new step
    assert (second["state"], second["step_key"], second["attempt"]) == ("passed", first["step_key"], 2)
    assert first["attempt"] == decision["decision"]["attempt"] == decision["attempt"] == 1
    assert (first["activity_id"], second["activity_id"]) == ("evalsvc:1:1", "evalsvc:1:2")

    run = _run(served, run_id)
    assert run["attributes"]["workflow_id"] == wid and run["workflow"] == "GatedInvoiceWorkflow"
    steps = {(s["step_key"], s["attempt"]): s for s in run["steps"] if s["name"] == "extract_invoice"}
    key = first["step_key"]
    assert set(steps) == {(key, 1), (key, 2)}  # ONE step key (the one `evalsvc pull temporal` gives), 2 attempts
    assert [v["passed"] for v in steps[(key, 1)]["verdicts"]] == [False]
    assert [v["passed"] for v in steps[(key, 2)]["verdicts"]] == [True]
    assert steps[(key, 2)]["attributes"]["rerun"] == 2 and steps[(key, 2)]["output"]["total"] == 12.5
    (action,) = run["actions"]  # one action: the retry of the failed run; none for the passing one
    assert (action["kind"], action["status"], action["attempts"]) == ("retry", "succeeded", 1)
    response = action["response"]
    assert response["operation"] == "signal" and response["request_id"] == action["idempotency_key"]
    assert response["payload"]["action_key"] == action["idempotency_key"] == decision["decision"]["action_key"]
    assert (response["workflow_id"], response["run_id"]) == (wid, run_id)

    # a crash after the signal: the re-send carries the same request id, which Temporal recognises (or,
    # where the closed run refuses it, the adapter finds its signal in the history); nothing runs again
    again = _redispatch_after_crash(served, action["id"])
    assert again["attempts"] == 2 and again["response"]["request_id"] == action["idempotency_key"]

    async def signals() -> list[Any]:
        client = await Client.connect(temporal_address)
        history = await client.get_workflow_handle(wid, run_id=run_id).fetch_history()
        return [e for e in history.events if e.workflow_execution_signaled_event_attributes.signal_name == SIGNAL]

    assert len(asyncio.run(signals())) == 1 and CALLS[wid] == 2


def test_retries_stop_at_max_attempts_and_the_workflow_fails(temporal_address: str, served: Served) -> None:
    tag = uuid.uuid4().hex[:8]
    task_queue, wid = f"exhaust-{tag}", f"garbage-{tag}"

    async def scenario() -> tuple[str, WorkflowFailureError]:
        client = await Client.connect(temporal_address)
        async with _worker(client, task_queue, served):
            handle = await client.start_workflow(GatedInvoiceWorkflow.run, args=["invoice 9", "extract_garbage"],
                                                 id=wid, task_queue=task_queue)  # fmt: skip
            with pytest.raises(WorkflowFailureError) as failure:
                await _await_for(handle.result())
            return handle.result_run_id or "", failure.value

    run_id, failure = asyncio.run(scenario())
    cause = failure.cause
    assert isinstance(cause, ApplicationError) and cause.type == "EvalsvcEvalFailed" and cause.non_retryable
    assert "failed evaluation at attempt 3" in cause.message and CALLS[wid] == 3  # on_fail.max_attempts: 3

    def settled() -> dict[str, Any] | None:
        detail = _run(served, run_id)
        done = [a for a in detail["actions"] if a["status"] in ("succeeded", "skipped")]
        return detail if len(done) == 3 else None

    run = _wait(settled)
    steps = [s for s in run["steps"] if s["name"] == "extract_garbage"]
    (key,) = {s["step_key"] for s in steps}  # one step ...
    assert sorted(s["attempt"] for s in steps) == [1, 2, 3]  # ... with attempts 1..3, each judged failed
    assert all([v["passed"] for v in s["verdicts"]] == [False] for s in steps)
    attempt_of = {s["id"]: s["attempt"] for s in steps}
    actions = sorted(run["actions"], key=lambda a: attempt_of[a["step_id"]])
    # attempts 1 and 2 are retried; attempt 3 reaches the limit: evalsvc skips that retry, the helper stops
    assert [(attempt_of[a["step_id"]], a["kind"], a["status"]) for a in actions] == [
        (1, "retry", "succeeded"), (2, "retry", "succeeded"), (3, "retry", "skipped")]  # fmt: skip
    assert "retry limit reached: attempt 3 of at most 3" in actions[2]["last_error"]
    assert [a["response"]["payload"]["attempt"] for a in actions[:2]] == [1, 2]
    assert {a["response"]["payload"]["step_key"] for a in actions[:2]} == {key}
    assert [a["response"]["payload"]["max_attempts"] for a in actions[:2]] == [3, 3]  # OnFail.retry_limit()


def test_review_approval_resumes_and_rejection_cancels(temporal_address: str, served: Served) -> None:
    tag = uuid.uuid4().hex[:8]
    task_queue = f"review-{tag}"
    cases = {  # workflow id: (activity, email, decision)
        f"reply-ok-{tag}": ("draft_reply", "where is my refund?", "approve"),
        f"reply-no-{tag}": ("draft_reply", "cancel my order", "reject"),
        f"refund-no-{tag}": ("draft_refund", "refund 30 EUR", "reject"),  # on_reject: terminate
    }

    def open_reviews() -> dict[str, dict[str, Any]]:
        items = served.http.get("/v1/reviews").json()
        return {i["run_key"]: i for i in items} if len(items) == len(cases) else {}

    async def scenario() -> tuple[dict[str, str], dict[str, Any]]:
        client = await Client.connect(temporal_address)
        async with _worker(client, task_queue, served):
            handles = {wid: await client.start_workflow(ReviewedReplyWorkflow.run, args=[email, step], id=wid,
                                                        task_queue=task_queue)
                       for wid, (step, email, _) in cases.items()}  # fmt: skip
            reviews = await asyncio.to_thread(_wait, open_reviews)
            runs = {wid: h.result_run_id or "" for wid, h in handles.items()}
            for h in handles.values():  # each waits for a person now
                assert (await h.describe()).status == WorkflowExecutionStatus.RUNNING
            for wid, (_, _, decision) in cases.items():
                r = await asyncio.to_thread(served.http.post, f"/v1/reviews/{reviews[runs[wid]]['id']}/{decision}",
                                            json={"reviewer": "ana", "comment": decision})  # fmt: skip
                assert r.status_code == 200, r.text
            outcome: dict[str, Any] = {}
            for wid, h in handles.items():
                try:
                    outcome[wid] = await _await_for(h.result())
                except WorkflowFailureError as exc:
                    outcome[wid] = ((await h.describe()).status, exc.cause)
            return runs, outcome

    runs, outcome = asyncio.run(scenario())
    ok, no, refund = cases
    assert outcome[ok] == "sent: whatever. re: where is my refund?"
    assert outcome[no][0] == WorkflowExecutionStatus.CANCELED and isinstance(outcome[no][1], CancelledError)
    assert outcome[refund][0] == WorkflowExecutionStatus.TERMINATED
    assert all(CALLS[wid] == 1 for wid in cases)  # a review never re-runs the step

    def settled(run_key: str) -> list[dict[str, Any]]:
        actions: list[dict[str, Any]] = _run(served, run_key)["actions"]
        return actions if len(actions) == 2 and all(a["status"] == "succeeded" for a in actions) else []

    approved, rejected, terminated = (_wait(lambda wid=wid: settled(runs[wid])) for wid in cases)
    assert [a["kind"] for a in approved] == ["review", "resume"]
    assert [a["kind"] for a in rejected] == [a["kind"] for a in terminated] == ["review", "cancel"]
    assert approved[1]["response"]["operation"] == "signal" and approved[1]["response"]["payload"]["action"] == "resume"
    assert rejected[1]["response"] == {**rejected[1]["response"], "operation": "cancel",
                                       "request_id": rejected[1]["idempotency_key"]}  # fmt: skip
    assert terminated[1]["response"]["operation"] == "terminate"
    assert all(a["attempts"] == 1 for a in approved[1:] + rejected[1:] + terminated[1:])


def test_pause_holds_the_workflow_until_resumed(temporal_address: str, served: Served) -> None:
    tag = uuid.uuid4().hex[:8]
    task_queue, wid = f"pause-{tag}", f"stock-{tag}"

    def paused(run_key: str) -> list[dict[str, Any]]:
        r = served.http.get(f"/v1/runs/{run_key}", params={"source": "temporal"})  # 404 until the step is in
        actions: list[dict[str, Any]] = r.json()["actions"] if r.status_code == 200 else []
        return [a for a in actions if a["kind"] == "pause" and a["status"] == "succeeded"]

    async def scenario() -> tuple[str, dict[str, Any], str]:
        client = await Client.connect(temporal_address)
        async with _worker(client, task_queue, served):
            handle = await client.start_workflow(ReviewedReplyWorkflow.run, args=["paper", "check_stock"], id=wid,
                                                 task_queue=task_queue)  # fmt: skip
            run_id = handle.result_run_id or ""
            (action,) = await asyncio.to_thread(_wait, lambda: paused(run_id))
            for _ in range(300):  # the helper has seen the failed verdict and holds the step
                history = await handle.query(ReviewedReplyWorkflow.gate_history)
                if history:
                    break
                await asyncio.sleep(0.05)
            assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING
            # a repeat of evalsvc's pause signal (same action key) changes nothing; then a person resumes it
            await handle.signal(SIGNAL, {**action["response"]["payload"]})
            resume = {"action": "resume", "action_key": f"manual-{tag}", "step_key": history[0]["step_key"]}
            await handle.signal(SIGNAL, resume)
            return run_id, action, await _await_for(handle.result())

    run_id, action, result = asyncio.run(scenario())
    assert result == "sent: unknown: paper" and CALLS[wid] == 1
    assert action["response"]["operation"] == "signal" and action["response"]["payload"]["action"] == "pause"
    assert action["attempts"] == 1 and action["response"]["run_id"] == run_id


def test_retry_without_the_helper_resets_the_workflow(temporal_address: str, served: Served) -> None:
    tag = uuid.uuid4().hex[:8]
    task_queue, wid = f"reset-{tag}", f"plain-{tag}"

    async def scenario() -> tuple[str, dict[str, Any], dict[str, Any]]:
        client = await Client.connect(temporal_address)
        async with _worker(client, task_queue, served):
            handle = await client.start_workflow(PlainInvoiceWorkflow.run, "invoice 7", id=wid, task_queue=task_queue)
            run_id = handle.result_run_id or ""
            for _ in range(300):  # the activity has completed: the workflow waits for `finish`
                events = (await handle.fetch_history()).events
                if any(e.HasField("activity_task_completed_event_attributes") for e in events):
                    break
                await asyncio.sleep(0.05)
            doc = (await handle.fetch_history()).to_json_dict()
            doc.update(workflowId=wid, runId=run_id, namespace="default")
            # what `evalsvc pull temporal` would send
            r = await asyncio.to_thread(served.http.post, "/v1/ingest/temporal", json=doc)
            assert r.status_code == 200, r.text
            actions = await asyncio.to_thread(
                _wait, lambda: [a for a in _run(served, run_id)["actions"] if a["status"] in ("succeeded", "failed")]
            )
            latest = client.get_workflow_handle(wid)  # the run the reset started
            for _ in range(300):
                if (await latest.describe()).run_id != run_id and CALLS[wid] == 2:
                    break
                await asyncio.sleep(0.05)
            await latest.signal(PlainInvoiceWorkflow.finish)
            result: dict[str, Any] = await _await_for(latest.result())
            return run_id, actions[0], result

    run_id, action, result = asyncio.run(scenario())
    assert (action["kind"], action["status"]) == ("retry", "succeeded"), action
    response = action["response"]
    assert response["operation"] == "reset" and response["request_id"] == action["idempotency_key"]
    assert response["new_run_id"] and response["new_run_id"] != run_id
    assert result["total"] == 12.5 and CALLS[wid] == 2
    # a crash after the reset: the re-send sees the run was reset and does not reset it again
    again = _redispatch_after_crash(served, action["id"])
    assert again["response"]["already"] is True and again["response"]["new_run_id"] == response["new_run_id"]
    assert CALLS[wid] == 2


def _context(settings: Settings, *, kind: str, key: str, workflow_id: str, run_id: str) -> ActionContext:
    return ActionContext(
        action_id=0, kind=kind, idempotency_key=key, reason="test", project="default",
        run={"source": "temporal", "run_key": run_id, "attributes": {"workflow_id": workflow_id}},
        step={"step_key": "activity:5", "attempt": 1, "attributes": {}}, verdict={}, on_fail={}, settings=settings,
    )  # fmt: skip


def test_adapter_failures_say_whether_a_retry_can_help(temporal_address: str, tmp_path: Path) -> None:
    adapter = get_adapter("temporal")
    assert adapter is not None and sorted(adapter.kinds) == ["cancel", "pause", "resume", "retry"]
    tag = uuid.uuid4().hex[:8]
    task_queue, wid = f"errors-{tag}", f"done-{tag}"

    async def finished_run() -> str:
        client = await Client.connect(temporal_address)
        async with Worker(client, task_queue=task_queue, workflows=[PlainInvoiceWorkflow],
                          activities=[extract_invoice]):  # fmt: skip
            handle = await client.start_workflow(PlainInvoiceWorkflow.run, "x", id=wid, task_queue=task_queue)
            await handle.signal(PlainInvoiceWorkflow.finish)
            await _await_for(handle.result())
            return handle.result_run_id or ""

    run_id = asyncio.run(finished_run())
    settings = Settings(home=tmp_path / "home", temporal_address=temporal_address)
    # the run has closed and never got this action's signal: refused for good
    with pytest.raises(ActionFailed) as refused:
        adapter.perform(_context(settings, kind="resume", key=f"evalsvc-x-{tag}", workflow_id=wid, run_id=run_id))
    assert not refused.value.retryable and "NOT_FOUND" in str(refused.value)
    # a reset needs the step's reset point
    with pytest.raises(ActionFailed, match="reset_event_id") as no_point:
        adapter.perform(_context(settings, kind="retry", key=f"evalsvc-y-{tag}", workflow_id=wid, run_id=run_id))
    assert not no_point.value.retryable
    # Temporal unreachable: worth another attempt
    unreachable = settings.model_copy(update={"temporal_address": f"127.0.0.1:{temporal_server.free_ports(1)[0]}"})
    with pytest.raises(ActionFailed, match="cannot connect") as down:
        adapter.perform(_context(unreachable, kind="pause", key=f"evalsvc-z-{tag}", workflow_id=wid, run_id=run_id))
    assert down.value.retryable
