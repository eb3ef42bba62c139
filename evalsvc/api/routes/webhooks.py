"""``POST /v1/webhooks/inngest``: Inngest's ``inngest/function.finished|failed|cancelled`` events.

Authenticated by Inngest's request signature (``X-Inngest-Signature``, see
:mod:`evalsvc.pipeline.signed_webhooks`), not by an API key: the events land in the project that
``EVALSVC_INNGEST_PROJECT`` names. Body: one event or a JSON array of events. Answers 200 with the
per-record summary; 401 for an unsigned, wrongly signed, stale or replayed request; 422 for a
malformed payload. Nothing of a refused request is stored.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from evalsvc.pipeline.ingest import IngestReport
from evalsvc.pipeline.signed_webhooks import SIGNATURE_HEADER, ingest_inngest_webhook

from ..deps import EngineDep, RunnerDep, SettingsDep
from ..responses import JSONBytes
from .ingest import hand_over, read_body

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


@router.post("/inngest", summary="Receive Inngest function.finished / failed / cancelled system events")
async def inngest_webhook(request: Request, engine: EngineDep, settings: SettingsDep, runner: RunnerDep) -> JSONBytes:
    body = await read_body(request, settings.max_body_bytes)
    keys = [
        secret.get_secret_value()
        for secret in (settings.inngest_signing_key, settings.inngest_signing_key_fallback)
        if secret is not None and secret.get_secret_value().strip()
    ]

    def verify_and_ingest() -> IngestReport:
        return ingest_inngest_webhook(
            engine=engine,
            body=body,
            header=request.headers.get(SIGNATURE_HEADER),
            keys=keys,
            project=settings.inngest_project,
            max_batch_records=settings.max_batch_records,
            max_record_bytes=settings.max_record_bytes,
        )

    report = await run_in_threadpool(verify_and_ingest)
    await hand_over(runner, report)
    return JSONBytes({**report.summary(), "project": settings.inngest_project,
                      "items": [i.as_dict() for i in report.items]})  # fmt: skip
