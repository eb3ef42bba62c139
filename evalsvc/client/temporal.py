"""Temporal workflow helper: a step waits for evalsvc's verdict before the workflow goes on.

In the workflow (sandbox-safe: this module imports only ``temporalio`` and the standard library)::

    from evalsvc.client.temporal import VerdictGate

    @workflow.defn
    class InvoiceWorkflow:
        @workflow.run
        async def run(self, document: str) -> dict:
            gate = VerdictGate()          # handles the evalsvc_verdict signal, marks the run's memo
            return await gate.execute_activity(extract_invoice, document,
                                               start_to_close_timeout=timedelta(seconds=30))

and on the worker, beside your activities, the one that reports a step to evalsvc::

    reporter = EvalsvcActivities("http://127.0.0.1:8000", api_key="esk_...")
    Worker(client, task_queue="invoices", workflows=[InvoiceWorkflow],
           activities=[extract_invoice, reporter.report_step])

``execute_activity`` runs the activity (activity id ``evalsvc:<step number>:<run>``), then the
``evalsvc_report_step`` activity: it fetches this run's history, posts it to evalsvc's
``/v1/ingest/temporal`` (so the step gets exactly the keys ``evalsvc pull temporal`` gives it: run
key = run id, step key = ``activity:<scheduledEventId of the step's first run>``, and each run
again is the next attempt of that step) and long-polls the verdict of that attempt. Passed: the
result is returned. Failed with a remediation planned: the gate waits for evalsvc's
``evalsvc_verdict`` signal for that attempt and runs the activity again (``retry``, until the
attempts reach ``max_attempts`` or the evaluator's ``on_fail`` limit), waits until resumed
(``pause``; a step under ``review`` waits the same way for the reviewer's approval, and a rejection
cancels the workflow), or goes on (``resume``). Signals are deduplicated by their action key.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any, Literal

from temporalio import activity, workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

__all__ = ["HELPER_MEMO", "REPORT_ACTIVITY", "SIGNAL", "EvalsvcActivities", "VerdictGate"]

SIGNAL = "evalsvc_verdict"
HELPER_MEMO = "evalsvc_helper"
REPORT_ACTIVITY = "evalsvc_report_step"
_IN_BAND = frozenset({"retry", "pause", "review"})


class VerdictGate:
    """Per-workflow state of the helper; create one at the start of the workflow's run method."""

    def __init__(
        self,
        *,
        verdict_timeout: timedelta = timedelta(seconds=60),
        on_timeout: Literal["proceed", "fail"] = "proceed",
        decision_timeout: timedelta | None = None,
        report_task_queue: str | None = None,
    ) -> None:
        """``verdict_timeout``: how long a step waits for its verdict (then ``on_timeout``);
        ``decision_timeout``: how long a failed step waits for evalsvc's signal (None: as long as it
        takes, e.g. a person's review)."""
        self.verdict_timeout, self.on_timeout = verdict_timeout, on_timeout
        self.decision_timeout, self.report_task_queue = decision_timeout, report_task_queue
        self.signals: dict[str, list[dict[str, Any]]] = {}
        self.seen: set[str] = set()
        self.history: list[dict[str, Any]] = []  # every verdict and decision, for queries and tests
        self._seq = 0
        workflow.set_signal_handler(SIGNAL, self._on_signal)
        workflow.upsert_memo({HELPER_MEMO: True})

    def _on_signal(self, payload: dict[str, Any]) -> None:
        key = str(payload.get("action_key") or f"{payload.get('step_key')}/{payload.get('action')}")
        if key in self.seen:  # a re-sent action: already handled
            return
        self.seen.add(key)
        self.signals.setdefault(str(payload.get("step_key") or ""), []).append(payload)

    async def _next_signal(self, step_key: str, attempt: int) -> dict[str, Any]:
        """The next signal for this attempt of the step (or naming no attempt); older attempts' are dropped."""

        def current() -> bool:
            queue = self.signals.get(step_key) or []
            while queue and isinstance(queue[0].get("attempt"), int) and queue[0]["attempt"] < attempt:
                queue.pop(0)  # meant for an attempt that has been retried already
            return bool(queue)

        try:
            await workflow.wait_condition(current, timeout=self.decision_timeout)
        except TimeoutError:
            raise ApplicationError(f"no decision from evalsvc on step {step_key} in time",
                                   type="EvalsvcDecisionTimeout", non_retryable=True) from None  # fmt: skip
        return self.signals[step_key].pop(0)

    async def execute_activity(
        self, activity_fn: Callable[..., Any] | str, *args: Any, max_attempts: int | None = None, **options: Any
    ) -> Any:
        """Run ``activity_fn(*args)`` (``options`` as for ``workflow.execute_activity``) until evalsvc
        passes it, it is resumed, or its attempts reach the limit: ``max_attempts`` if given, and the
        evaluator's ``on_fail`` limit (``max_attempts`` / ``max_retries + 1``), whichever is lower. Then
        it raises ``ApplicationError`` type ``EvalsvcEvalFailed``.

        Every run of the activity gets the activity id ``evalsvc:<step number>:<run>``, so evalsvc
        records the runs as attempts of one step (``activity:<scheduledEventId of the first run>``),
        numbered on across runs: Temporal's own retries count too (a first run that took 2 attempts
        is attempts 1-2, the next run attempt 3). ``max_attempts`` counts these same attempts.
        """
        self._seq += 1
        run = 0
        while True:
            run += 1
            activity_id = f"evalsvc:{self._seq}:{run}"
            result = await workflow.execute_activity(activity_fn, args=list(args), activity_id=activity_id, **options)
            report: dict[str, Any] = await workflow.execute_activity(
                REPORT_ACTIVITY,
                {"activity_id": activity_id, "timeout": self.verdict_timeout.total_seconds()},
                task_queue=self.report_task_queue,
                start_to_close_timeout=self.verdict_timeout + timedelta(seconds=30),
                retry_policy=RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=5),
                result_type=dict,
            )
            step_key, state, attempt = str(report["step_key"]), report["state"], int(report.get("attempt") or run)
            self.history.append({"run": run, "activity_id": activity_id, **report})
            if state == "passed":
                return result
            if state == "pending":
                if self.on_timeout == "fail":
                    raise ApplicationError(f"no verdict on step {step_key} within {self.verdict_timeout}",
                                           type="EvalsvcVerdictTimeout", non_retryable=True)  # fmt: skip
                return result
            planned = set(report.get("planned") or [])
            skipped = set(report.get("skipped") or [])
            if "retry" in skipped and not planned & {"pause", "review"}:  # evalsvc's retry limit was reached
                raise _exhausted(step_key, attempt, report)
            if not _IN_BAND & planned:
                return result  # failed, but nothing to wait for (no on_fail, or a webhook)
            if "retry" in planned and max_attempts and attempt >= max_attempts:  # the helper's own bound
                raise _exhausted(step_key, attempt, report)
            decision = await self._await_decision(step_key, attempt)
            self.history.append({"run": run, "step_key": step_key, "attempt": attempt, "decision": decision})
            if decision["action"] == "resume":
                return result
            limits = [x for x in (max_attempts, decision.get("max_attempts")) if isinstance(x, int) and x > 0]
            limit = min(limits) if limits else 3
            if attempt >= limit:
                raise _exhausted(step_key, attempt, report)

    async def _await_decision(self, step_key: str, attempt: int) -> dict[str, Any]:
        """The next retry or resume for the step's attempt; a pause waits for a resume (or a retry)."""
        while True:
            signal = await self._next_signal(step_key, attempt)
            if signal.get("action") in ("retry", "resume"):
                return signal


def _exhausted(step_key: str, attempt: int, report: dict[str, Any]) -> ApplicationError:
    return ApplicationError(
        f"step {step_key} failed evaluation at attempt {attempt}, its last: {report.get('explanation') or ''}".strip(),
        report, type="EvalsvcEvalFailed", non_retryable=True,
    )  # fmt: skip


class EvalsvcActivities:
    """The worker-side activity of the helper: report a finished step to evalsvc and wait for its verdict.

    It needs the worker's Temporal client (``activity.client()``: any ``Worker`` has one) to read
    the run's history, and an evalsvc URL and project API key.
    """

    def __init__(self, base_url: str, *, api_key: str | None = None) -> None:
        self.base_url, self.api_key = base_url, api_key

    @activity.defn(name=REPORT_ACTIVITY)
    async def report_step(self, request: dict[str, Any]) -> dict[str, Any]:
        from connectors.temporal import history_to_steps  # outside the sandbox: activities may do I/O

        from .http import AsyncClient

        info = activity.info()
        if not info.workflow_id or not info.workflow_run_id:
            raise ApplicationError(f"{REPORT_ACTIVITY} runs only as a workflow's activity", non_retryable=True)
        handle = activity.client().get_workflow_handle(info.workflow_id, run_id=info.workflow_run_id)
        doc: dict[str, Any] = (await handle.fetch_history()).to_json_dict()
        doc.update(workflowId=info.workflow_id, runId=info.workflow_run_id, namespace=info.workflow_namespace)
        mine = [r for r in history_to_steps(doc) if (r.get("attributes") or {}).get("activity_id")
                == request["activity_id"] and r["kind"] == "activity"]  # fmt: skip
        if not mine:
            raise ApplicationError(f"activity {request['activity_id']} is not in the history", non_retryable=True)
        step = max(mine, key=lambda r: r["attempt"])
        async with AsyncClient(self.base_url, api_key=self.api_key) as evalsvc:
            await evalsvc.ingest("temporal", doc)
            verdict = await evalsvc.wait_for_verdict(
                run_key=info.workflow_run_id, step_key=step["step_key"], attempt=step["attempt"], source="temporal",
                timeout=float(request.get("timeout") or 60),
            )  # fmt: skip
        return {
            "step_key": step["step_key"],
            "attempt": step["attempt"],
            "state": verdict.state,
            # actions evalsvc sends or opened; a skipped one (a retry past the limit) never comes
            "planned": [a["kind"] for a in verdict.actions if a.get("status") != "skipped"],
            "skipped": [a["kind"] for a in verdict.actions if a.get("status") == "skipped"],
            "failed_evaluators": verdict.failed_evaluators,
            "explanation": verdict.explanation,
        }
