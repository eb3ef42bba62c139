"""Workflows and activities of the Temporal remediation tests (tests/test_remediation_temporal.py).

They live in their own module, importing only ``temporalio`` and evalsvc's helper, so that the
worker runs them in Temporal's default workflow sandbox (which re-imports this module), as
production code would. ``CALLS`` counts activity runs per workflow id (activities run outside the
sandbox, in the test process).
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import Any

from temporalio import activity, workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from evalsvc.client.temporal import VerdictGate

CALLS: Counter[str] = Counter()
_ONCE = RetryPolicy(maximum_attempts=1)


@activity.defn
async def extract_invoice(document: str) -> dict[str, Any]:
    """LLM-like: the first run per workflow answers a total that is not a number, later runs a number."""
    CALLS[activity.info().workflow_id] += 1
    if CALLS[activity.info().workflow_id] == 1:
        return {"total": "twelve fifty", "document": document}
    return {"total": 12.5, "document": document}


@activity.defn
async def extract_garbage(document: str) -> dict[str, Any]:
    """Never gets it right."""
    CALLS[activity.info().workflow_id] += 1
    return {"total": "?", "document": document}


@activity.defn
async def draft_reply(email: str) -> str:
    CALLS[activity.info().workflow_id] += 1
    return f"whatever. re: {email}"


@activity.defn
async def draft_refund(email: str) -> str:
    CALLS[activity.info().workflow_id] += 1
    return f"no refund. re: {email}"


@activity.defn
async def check_stock(item: str) -> str:
    CALLS[activity.info().workflow_id] += 1
    return f"unknown: {item}"


@workflow.defn
class GatedInvoiceWorkflow:
    """Uses the helper: a failed extraction is run again on evalsvc's retry signal."""

    def __init__(self) -> None:
        self.gate: VerdictGate | None = None

    @workflow.run
    async def run(self, document: str, step: str = "extract_invoice") -> dict[str, Any]:
        self.gate = VerdictGate(verdict_timeout=timedelta(seconds=30))
        invoice = await self.gate.execute_activity(
            step, document, start_to_close_timeout=timedelta(seconds=10), retry_policy=_ONCE, result_type=dict
        )
        return {"invoice": invoice, "history": self.gate.history}

    @workflow.query
    def gate_history(self) -> list[dict[str, Any]]:
        return self.gate.history if self.gate else []


@workflow.defn
class ReviewedReplyWorkflow:
    """Uses the helper: a step that fails its eval waits for a person or a resume (review: approve goes
    on, reject cancels or terminates; pause: waits for resume). ``step`` names the activity."""

    def __init__(self) -> None:
        self.gate: VerdictGate | None = None

    @workflow.run
    async def run(self, email: str, step: str) -> str:
        self.gate = VerdictGate(verdict_timeout=timedelta(seconds=30))
        reply: str = await self.gate.execute_activity(
            step, email, start_to_close_timeout=timedelta(seconds=10), retry_policy=_ONCE, result_type=str
        )
        return f"sent: {reply}"

    @workflow.query
    def gate_history(self) -> list[dict[str, Any]]:
        return self.gate.history if self.gate else []


@workflow.defn
class PlainInvoiceWorkflow:
    """No helper: evalsvc's retry resets it to before the failed activity."""

    @workflow.run
    async def run(self, document: str) -> dict[str, Any]:
        invoice: dict[str, Any] = await workflow.execute_activity(
            extract_invoice, document, start_to_close_timeout=timedelta(seconds=10), retry_policy=_ONCE
        )
        await workflow.wait_condition(lambda: self.done)
        return invoice

    def __init__(self) -> None:
        self.done = False

    @workflow.signal
    def finish(self) -> None:
        self.done = True
