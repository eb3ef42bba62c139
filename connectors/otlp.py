"""OpenTelemetry traces (OTLP/JSON and OTLP protobuf) to step records: one span, one step.

A span is a step (``step_key`` = span id, ``parent_step_key`` = parent span id, attempt 1: OTel has
no attempts), and the spans of a trace form a run (``run_key`` = trace id), unless one of the
``group_by`` attributes (span first, then resource) is present: then its value is the run key, so
the traces of one workflow run form one run. An exported span has ended, so every step is final:
``failed`` when the span's status is ERROR or it has an ``exception`` event, ``completed``
otherwise. Input, output, model, tokens, cost and kind come from the GenAI, OpenInference,
Vercel AI SDK, LangSmith and Traceloop attributes (:mod:`connectors.otlp_semconv`); the other
attributes are kept, bounded, in ``attributes``.

Payloads: an ``ExportTraceServiceRequest`` as an OTLP/JSON dict, as a decoded protobuf message,
as serialized protobuf bytes, or a list of such documents (what ``evalsvc ingest FILE --connector
otlp`` passes: a JSON document, or JSON lines as the collector's file exporter writes them)::

    >>> from connectors.otlp import OtlpConnector
    >>> doc = {"resourceSpans": [{"scopeSpans": [{"spans": [{
    ...     "traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174", "name": "chat gpt-4o",
    ...     "startTimeUnixNano": "1544712660000000000", "endTimeUnixNano": "1544712661000000000",
    ...     "attributes": [{"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}},
    ...                    {"key": "gen_ai.usage.output_tokens", "value": {"intValue": 7}}]}]}]}]}
    >>> [rec] = OtlpConnector().to_steps(doc)
    >>> rec.run_key, rec.step_key, rec.kind, rec.status.value, rec.output_tokens
    ('5b8efff798038103d269b633813fc60c', 'eee19b7ec3c1b174', 'llm', 'completed', 7)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import orjson
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from evalsvc.errors import PayloadRejected
from evalsvc.schemas import StepError, StepRecord, StepStatus

from .base import register
from .otlp_decode import RawSpan, Rejected, SpanError, walk_json, walk_proto
from .otlp_semconv import map_attributes

__all__ = ["OtlpConnector", "Translation", "decode_protobuf"]

SOURCE = "otel"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SPAN_KINDS = ("unspecified", "internal", "server", "client", "producer", "consumer")
MAX_LINKS = 16


@dataclass
class Translation:
    """Step records of the spans that translated, and the spans that did not (with why)."""

    records: list[StepRecord] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)

    @property
    def spans(self) -> int:
        return len(self.records) + len(self.rejected)


def decode_protobuf(body: bytes) -> ExportTraceServiceRequest:
    """Serialized ``ExportTraceServiceRequest`` bytes, decoded; :class:`PayloadRejected` if they are not."""
    try:
        return ExportTraceServiceRequest.FromString(body)
    except (DecodeError, ValueError) as exc:
        raise PayloadRejected(
            f"is not a valid OTLP ExportTraceServiceRequest protobuf message ({exc})", field="body"
        ) from None


def _ts(ns: int | None, name: str) -> datetime | None:
    if not ns:
        return None
    try:
        return _EPOCH + timedelta(microseconds=ns // 1000)
    except OverflowError:
        raise SpanError(name, f"{ns} is out of range for a time in nanoseconds since 1970") from None


_DEFAULTS = {name: f.get_default(call_default_factory=True) for name, f in StepRecord.model_fields.items()}
_set = object.__setattr__


def _construct(fields: dict[str, Any]) -> StepRecord:
    """A :class:`StepRecord` of fields that are valid by construction, without a validation pass:
    what ``StepRecord.model_construct`` does, minus its per-call look-up of every default (a third
    of the cost of translating a span). ``tests/test_connector_otlp.py`` checks that the records
    equal their validated copies."""
    rec = StepRecord.__new__(StepRecord)
    values = _DEFAULTS.copy()
    values["run_attributes"] = {}
    values.update(fields)
    _set(rec, "__dict__", values)
    _set(rec, "__pydantic_fields_set__", set(fields))
    _set(rec, "__pydantic_extra__", None)
    _set(rec, "__pydantic_private__", None)
    return rec


def _exception(events: list[tuple[str, dict[str, Any]]]) -> dict[str, Any] | None:
    for name, attrs in events:
        if name == "exception":
            return attrs
    return None


@register
class OtlpConnector:
    """Translate OTLP trace exports; ``group_by`` names the attributes that key a run."""

    name: ClassVar[str] = "otlp"

    def __init__(
        self, *, group_by: Sequence[str] = (), max_attributes: int = 128, max_attribute_chars: int = 4096
    ) -> None:
        self.group_by = tuple(group_by)
        self.max_attributes = max_attributes
        self.max_attribute_chars = max_attribute_chars

    @classmethod
    def from_settings(cls, settings: Any) -> OtlpConnector:
        """The connector as evalsvc's settings configure it (``EVALSVC_OTLP_*``)."""
        return cls(
            group_by=[k.strip() for k in str(settings.otlp_group_by).split(",") if k.strip()],
            max_attributes=settings.otlp_max_attributes,
            max_attribute_chars=settings.otlp_max_attribute_chars,
        )

    def to_steps(self, payload: Any) -> list[StepRecord | dict[str, Any]]:
        """Step records of every span; a payload with a bad span raises :class:`PayloadRejected`
        naming it (``POST /v1/traces`` uses :meth:`translate` and answers per span instead)."""
        out = self.translate(payload)
        if out.rejected:
            first = out.rejected[0]
            more = f" (and {len(out.rejected) - 1} more bad spans)" if len(out.rejected) > 1 else ""
            raise PayloadRejected(first.reason + more, field=f"{first.path}.{first.field}".rstrip("."))
        return list(out.records)

    def translate(self, payload: Any) -> Translation:
        if isinstance(payload, list):
            out = Translation()
            for n, doc in enumerate(payload):
                part = self.translate(doc)
                out.records.extend(part.records)
                for r in part.rejected:
                    r.path = f"documents.{n}.{r.path}"
                out.rejected.extend(part.rejected)
            return out
        if isinstance(payload, bytes | bytearray | memoryview):
            payload = decode_protobuf(bytes(payload))
        if isinstance(payload, ExportTraceServiceRequest):
            spans, rejected = walk_proto(payload)
        else:
            spans, rejected = walk_json(payload)
        out = Translation(rejected=rejected)
        records = out.records
        for span in spans:
            try:
                records.append(self.record(span))
            except SpanError as exc:
                rejected.append(Rejected(span.path, exc.field, exc.reason))
            except (TypeError, ValueError, AttributeError, KeyError, IndexError) as exc:
                # content in a shape no convention describes: this span is refused, the others kept
                rejected.append(Rejected(span.path, "attributes", f"could not be mapped ({exc!r})"))
        return out

    # ---- one span --------------------------------------------------------------------------

    def _run_key(self, span: RawSpan) -> str:
        for key in self.group_by:
            value = span.attrs.get(key)
            if value is None or value == "":
                value = span.resource.get(key)
            if value is not None and value != "":
                text = value if isinstance(value, str) else orjson.dumps(value).decode()
                if len(text) > 256:
                    raise SpanError(f"attributes.{key}", "is longer than 256 characters, too long for a run key")
                return text
        return span.trace_id

    def _attributes(self, rest: dict[str, Any], span: RawSpan) -> dict[str, Any]:
        rest["otel.trace_id"] = span.trace_id
        if 0 < span.kind < len(_SPAN_KINDS):
            rest["otel.span_kind"] = _SPAN_KINDS[span.kind]
        if span.scope:
            rest["otel.scope"] = span.scope
        service = span.resource.get("service.name")
        if service is not None:
            rest["service.name"] = service
        if span.links:
            rest["otel.links"] = span.links[:MAX_LINKS]
        return rest

    def record(self, span: RawSpan) -> StepRecord:
        """One span as a step record (already valid: built without a second validation pass)."""
        m = map_attributes(span.attrs, max_attributes=self.max_attributes, max_chars=self.max_attribute_chars)
        started = _ts(span.start_ns, "startTimeUnixNano")
        ended = _ts(span.end_ns, "endTimeUnixNano")
        if started is not None and ended is not None and ended < started:
            raise SpanError("endTimeUnixNano", "is before startTimeUnixNano")
        exc = _exception(span.events) if span.events else None
        fields: dict[str, Any] = {
            "source": SOURCE,
            "run_key": self._run_key(span),
            "step_key": span.span_id,
            "attempt": 1,
            "kind": (m.kind or "span")[:64],
            "attributes": self._attributes(m.rest, span),
        }
        if span.name:
            fields["name"] = span.name[:256]
        if span.parent_id:
            fields["parent_step_key"] = span.parent_id
        if started is not None:
            fields["started_at"] = started
        if ended is not None:
            fields["ended_at"] = ended
        if span.status_code == 2 or exc is not None:
            exc = exc or {}
            etype = exc.get("exception.type") or span.attrs.get("error.type")
            message = exc.get("exception.message") or span.status_message or etype or "span status is ERROR"
            stack = exc.get("exception.stacktrace")
            fields["error"] = StepError(
                type=None if etype is None else str(etype),
                message=str(message),
                stack=None if stack is None else str(stack),
            )
            fields["status"] = StepStatus.failed
        else:
            fields["status"] = StepStatus.completed
        if m.input is not None:
            fields["input"] = m.input
        if m.output is not None:
            fields["output"] = m.output
        if m.model is not None:
            fields["model"] = m.model
        if m.input_tokens is not None:
            fields["input_tokens"] = m.input_tokens
        if m.output_tokens is not None:
            fields["output_tokens"] = m.output_tokens
        if m.cost_usd is not None:
            fields["cost_usd"] = m.cost_usd
        service = span.resource.get("service.name")
        if isinstance(service, str) and service and not service.startswith("unknown_service"):
            fields["workflow"] = service[:256]
        return _construct(fields)
