"""``POST /v1/ingest/{connector}``: a batch of records, answered item by item.

Body: a JSON array, ``{"records": [...]}``, one record, or JSON lines
(``Content-Type: application/x-ndjson``). Status 200 when every item was accepted or a duplicate,
207 when some were rejected, 422 when all were, 413 over the size or count limit.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool

from connectors import get as get_connector
from evalsvc.errors import InvalidInput, PayloadTooLarge
from evalsvc.pipeline._bulk import gc_paused
from evalsvc.pipeline.ingest import IngestReport, ingest_batch
from evalsvc.worker import Runner

from ..deps import EngineDep, ProjectDep, RunnerDep, SettingsDep
from ..responses import JSONBytes

router = APIRouter(prefix="/v1", tags=["ingest"])


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body is {declared} bytes; the limit is {limit}", field="body")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body is over the limit of {limit} bytes", field="body")
        chunks.append(chunk)
    return b"".join(chunks)


async def hand_over(runner: Runner, report: IngestReport) -> None:
    """Give the worker side what a stored batch made due: its pending evaluations, and a look for
    runs that became final when the project has run-level evaluators. A broker send may block:
    off the event loop."""
    if report.pending_eval_ids:
        await run_in_threadpool(runner.submit_scores, report.pending_eval_ids)
    if report.run_level:
        await run_in_threadpool(runner.submit_final_runs)


def _is_json_lines(content_type: str) -> bool:
    return "ndjson" in content_type or "jsonl" in content_type or "json-seq" in content_type


def decode_json(body: bytes, content_type: str) -> Any:
    if not body.strip():
        raise InvalidInput("request body is empty", field="body")
    if _is_json_lines(content_type):
        items = []
        for n, line in enumerate(body.splitlines(), start=1):
            if line.strip():
                try:
                    items.append(orjson.loads(line))
                except orjson.JSONDecodeError as exc:
                    raise InvalidInput(f"line {n} is not JSON: {exc}", field=f"body.line.{n}") from None
        return items
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"not valid JSON: {exc}", field="body") from None


@router.post("/ingest/{connector}", summary="Ingest a batch of execution records")
async def ingest(
    connector: str, request: Request, project: ProjectDep, engine: EngineDep, settings: SettingsDep, runner: RunnerDep
) -> Response:
    conn = get_connector(connector, settings)
    body = await read_body(request, settings.max_body_bytes)
    content_type = request.headers.get("content-type", "")

    def decode_and_ingest() -> IngestReport:
        # decoding a large body takes a while too: do it off the event loop, with the batch
        with gc_paused():
            # the JSON connector reads an array of records itself, in its fast lane (evalsvc/wire.py)
            fast = None if _is_json_lines(content_type) else getattr(conn, "from_bytes", None)
            items = fast(body) if fast is not None else None
            if items is None:
                items = conn.to_steps(decode_json(body, content_type))
            return ingest_batch(
                engine=engine,
                project_id=project.id or 0,
                items=items,
                max_batch_records=settings.max_batch_records,
                max_record_bytes=settings.max_record_bytes,
            )

    def answer(report: IngestReport) -> bytes:
        # ten thousand small dicts: built and encoded off the event loop too, with the collector
        # paused (it would walk the batch's objects, still alive, again and again)
        with gc_paused():
            return JSONBytes.encode({**report.summary(), "items": [i.as_dict() for i in report.items]})

    report = await run_in_threadpool(decode_and_ingest)
    await hand_over(runner, report)
    body_out = await run_in_threadpool(answer, report)
    rejected = report.count("rejected")
    status = 200 if rejected == 0 else 422 if rejected == len(report.items) else 207
    return Response(body_out, status_code=status, media_type="application/json")
