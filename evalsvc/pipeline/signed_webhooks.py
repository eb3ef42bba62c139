"""Signed webhooks from orchestrators: Inngest's request signature, replay protection, and ingest.

Inngest signs a request with ``X-Inngest-Signature: t=<unix seconds>&s=<hex>`` where ``s`` is
HMAC-SHA256 over the body followed by the timestamp's decimal digits, keyed with the signing key
without its ``signkey-<env>-`` prefix (as inngest-py's ``net.sign_response`` and the JS SDK do).
:func:`verify_inngest_signature` accepts the current or the fallback key within a 5-minute window;
:func:`ingest_inngest_webhook` then stores the events and records the signature in
``connector_state`` in one transaction, so a replay (from any process) finds it and is refused::

    >>> from evalsvc.pipeline.signed_webhooks import sign_inngest, verify_inngest_signature
    >>> header = sign_inngest(b'{"name":"x"}', "signkey-prod-abc123", ts=1700000000)
    >>> verify_inngest_signature(body=b'{"name":"x"}', header=header, keys=["signkey-prod-abc123"],
    ...                          now=1700000100).key_index
    0
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from evalsvc.errors import InvalidInput, PayloadRejected, Unauthorized
from evalsvc.store.db import write_session
from evalsvc.store.models import table, utcnow
from evalsvc.store.models_connectors import ConnectorState

from .ingest import IngestReport, ingest_records, parse_items
from .projects import ensure_project

__all__ = [
    "SIGNATURE_HEADER",
    "TOLERANCE_SECONDS",
    "Verified",
    "ingest_inngest_webhook",
    "sign_inngest",
    "strip_key_prefix",
    "verify_inngest_signature",
]

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Inngest-Signature"
TOLERANCE_SECONDS = 300  # Inngest's SDKs refuse signatures older than five minutes
STATE_CONNECTOR = "inngest"
STATE_PREFIX = "webhook.signature:"
_PREFIX = re.compile(r"^signkey-\w+-")
_HEX = re.compile(r"^[0-9a-fA-F]{64}$")


def strip_key_prefix(key: str) -> str:
    """``signkey-prod-<hex>`` → ``<hex>``: Inngest's SDKs sign with the key without its prefix."""
    return _PREFIX.sub("", key.strip(), count=1)


def _mac(body: bytes, key: str, ts: int) -> str:
    mac = hmac.new(strip_key_prefix(key).encode(), body, hashlib.sha256)
    mac.update(str(ts).encode())
    return mac.hexdigest()


def sign_inngest(body: bytes, key: str, *, ts: int | None = None) -> str:
    """The ``X-Inngest-Signature`` value Inngest would send with this body (tests, forwarders)."""
    ts = int(time.time()) if ts is None else ts
    return f"t={ts}&s={_mac(body, key, ts)}"


@dataclass(frozen=True, slots=True)
class Verified:
    ts: int
    signature: str
    key_index: int  # 0: the signing key, 1: the fallback key


def verify_inngest_signature(
    *, body: bytes, header: str | None, keys: Sequence[str], now: float | None = None,
    tolerance: int = TOLERANCE_SECONDS,
) -> Verified:  # fmt: skip
    """Check ``X-Inngest-Signature`` against each key in turn; raise :class:`Unauthorized` saying why not."""
    field = SIGNATURE_HEADER.lower()
    if not keys:
        raise Unauthorized("no Inngest signing key is configured (EVALSVC_INNGEST_SIGNING_KEY): "
                           "unsigned webhooks are refused", field=field)  # fmt: skip
    if not header or not header.strip():
        raise Unauthorized(f"missing {SIGNATURE_HEADER} header: the request is not signed", field=field)
    parts = parse_qs(header.strip(), keep_blank_values=True)
    ts_text, sig = (parts.get("t") or [""])[0], (parts.get("s") or [""])[0]
    if not ts_text.isdigit() or not _HEX.match(sig):
        raise Unauthorized(f"malformed {SIGNATURE_HEADER}: expected t=<unix seconds>&s=<64 hex digits>", field=field)
    ts = int(ts_text)
    now = time.time() if now is None else now
    age = now - ts
    if age > tolerance:
        raise Unauthorized(f"stale signature: signed {int(age)} s ago, more than the {tolerance} s allowed",
                           field=field)  # fmt: skip
    if age < -tolerance:
        raise Unauthorized(f"signature timestamp is {int(-age)} s in the future (clock skew over {tolerance} s)",
                           field=field)  # fmt: skip
    bodies = [body]
    try:  # Inngest's SDKs verify the compact JSON re-encoding of the body too
        compact = orjson.dumps(orjson.loads(body))
        if compact != body:
            bodies.append(compact)
    except orjson.JSONDecodeError:
        pass
    for index, key in enumerate(keys):
        for candidate in bodies:
            if hmac.compare_digest(_mac(candidate, key, ts), sig.lower()):
                return Verified(ts=ts, signature=sig.lower(), key_index=index)
    which = "the signing key or the fallback key" if len(keys) > 1 else "the signing key"
    raise Unauthorized(f"signature does not match the body with {which}", field=field)


def _decode(body: bytes) -> Any:
    if not body.strip():
        raise InvalidInput("request body is empty", field="body")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"not valid JSON: {exc}", field="body") from None


def ingest_inngest_webhook(
    *,
    engine: Engine,
    body: bytes,
    header: str | None,
    keys: Sequence[str],
    project: str,
    max_batch_records: int,
    max_record_bytes: int,
    now: float | None = None,
) -> IngestReport:
    """Verify, translate and store one signed Inngest webhook delivery, all or nothing.

    The signature is recorded in ``connector_state`` (unique per project, connector and key) in the
    same transaction as the records, so a replay fails on that row in any process and nothing of a
    refused or malformed delivery is stored.
    """
    from connectors import get as get_connector

    verified = verify_inngest_signature(body=body, header=header, keys=keys, now=now)
    items = get_connector("inngest").to_steps(_decode(body))
    if len(items) > max_batch_records:
        raise PayloadRejected(f"{len(items)} records; the limit is {max_batch_records}", field="body")
    good, bad = parse_items(items, max_record_bytes=max_record_bytes)
    if bad:
        first = bad[0]
        where = f"records.{first.index}" + (f".{first.field}" if first.field else "")
        raise PayloadRejected(f"{first.reason or 'invalid record'} (the step record made from the event)", field=where)
    with write_session(engine) as session:
        proj = ensure_project(session=session, name=project)
        project_id = proj.id or 0
        state = table(ConnectorState)
        cutoff = utcnow() - timedelta(seconds=2 * TOLERANCE_SECONDS)
        session.execute(  # signatures older than the window can never be replayed: forget them
            sa.delete(state).where(
                state.c.project_id == project_id,
                state.c.connector == STATE_CONNECTOR,
                state.c.key.like(f"{STATE_PREFIX}%"),
                state.c.updated_at < cutoff,
            )
        )
        try:
            with session.begin_nested():
                session.execute(
                    sa.insert(state).values(
                        project_id=project_id,
                        connector=STATE_CONNECTOR,
                        key=STATE_PREFIX + verified.signature,
                        value={"ts": verified.ts, "key": "fallback" if verified.key_index else "current"},
                        updated_at=utcnow(),
                    )
                )
        except sa.exc.IntegrityError:
            raise Unauthorized(
                "replayed request: this signature was already accepted", field=SIGNATURE_HEADER.lower()
            ) from None
        report = ingest_records(session=session, project_id=project_id, records=good)
    if verified.key_index:
        logger.warning("Inngest webhook verified with the fallback signing key; finish the key rotation")
    return report
