"""Signed webhooks (Standard Webhooks: ``webhook-id``, ``webhook-timestamp``, ``webhook-signature``).

The signature is ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`` under the secret
``EVALSVC_WEBHOOK_SECRET`` (``whsec_<base64>``). Receivers verify it with any Standard Webhooks
library, e.g. in Python::

    >>> from standardwebhooks.webhooks import Webhook          # doctest: +SKIP
    >>> Webhook(secret).verify(body, headers)                  # doctest: +SKIP

``webhook-id`` is the action's idempotency key: a delivery repeated after a crash carries the same
id, so a receiver that remembers ids acts once. Targets on private, loopback or link-local
addresses are refused unless ``EVALSVC_WEBHOOK_ALLOW_PRIVATE`` is set; redirects are not followed.
"""

from __future__ import annotations

import ipaddress
import socket
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
from sqlmodel import Session
from standardwebhooks.webhooks import Webhook

from evalsvc.errors import InvalidInput
from evalsvc.settings import Settings
from evalsvc.store.models import Action, EvalResult, Project, Run, Step

__all__ = ["WebhookError", "build_payload", "check_url", "send_webhook"]


class WebhookError(Exception):
    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


def check_url(url: str, *, allow_private: bool, resolve: bool = True) -> None:
    """Refuse a webhook URL that is not http(s) or that points at a private address."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput("must be an http:// or https:// URL with a host", field="on_fail.url")
    if allow_private:
        return
    host = parts.hostname
    try:
        addrs = [ipaddress.ip_address(host)]
    except ValueError:
        if not resolve:
            return
        try:
            infos = socket.getaddrinfo(host, parts.port or 443, proto=socket.IPPROTO_TCP)
        except OSError as exc:
            raise InvalidInput(f"cannot resolve {host!r}: {exc}", field="on_fail.url") from None
        addrs = [ipaddress.ip_address(info[4][0]) for info in infos]
    for addr in addrs:
        if not addr.is_global:
            raise InvalidInput(
                f"{host} resolves to the non-public address {addr}; set EVALSVC_WEBHOOK_ALLOW_PRIVATE=true to allow it",
                field="on_fail.url",
            )


def build_payload(*, session: Session, action: Action) -> dict[str, Any]:
    """The JSON body of an ``eval.failed`` webhook: the verdict with its run and step."""
    result = session.get(EvalResult, action.eval_result_id)
    step = session.get(Step, action.step_id)
    run = session.get(Run, action.run_id)
    project = session.get(Project, action.project_id)
    assert result and step and run and project
    return {
        "type": "eval.failed",
        "id": action.idempotency_key,
        "project": project.name,
        "evaluator": {"name": result.evaluator, "version": result.evaluator_version},
        "result": {
            "id": result.id,
            "value": result.value,
            "passed": result.passed,
            "label": result.label,
            "explanation": result.explanation,
        },
        "run": {"source": run.source, "run_key": run.run_key, "workflow": run.workflow, "status": run.status},
        "step": {"id": step.id, "step_key": step.step_key, "attempt": step.attempt, "name": step.name},
    }


def send_webhook(*, url: str, payload: dict[str, Any], msg_id: str, settings: Settings) -> dict[str, Any]:
    """POST the signed payload; a 2xx answer is success, 4xx (but 408/429) is final, the rest retry."""
    if settings.webhook_secret is None:
        raise WebhookError("EVALSVC_WEBHOOK_SECRET is not set; cannot sign the webhook", retryable=False)
    try:
        check_url(url, allow_private=settings.webhook_allow_private)
    except InvalidInput as exc:
        raise WebhookError(exc.message, retryable=False) from None
    body = orjson.dumps(payload).decode()
    now = datetime.now(UTC)
    try:
        signature = Webhook(settings.webhook_secret.get_secret_value()).sign(msg_id, now, body)
    except Exception as exc:
        raise WebhookError(f"EVALSVC_WEBHOOK_SECRET is not a whsec_<base64> secret: {exc}", retryable=False) from None
    headers = {
        "content-type": "application/json",
        "user-agent": "evalsvc-webhook/1",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signature,
    }
    try:
        resp = httpx.post(
            url, content=body, headers=headers, timeout=settings.webhook_timeout_seconds, follow_redirects=False
        )
    except httpx.HTTPError as exc:
        raise WebhookError(f"{type(exc).__name__}: {exc}", retryable=True) from None
    answer = {"status_code": resp.status_code, "body": resp.text[:2000]}
    if 200 <= resp.status_code < 300:
        return answer
    retryable = resp.status_code >= 500 or resp.status_code in (408, 429) or 300 <= resp.status_code < 400
    raise WebhookError(f"receiver answered HTTP {resp.status_code}: {resp.text[:200]}", retryable=retryable)
