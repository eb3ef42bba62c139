"""``POST /v1/traces``: OTLP/HTTP trace ingest (protobuf or JSON, optionally gzip-compressed).

Each span becomes a step (:mod:`connectors.otlp`), stored through the same
:func:`~evalsvc.pipeline.ingest.ingest_batch` as ``POST /v1/ingest/{connector}``; finished spans get
their evaluations scheduled. The answer is an ``ExportTraceServiceResponse`` in the request's
encoding, with ``partial_success`` counting and naming the spans that were rejected. Errors:

- 400: the body cannot be read as an OTLP trace export (not protobuf, not JSON, not gzip, wrong
  shape); nothing of it is stored;
- 401: no or unknown API key (``Authorization: Bearer KEY``, as the rest of the API);
- 413: body (compressed, or after decompression) over ``EVALSVC_MAX_BODY_BYTES``, or more spans
  than ``EVALSVC_MAX_BATCH_RECORDS``;
- 415: a content type other than ``application/x-protobuf`` / ``application/json``, or a
  content encoding other than ``gzip`` / ``identity``;
- 503 with ``Retry-After``: more than ``EVALSVC_OTLP_MAX_INFLIGHT_REQUESTS`` requests in progress.

    $ curl -X POST http://127.0.0.1:8000/v1/traces -H "Authorization: Bearer $KEY" \\
        -H 'Content-Type: application/json' --data @trace.json
    {}
"""

from __future__ import annotations

import zlib
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from connectors.otlp import OtlpConnector, Translation, decode_protobuf
from evalsvc.errors import BadOtlpBody, Overloaded, PayloadRejected, PayloadTooLarge, UnsupportedMediaType
from evalsvc.pipeline._bulk import gc_paused
from evalsvc.pipeline.ingest import IngestReport, ingest_batch
from evalsvc.settings import Settings

from ..deps import EngineDep, ProjectDep, RunnerDep, SettingsDep
from .ingest import hand_over, read_body

__all__ = ["router"]

router = APIRouter(tags=["ingest"])

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
MAX_MESSAGES = 5  # rejected spans named in partial_success.error_message


def gunzip(body: bytes, limit: int) -> bytes:
    """Decompress a gzip body, refusing to produce more than ``limit`` bytes (gzip bombs get 413)."""
    d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(body, limit + 1)
        if len(out) > limit or d.unconsumed_tail:
            raise PayloadTooLarge(f"body is over the limit of {limit} bytes once decompressed", field="body")
        out += d.flush()
    except zlib.error as exc:
        raise BadOtlpBody(f"Content-Encoding is gzip but the body is not valid gzip ({exc})", field="body") from None
    if not d.eof:
        raise BadOtlpBody("Content-Encoding is gzip but the body is a truncated gzip stream", field="body")
    if len(out) > limit:
        raise PayloadTooLarge(f"body is over the limit of {limit} bytes once decompressed", field="body")
    return out


def _media_type(request: Request) -> str:
    ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if ctype in (PROTOBUF, "application/protobuf", "application/vnd.google.protobuf"):
        return PROTOBUF
    if ctype == JSON or ctype.endswith("+json"):
        return JSON
    raise UnsupportedMediaType(
        f"Content-Type must be {PROTOBUF} or {JSON} (OTLP/HTTP), got {ctype or 'none'!r}", field="content-type"
    )


def _decode(body: bytes, media: str) -> Any:
    if not body:
        raise BadOtlpBody("request body is empty", field="body")
    if media == PROTOBUF:
        return decode_protobuf(body)
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadOtlpBody(f"not valid JSON: {exc}", field="body") from None


def _answer(media: str, rejected: int, messages: list[str]) -> Response:
    if media == PROTOBUF:
        msg = ExportTraceServiceResponse()
        if rejected:
            msg.partial_success.rejected_spans = rejected
            msg.partial_success.error_message = "; ".join(messages)
        return Response(msg.SerializeToString(), media_type=PROTOBUF)
    body: dict[str, Any] = {}
    if rejected:  # proto3 JSON: int64 as a string
        body["partialSuccess"] = {"rejectedSpans": str(rejected), "errorMessage": "; ".join(messages)}
    return Response(orjson.dumps(body), media_type=JSON)


class _Inflight:
    """Requests in progress, per app (one event loop: no lock needed)."""

    def __init__(self) -> None:
        self.count = 0


def _inflight(request: Request) -> _Inflight:
    state = request.app.state
    gauge: _Inflight | None = getattr(state, "otlp_inflight", None)
    if gauge is None:
        gauge = state.otlp_inflight = _Inflight()
    return gauge


def _connector(request: Request, settings: Settings) -> OtlpConnector:
    conn: OtlpConnector | None = getattr(request.app.state, "otlp_connector", None)
    if conn is None:
        conn = request.app.state.otlp_connector = OtlpConnector.from_settings(settings)
    return conn


@router.post("/v1/traces", summary="OTLP/HTTP trace export (protobuf or JSON): each span is a step")
async def export_traces(
    request: Request, project: ProjectDep, engine: EngineDep, settings: SettingsDep, runner: RunnerDep
) -> Response:
    media = _media_type(request)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("gzip", "identity", ""):
        raise UnsupportedMediaType(
            f"Content-Encoding must be gzip or identity, got {encoding!r}", field="content-encoding"
        )
    gauge = _inflight(request)
    if gauge.count >= settings.otlp_max_inflight_requests:
        raise Overloaded(f"{gauge.count} trace exports in progress (the limit is "
                         f"{settings.otlp_max_inflight_requests}); retry later")  # fmt: skip
    gauge.count += 1
    try:
        body = await read_body(request, settings.max_body_bytes)
        conn = _connector(request, settings)

        def decode_and_ingest() -> tuple[Translation, IngestReport]:
            with gc_paused():
                raw = gunzip(body, settings.max_body_bytes) if encoding == "gzip" else body
                try:
                    out = conn.translate(_decode(raw, media))
                except PayloadRejected as exc:
                    reason = exc.message.removeprefix(f"{exc.field}: ") if exc.field else exc.message
                    raise BadOtlpBody(reason, field=exc.field) from None
                if out.spans > settings.max_batch_records:
                    raise PayloadTooLarge(
                        f"export has {out.spans} spans; the limit is {settings.max_batch_records}", field="spans"
                    )
                report = ingest_batch(
                    engine=engine,
                    project_id=project.id or 0,
                    items=out.records,
                    max_batch_records=settings.max_batch_records,
                    max_record_bytes=settings.max_record_bytes,
                )
                return out, report

        out, report = await run_in_threadpool(decode_and_ingest)
    finally:
        gauge.count -= 1
    await hand_over(runner, report)
    messages = [r.message for r in out.rejected[:MAX_MESSAGES]]
    bad_items = [i for i in report.items if i.status == "rejected"]
    for item in bad_items[: max(0, MAX_MESSAGES - len(messages))]:
        span = out.records[item.index]
        messages.append(f"span {span.step_key}: {item.field}: {item.reason}")
    rejected = len(out.rejected) + len(bad_items)
    if rejected > len(messages):
        messages.append(f"and {rejected - len(messages)} more")
    return _answer(media, rejected, messages)
