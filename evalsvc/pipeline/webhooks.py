"""Signed webhooks (Standard Webhooks: ``webhook-id``, ``webhook-timestamp``, ``webhook-signature``).

The signature is ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`` under the secret
``EVALSVC_WEBHOOK_SECRET`` (``whsec_<base64>``). Receivers verify it with any Standard Webhooks
library, e.g. in Python::

    >>> from standardwebhooks.webhooks import Webhook          # doctest: +SKIP
    >>> Webhook(secret).verify(body, headers)                  # doctest: +SKIP

``webhook-id`` is the action's idempotency key: a delivery repeated after a crash carries the same
id, so a receiver that remembers ids acts once. Targets on private, loopback or link-local
addresses are refused unless ``EVALSVC_WEBHOOK_ALLOW_PRIVATE`` is set (or their network is listed in
``EVALSVC_WEBHOOK_ALLOW_NETWORKS``): when the URL is saved, and again at send time for the URL and
every redirect, with the connection pinned to the address that was checked.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit, urlunsplit

import orjson
from sqlmodel import Session
from standardwebhooks.webhooks import Webhook

from evalsvc.errors import InvalidInput
from evalsvc.settings import Settings
from evalsvc.store.models import Action, EvalResult, Project, Run, Step

if TYPE_CHECKING:
    import httpx

__all__ = ["WebhookError", "build_payload", "check_url", "checked_addresses", "send_webhook"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class WebhookError(Exception):
    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


def _addresses(host: str, port: int) -> list[IPAddress]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
        return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]


def _refused(addr: IPAddress, allow_networks: Sequence[str]) -> bool:
    if addr.is_global:
        return False
    return not any(addr in ipaddress.ip_network(net, strict=False) for net in allow_networks)


def check_url(url: str, *, allow_private: bool, resolve: bool = True, allow_networks: Sequence[str] = ()) -> None:
    """Refuse a webhook URL that is not http(s) or that points at a private address."""
    checked_addresses(url, allow_private=allow_private, resolve=resolve, allow_networks=allow_networks)


def checked_addresses(
    url: str, *, allow_private: bool, resolve: bool = True, allow_networks: Sequence[str] = ()
) -> list[IPAddress]:
    """The addresses ``url``'s host resolves to, all of them allowed (``[]`` when not checked).

    Every address must be public, or inside one of ``allow_networks``, unless ``allow_private``:
    a name that resolves to one public and one private address is refused.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput("must be an http:// or https:// URL with a host", field="on_fail.url")
    if allow_private:
        return []
    host = parts.hostname
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not resolve:
            return []
    try:
        addrs = _addresses(host, parts.port or (443 if parts.scheme == "https" else 80))
    except OSError as exc:
        raise InvalidInput(f"cannot resolve {host!r}: {exc}", field="on_fail.url") from None
    for addr in addrs:
        if _refused(addr, allow_networks):
            raise InvalidInput(
                f"{host} resolves to the non-public address {addr}; set EVALSVC_WEBHOOK_ALLOW_PRIVATE=true "
                "or list its network in EVALSVC_WEBHOOK_ALLOW_NETWORKS to allow it",
                field="on_fail.url",
            )
    return addrs


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
    """POST the signed payload; a 2xx answer is success, 4xx (but 408/429) is final, the rest retry.

    Each hop (the URL, then every redirect, up to ``EVALSVC_WEBHOOK_MAX_REDIRECTS``) is resolved and
    checked at send time, and the connection goes to the checked address (the name is kept for the
    ``Host`` header and TLS), so a name that re-resolves to a private address in between (DNS
    rebinding) cannot redirect the delivery.
    """
    if settings.webhook_secret is None:
        raise WebhookError("EVALSVC_WEBHOOK_SECRET is not set; cannot sign the webhook", retryable=False)
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
    import httpx  # loaded with the first delivery, not with the service (idle memory)

    hops: list[str] = []
    with httpx.Client(timeout=settings.webhook_timeout_seconds, follow_redirects=False, trust_env=False) as client:
        target = url
        while True:
            hops.append(target)
            resp = _post_checked(client, target, body, headers, settings, redirected=len(hops) > 1)
            location = resp.headers.get("location")
            if resp.status_code not in _REDIRECTS or not location:
                break
            if len(hops) > settings.webhook_max_redirects:
                raise WebhookError(
                    f"more than {settings.webhook_max_redirects} redirects (EVALSVC_WEBHOOK_MAX_REDIRECTS)",
                    retryable=False,
                )
            target = urljoin(target, location)
    answer: dict[str, Any] = {"status_code": resp.status_code, "body": resp.text[:2000]}
    if len(hops) > 1:
        answer["redirects"] = hops[1:]
    if 200 <= resp.status_code < 300:
        return answer
    retryable = resp.status_code >= 500 or resp.status_code in (408, 429) or 300 <= resp.status_code < 400
    raise WebhookError(f"receiver answered HTTP {resp.status_code}: {resp.text[:200]}", retryable=retryable)


_REDIRECTS = frozenset({301, 302, 303, 307, 308})


def _post_checked(
    client: httpx.Client, url: str, body: str, headers: dict[str, str], settings: Settings, *, redirected: bool
) -> httpx.Response:
    """One POST to ``url``, its host resolved and checked now and the connection pinned to that address."""
    try:
        addrs = checked_addresses(
            url, allow_private=settings.webhook_allow_private, allow_networks=settings.webhook_allow_networks
        )
    except InvalidInput as exc:
        where = "redirect refused: " if redirected else ""
        message = exc.message.removeprefix(f"{exc.field}: ")
        retryable = message.startswith("cannot resolve")  # DNS may come back; a private address will not
        raise WebhookError(where + message, retryable=retryable) from None
    parts = urlsplit(url)
    send_to, extensions = url, {}
    if addrs and parts.hostname:
        ip = addrs[0]
        host = f"[{ip}]" if ip.version == 6 else str(ip)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        send_to = urlunsplit((parts.scheme, f"{host}:{port}", parts.path or "/", parts.query, ""))
        headers = {**headers, "host": parts.netloc.rsplit("@", 1)[-1]}
        if parts.scheme == "https":
            extensions = {"sni_hostname": parts.hostname}
    import httpx

    try:
        return client.post(send_to, content=body, headers=headers, extensions=extensions)
    except httpx.HTTPError as exc:
        raise WebhookError(f"{type(exc).__name__}: {exc}", retryable=True) from None
