"""Inngest adapter: send the events an Inngest function waits on, and cancel runs.

- **retry** and **pause** send ``evalsvc/eval.failed`` (``data.action`` says which) to the event API,
  ``POST {EVALSVC_INNGEST_EVENT_API_URL}/e/{EVALSVC_INNGEST_EVENT_KEY}``. A function that runs
  evalsvc's pattern waits after a judged step with ``step.wait_for_event`` matched on
  ``data.run_id`` (and ``data.step``): on ``retry`` it runs the step again, on ``pause`` it waits for
  ``evalsvc/review.decided`` (docs/remediation-inngest.md).
- **resume** (a review approval) and **cancel** (a rejection) send ``evalsvc/review.decided`` with
  ``data.decision`` ``approved`` / ``rejected``; a cancel then also cancels the run through the REST
  API, ``DELETE {EVALSVC_INNGEST_API_URL}/v1/runs/{run id}`` with ``Authorization: Bearer {signing
  key}`` (``EVALSVC_INNGEST_SIGNING_KEY``), so a function that does not wait on the event stops too.
  A run that is already gone (404) counts as cancelled.

Every event's ``id`` is the action's idempotency key: Inngest starts functions and resolves
waits only for the first event of an id (24 h window), so the re-send after a worker crash has no
second effect. Network errors, 429 and 5xx are retryable; other 4xx are not.

    >>> from evalsvc.adapters.inngest import EVAL_FAILED, REVIEW_DECIDED
    >>> EVAL_FAILED, REVIEW_DECIDED
    ('evalsvc/eval.failed', 'evalsvc/review.decided')
"""

from __future__ import annotations

from typing import Any, ClassVar
from urllib.parse import quote

import httpx

from .base import ActionContext, ActionFailed, register

__all__ = ["EVAL_FAILED", "REVIEW_DECIDED", "InngestAdapter", "build_event"]

EVAL_FAILED = "evalsvc/eval.failed"
REVIEW_DECIDED = "evalsvc/review.decided"
_DECISION = {"resume": "approved", "cancel": "rejected"}


def build_event(ctx: ActionContext) -> dict[str, Any]:
    """The event of an action: name, ``id`` = the idempotency key, and what the function matches on."""
    step = ctx.step
    data: dict[str, Any] = {
        "action": ctx.kind,
        "run_id": ctx.run["run_key"],
        "function_id": ctx.run.get("workflow"),
        "step": step.get("name") or step["step_key"],
        "step_key": step["step_key"],
        "attempt": step.get("attempt"),
        "verdict": {k: ctx.verdict.get(k) for k in ("evaluator", "value", "passed", "label", "explanation")},
        "reason": ctx.reason,
        "project": ctx.project,
        "action_id": ctx.action_id,
    }
    if ctx.kind in _DECISION:
        data["decision"] = _DECISION[ctx.kind]
        return {"id": ctx.idempotency_key, "name": REVIEW_DECIDED, "data": data}
    return {"id": ctx.idempotency_key, "name": EVAL_FAILED, "data": data}


def _check(response: httpx.Response, what: str) -> None:
    if response.is_success:
        return
    retryable = response.status_code == 429 or response.status_code >= 500
    raise ActionFailed(f"{what}: HTTP {response.status_code}: {response.text[:300]}", retryable=retryable)


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text[:1000]


@register
class InngestAdapter:
    source: ClassVar[str] = "inngest"
    kinds: ClassVar[frozenset[str]] = frozenset({"retry", "pause", "resume", "cancel"})

    def perform(self, ctx: ActionContext) -> dict[str, Any]:
        settings = ctx.settings
        if settings.inngest_event_key is None:
            raise ActionFailed("no Inngest event key: set EVALSVC_INNGEST_EVENT_KEY", retryable=False)
        if ctx.kind not in self.kinds:
            raise ActionFailed(f"the Inngest adapter does not perform {ctx.kind!r}", retryable=False)
        event = build_event(ctx)
        key = quote(settings.inngest_event_key.get_secret_value(), safe="")
        out: dict[str, Any] = {"event": event["name"], "event_id": event["id"]}
        try:
            with httpx.Client(timeout=settings.inngest_timeout_seconds, follow_redirects=False) as client:
                sent = client.post(f"{settings.inngest_event_api_url.rstrip('/')}/e/{key}", json=event)
                _check(sent, f"Inngest event API refused {event['name']}")
                out.update(status_code=sent.status_code, response=_json(sent))
                if ctx.kind == "cancel":
                    out["cancel"] = self._cancel(client, ctx)
        except httpx.HTTPError as exc:
            raise ActionFailed(f"Inngest unreachable: {type(exc).__name__}: {exc}", retryable=True) from exc
        return out

    def _cancel(self, client: httpx.Client, ctx: ActionContext) -> dict[str, Any]:
        signing = ctx.settings.inngest_signing_key
        if signing is None:
            return {"skipped": "EVALSVC_INNGEST_SIGNING_KEY is not set: only the event was sent"}
        run_id = quote(str(ctx.run["run_key"]), safe="")
        url = f"{ctx.settings.inngest_api_url.rstrip('/')}/v1/runs/{run_id}"
        r = client.delete(url, headers={"authorization": f"Bearer {signing.get_secret_value()}"})
        if r.status_code == 404:
            return {"status_code": 404, "note": "no such run any more (ended or already cancelled)"}
        _check(r, f"Inngest REST API refused to cancel run {ctx.run['run_key']}")
        return {"status_code": r.status_code, "response": _json(r)}
