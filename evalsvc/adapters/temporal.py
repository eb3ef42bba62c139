"""Temporal adapter: signal, reset, cancel and terminate workflows (``docs/remediation-temporal.md``).

An action on a step whose source is ``temporal`` reaches the workflow execution the run names
(``run.attributes.workflow_id`` and the run key, which is Temporal's run id) in the run's recorded
namespace (else ``EVALSVC_TEMPORAL_NAMESPACE``), through the frontend at ``EVALSVC_TEMPORAL_ADDRESS``:

- ``retry``: a workflow that uses evalsvc's helper (:mod:`evalsvc.client.temporal`; it marks its
  run with the memo ``evalsvc_helper``) gets the ``evalsvc_verdict`` signal with the verdict and
  ``action: retry`` and runs the activity again, which evalsvc records as the next attempt of the
  same step (the signal carries ``max_attempts``: the policy's ``retry_limit()``). Any other workflow is reset to the workflow task
  that scheduled the failed activity (the step's ``reset_event_id``), so the activity runs again in
  a new run. ``on_fail: {action: retry, mode: signal | reset}`` chooses without looking at the memo.
- ``pause`` / ``resume``: the ``evalsvc_verdict`` signal with ``action: pause`` / ``resume``; the
  helper waits from a pause (and from a failed step under review) until it is resumed.
- ``cancel``: cancel the workflow (a review was rejected); ``on_fail: {..., on_reject: terminate}``
  terminates it instead.

Every call carries the action's idempotency key as Temporal's ``request_id`` where Temporal takes
one (signal, cancel, reset), so a re-sent action after a worker died is dropped by the server; the
helper also drops a signal whose action key it has seen. ``perform`` is synchronous: it runs the
``temporalio`` calls on one background event loop that keeps a client per address::

    >>> from evalsvc.adapters import kinds_for
    >>> sorted(kinds_for("temporal"))
    ['cancel', 'pause', 'resume', 'retry']
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine
from datetime import timedelta
from typing import Any, ClassVar, TypeVar

from google.protobuf.json_format import MessageToDict
from pydantic import ValidationError
from temporalio.api.common.v1 import Payloads, WorkflowExecution
from temporalio.api.enums.v1 import WorkflowExecutionStatus
from temporalio.api.history.v1 import HistoryEvent
from temporalio.api.workflowservice.v1 import (
    DescribeWorkflowExecutionRequest,
    DescribeWorkflowExecutionResponse,
    GetWorkflowExecutionHistoryRequest,
    RequestCancelWorkflowExecutionRequest,
    ResetWorkflowExecutionRequest,
    SignalWorkflowExecutionRequest,
    TerminateWorkflowExecutionRequest,
)
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from evalsvc.client.temporal import HELPER_MEMO, SIGNAL
from evalsvc.schemas import OnFail

from .base import ActionContext, ActionFailed, register

__all__ = ["HELPER_MEMO", "SIGNAL", "TemporalAdapter", "verdict_signal"]

IDENTITY = "evalsvc"
_RETRYABLE = {
    RPCStatusCode.UNAVAILABLE,
    RPCStatusCode.DEADLINE_EXCEEDED,
    RPCStatusCode.RESOURCE_EXHAUSTED,
    RPCStatusCode.ABORTED,
    RPCStatusCode.INTERNAL,
    RPCStatusCode.UNKNOWN,
    RPCStatusCode.CANCELLED,
}
T = TypeVar("T")


class _Loop:
    """One event loop on a daemon thread, shared by all actions; Temporal clients cached per address."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._clients: dict[str, Client] = {}
        self._pid = 0

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        with self._lock:
            # a forked process (a Celery prefork child) has the loop object but not its thread
            if self._loop is None or not self._loop.is_running() or self._pid != os.getpid():
                loop = asyncio.new_event_loop()
                started = threading.Event()

                def serve() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(started.set)
                    loop.run_forever()

                threading.Thread(target=serve, name="evalsvc-temporal-adapter", daemon=True).start()
                started.wait(10)
                self._loop, self._clients, self._pid = loop, {}, os.getpid()
            loop = self._loop
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

    async def client(self, address: str) -> Client:
        client = self._clients.get(address)
        if client is None:
            try:
                client = await Client.connect(address, identity=IDENTITY)
            except Exception as exc:  # the core client reports connect failures as RuntimeError
                raise ActionFailed(f"cannot connect to Temporal at {address}: {exc}", retryable=True) from None
            self._clients[address] = client
        return client


_LOOP = _Loop()


def verdict_signal(ctx: ActionContext) -> dict[str, Any]:
    """The ``evalsvc_verdict`` signal's payload for an action (what the helper reads)."""
    attrs = ctx.step.get("attributes") or {}
    return {
        "action": ctx.kind,
        "action_key": ctx.idempotency_key,
        "step_key": ctx.step.get("step_key"),
        "attempt": ctx.step.get("attempt"),
        "activity_id": attrs.get("activity_id"),
        "passed": ctx.verdict.get("passed"),
        "evaluator": ctx.verdict.get("evaluator"),
        "explanation": ctx.verdict.get("explanation"),
        "reason": ctx.reason,
        "max_attempts": _retry_limit(ctx.on_fail),
    }


def _retry_limit(on_fail: dict[str, Any]) -> int | None:
    """The policy's highest attempt of a step (``max_attempts``, ``max_retries + 1``): the helper stops there too."""
    try:
        return OnFail.model_validate(on_fail).retry_limit()
    except ValidationError:
        value = on_fail.get("max_attempts")
        return value if isinstance(value, int) else None


def _rpc_failed(what: str, exc: RPCError) -> ActionFailed:
    return ActionFailed(f"Temporal refused to {what}: {exc.status.name}: {exc.message}",
                        retryable=exc.status in _RETRYABLE)  # fmt: skip


@register
class TemporalAdapter:
    source: ClassVar[str] = "temporal"
    kinds: ClassVar[frozenset[str]] = frozenset({"retry", "pause", "resume", "cancel"})

    def perform(self, ctx: ActionContext) -> dict[str, Any]:
        timeout = ctx.settings.temporal_rpc_timeout_seconds
        # the loop's own timeout covers connect + describe + the call; each RPC has the per-call one
        return _LOOP.run(self._perform(ctx), timeout=timeout * 3 + 5)

    async def _perform(self, ctx: ActionContext) -> dict[str, Any]:
        attrs = ctx.run.get("attributes") or {}
        workflow_id = attrs.get("workflow_id")
        run_id = str(attrs.get("run_id") or ctx.run.get("run_key") or "")
        if not workflow_id:
            raise ActionFailed("the run names no Temporal workflow_id (ingest it with the temporal connector)",
                               retryable=False)  # fmt: skip
        address = ctx.settings.temporal_address
        namespace = attrs.get("namespace") or ctx.settings.temporal_namespace
        client = await _LOOP.client(address)
        call = _Call(client, namespace, WorkflowExecution(workflow_id=workflow_id, run_id=run_id), ctx)
        target = {"address": address, "namespace": namespace, "workflow_id": workflow_id, "run_id": run_id}
        if ctx.kind == "cancel":
            if str(ctx.on_fail.get("on_reject") or "cancel") == "terminate":
                return {**target, **await call.terminate()}
            return {**target, **await call.cancel()}
        if ctx.kind == "retry":
            mode = str(ctx.on_fail.get("mode") or "auto")
            if mode not in ("auto", "signal", "reset"):
                raise ActionFailed(f"on_fail.mode must be auto, signal or reset, not {mode!r}", retryable=False)
            if mode == "auto":
                description = await call.describe()
                mode = "signal" if HELPER_MEMO in description.workflow_execution_info.memo.fields else "reset"
            if mode == "reset":
                return {**target, **await call.reset()}
        return {**target, **await call.signal()}


class _Call:
    def __init__(self, client: Client, namespace: str, execution: WorkflowExecution, ctx: ActionContext) -> None:
        self.client, self.namespace, self.execution, self.ctx = client, namespace, execution, ctx
        self.timeout = timedelta(seconds=ctx.settings.temporal_rpc_timeout_seconds)
        self.reason = f"evalsvc {ctx.kind}: {ctx.reason or ''} ({ctx.idempotency_key})".strip()

    async def describe(self) -> DescribeWorkflowExecutionResponse:
        req = DescribeWorkflowExecutionRequest(namespace=self.namespace, execution=self.execution)
        try:
            return await self.client.workflow_service.describe_workflow_execution(req, retry=True,
                                                                                  timeout=self.timeout)  # fmt: skip
        except RPCError as exc:
            raise _rpc_failed("describe the workflow", exc) from None

    async def signal(self) -> dict[str, Any]:
        payload = verdict_signal(self.ctx)
        req = SignalWorkflowExecutionRequest(
            namespace=self.namespace,
            workflow_execution=self.execution,
            signal_name=SIGNAL,
            input=Payloads(payloads=await self.client.data_converter.encode([payload])),
            identity=IDENTITY,
            request_id=self.ctx.idempotency_key,
        )
        out = {"operation": "signal", "signal": SIGNAL, "payload": payload, "request_id": self.ctx.idempotency_key}
        try:
            await self.client.workflow_service.signal_workflow_execution(req, retry=True, timeout=self.timeout)
        except RPCError as exc:
            # closed since: if it is a re-send after a crash, the first send is in the history
            if exc.status == RPCStatusCode.NOT_FOUND and await self._signalled():
                return {**out, "already": "signalled"}
            raise _rpc_failed(f"signal {SIGNAL}", exc) from None
        return out

    async def _signalled(self) -> bool:
        """Whether the run's history holds this action's signal (matched by request id or action key)."""
        events: list[HistoryEvent] = []
        req = GetWorkflowExecutionHistoryRequest(namespace=self.namespace, execution=self.execution)
        try:
            while True:
                page = await self.client.workflow_service.get_workflow_execution_history(req, retry=True,
                                                                                         timeout=self.timeout)  # fmt: skip
                events.extend(page.history.events)
                if not page.next_page_token:
                    break
                req.next_page_token = page.next_page_token
        except RPCError:
            return False
        for event in events:
            if not event.HasField("workflow_execution_signaled_event_attributes"):
                continue
            attrs = event.workflow_execution_signaled_event_attributes
            if attrs.signal_name != SIGNAL:
                continue
            if attrs.request_id == self.ctx.idempotency_key:
                return True
            values = await self.client.data_converter.decode(attrs.input.payloads)
            if values and isinstance(values[0], dict) and values[0].get("action_key") == self.ctx.idempotency_key:
                return True
        return False

    async def cancel(self) -> dict[str, Any]:
        req = RequestCancelWorkflowExecutionRequest(
            namespace=self.namespace, workflow_execution=self.execution, identity=IDENTITY,
            request_id=self.ctx.idempotency_key, reason=self.reason,
        )  # fmt: skip
        try:
            await self.client.workflow_service.request_cancel_workflow_execution(req, retry=True,
                                                                                 timeout=self.timeout)  # fmt: skip
        except RPCError as exc:
            raise _rpc_failed("cancel the workflow", exc) from None
        return {"operation": "cancel", "request_id": self.ctx.idempotency_key}

    async def terminate(self) -> dict[str, Any]:
        req = TerminateWorkflowExecutionRequest(namespace=self.namespace, workflow_execution=self.execution,
                                                reason=self.reason, identity=IDENTITY)  # fmt: skip
        try:
            await self.client.workflow_service.terminate_workflow_execution(req, retry=True, timeout=self.timeout)
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:  # already closed: a repeat after a crash, or it ended
                description = await self.describe()
                status = description.workflow_execution_info.status
                if status == WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_TERMINATED:
                    return {"operation": "terminate", "already": "terminated"}
            raise _rpc_failed("terminate the workflow", exc) from None
        return {"operation": "terminate"}

    async def reset(self) -> dict[str, Any]:
        """Reset to the workflow task that scheduled the failed activity: the activity runs again."""
        event_id = (self.ctx.step.get("attributes") or {}).get("reset_event_id")
        if not isinstance(event_id, int) or event_id <= 0:
            raise ActionFailed(f"step {self.ctx.step.get('step_key')!r} has no reset point (reset_event_id); "
                               "only activities and child workflows can be reset to", retryable=False)  # fmt: skip
        description = await self.describe()
        already = description.workflow_extended_info.reset_run_id
        if already:  # reset before (by this action after a crash, or by someone else): do not reset twice
            return {"operation": "reset", "reset_event_id": event_id, "new_run_id": already, "already": True}
        req = ResetWorkflowExecutionRequest(
            namespace=self.namespace, workflow_execution=self.execution, reason=self.reason,
            workflow_task_finish_event_id=event_id, request_id=self.ctx.idempotency_key, identity=IDENTITY,
        )  # fmt: skip
        try:
            resp = await self.client.workflow_service.reset_workflow_execution(req, retry=True, timeout=self.timeout)
        except RPCError as exc:
            raise _rpc_failed(f"reset the workflow to event {event_id}", exc) from None
        return {"operation": "reset", "reset_event_id": event_id, "new_run_id": resp.run_id,
                "request_id": self.ctx.idempotency_key, "response": MessageToDict(resp)}  # fmt: skip
