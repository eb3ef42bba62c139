"""Walk an OTLP ``ExportTraceServiceRequest`` (OTLP/JSON dict or decoded protobuf) into flat spans.

Both walkers yield the same :class:`RawSpan` s: ids as lowercase hex, enums as ints, int64 as
ints, attributes as a flat ``{key: python value}`` dict. What real producers send beyond the
spec is accepted (hex or base64 ids, ``"SPAN_KIND_*"`` / ``"STATUS_CODE_*"`` names, int64 as JSON
numbers or strings, camelCase or snake_case keys). A span with a bad field is reported on its own
with the field's path (``resourceSpans.0.scopeSpans.0.spans.3.spanId``); a document whose shape
is not OTLP at all raises :class:`~evalsvc.errors.PayloadRejected`::

    >>> from connectors.otlp_decode import walk_json
    >>> doc = {"resourceSpans": [{"scopeSpans": [{"spans": [
    ...     {"traceId": "5B8EFFF798038103D269B633813FC60C", "spanId": "EEE19B7EC3C1B174", "name": "s",
    ...      "kind": "SPAN_KIND_SERVER", "startTimeUnixNano": 1544712660000000000,
    ...      "attributes": [{"key": "n", "value": {"intValue": "3"}}]}]}]}]}
    >>> spans, rejected = walk_json(doc)
    >>> spans[0].trace_id, spans[0].kind, spans[0].attrs, rejected
    ('5b8efff798038103d269b633813fc60c', 2, {'n': 3}, [])
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from dataclasses import dataclass, field
from typing import Any

from evalsvc.errors import PayloadRejected

__all__ = ["RawSpan", "Rejected", "walk_json", "walk_proto"]

_HEX = re.compile(r"[0-9a-fA-F]+")
KIND_NAMES = {"SPAN_KIND_UNSPECIFIED": 0, "SPAN_KIND_INTERNAL": 1, "SPAN_KIND_SERVER": 2, "SPAN_KIND_CLIENT": 3,
              "SPAN_KIND_PRODUCER": 4, "SPAN_KIND_CONSUMER": 5}  # fmt: skip
STATUS_NAMES = {"STATUS_CODE_UNSET": 0, "STATUS_CODE_OK": 1, "STATUS_CODE_ERROR": 2}


@dataclass(slots=True)
class RawSpan:
    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    kind: int
    start_ns: int | None
    end_ns: int | None
    attrs: dict[str, Any]
    status_code: int
    status_message: str
    resource: dict[str, Any]
    scope: str | None
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    loc: tuple[int, int, int] = (0, 0, 0)  # resourceSpans, scopeSpans and spans index

    @property
    def path(self) -> str:
        i, j, k = self.loc
        return f"resourceSpans.{i}.scopeSpans.{j}.spans.{k}"


@dataclass(slots=True)
class Rejected:
    """A span that was not translated: where it is, which field and why."""

    path: str
    field: str
    reason: str

    @property
    def message(self) -> str:
        return f"{self.path}.{self.field}: {self.reason}"


class SpanError(ValueError):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field, self.reason = field, reason


# ---- scalar helpers ---------------------------------------------------------------------------


def _id_hex(value: Any, size: int, name: str, *, required: bool) -> str | None:
    """A trace (16 bytes) or span (8 bytes) id given as hex (the spec) or base64 (what some send)."""
    if value is None or value == "":
        if required:
            raise SpanError(name, "is missing")
        return None
    if not isinstance(value, str):
        raise SpanError(name, f"must be a hex string, got {type(value).__name__}")
    if len(value) == 2 * size and _HEX.fullmatch(value):
        out = value.lower()
    else:
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != size:
            raise SpanError(name, f"must be {2 * size} hex digits (or base64 of {size} bytes), got {value[:64]!r}")
        out = raw.hex()
    if out.count("0") == len(out):
        if required:
            raise SpanError(name, "is all zeros (an invalid id)")
        return None
    return out


def _bytes_id(value: bytes, size: int, name: str, *, required: bool) -> str | None:
    if not value:
        if required:
            raise SpanError(name, "is missing")
        return None
    if len(value) != size:
        raise SpanError(name, f"must be {size} bytes, got {len(value)}")
    if not any(value):
        if required:
            raise SpanError(name, "is all zeros (an invalid id)")
        return None
    return value.hex()


def _int64(value: Any, name: str) -> int | None:
    if value is None or value == "":
        return None
    if type(value) is int:
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            raise SpanError(name, f"must be an integer (number or decimal string), got {value[:64]!r}") from None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise SpanError(name, f"must be an integer, got {type(value).__name__}")


def _enum(value: Any, names: dict[str, int], name: str, top: int) -> int:
    if value is None:
        return 0
    if type(value) is int and 0 <= value <= top:
        return value
    if isinstance(value, str):
        got = names.get(value)
        if got is None:  # short names ("ERROR", "CLIENT") and digits
            got = names.get(next(iter(names)).rsplit("_", 1)[0] + "_" + value.upper()) if value else None
        if got is None and value.isdigit() and int(value) <= top:
            got = int(value)
        if got is not None:
            return got
    raise SpanError(name, f"must be 0..{top} or one of {', '.join(names)}, got {value!r}")


# ---- OTLP/JSON --------------------------------------------------------------------------------


def _json_value(v: Any) -> Any:
    """An OTLP/JSON ``AnyValue`` as a Python value (bytes stay base64 text)."""
    if not v:
        return None
    if not isinstance(v, dict):
        raise ValueError(f"must be an AnyValue object, got {type(v).__name__}")
    for k, x in v.items():
        if k == "stringValue" or k == "string_value":
            return x if isinstance(x, str) else str(x)
        if k == "intValue" or k == "int_value":
            return x if type(x) is int else int(x)
        if k == "doubleValue" or k == "double_value":
            f = float(x)
            return f if math.isfinite(f) else str(f)
        if k == "boolValue" or k == "bool_value":
            return bool(x)
        if k == "arrayValue" or k == "array_value":
            return [_json_value(i) for i in (x or {}).get("values") or ()]
        if k == "kvlistValue" or k == "kvlist_value":
            return _json_attrs((x or {}).get("values"))
        if k == "bytesValue" or k == "bytes_value":
            return x
    return None


def _json_attrs(kvs: Any) -> dict[str, Any]:
    if not kvs:
        return {}
    out: dict[str, Any] = {}
    for kv in kvs:
        key = kv["key"]
        try:
            out[key] = _json_value(kv.get("value"))
        except (ValueError, TypeError, AttributeError) as exc:
            raise SpanError(f"attributes.{key}", str(exc) or "is not a valid AnyValue") from None
    return out


def _get(d: dict[str, Any], camel: str, snake: str) -> Any:
    v = d.get(camel)
    return d.get(snake) if v is None else v


def _list(d: Any, camel: str, snake: str, path: str) -> list[Any]:
    if not isinstance(d, dict):
        raise PayloadRejected(f"must be an object, got {type(d).__name__}", field=path)
    v = _get(d, camel, snake)
    if v is None:
        return []
    if not isinstance(v, list):
        raise PayloadRejected(f"must be an array, got {type(v).__name__}", field=f"{path}.{camel}" if path else camel)
    return v


def _json_span(s: dict[str, Any], resource: dict[str, Any], scope: str | None) -> RawSpan:
    get = s.get
    trace = _id_hex(_get(s, "traceId", "trace_id"), 16, "traceId", required=True)
    span = _id_hex(_get(s, "spanId", "span_id"), 8, "spanId", required=True)
    parent = _id_hex(_get(s, "parentSpanId", "parent_span_id"), 8, "parentSpanId", required=False)
    try:
        attrs = _json_attrs(get("attributes"))
    except (KeyError, TypeError, AttributeError):
        raise SpanError("attributes", "must be an array of {key, value}") from None
    status = get("status") or {}
    if not isinstance(status, dict):
        raise SpanError("status", "must be an object")
    name = get("name")
    events: list[tuple[str, dict[str, Any]]] = []
    for i, ev in enumerate(get("events") or ()):
        if not isinstance(ev, dict):
            raise SpanError(f"events.{i}", "must be an object")
        try:
            events.append((ev.get("name") or "", _json_attrs(ev.get("attributes"))))
        except SpanError as exc:
            raise SpanError(f"events.{i}.{exc.field}", exc.reason) from None
        except (KeyError, TypeError, AttributeError):
            raise SpanError(f"events.{i}.attributes", "must be an array of {key, value}") from None
    links = []
    for ln in get("links") or ():
        if isinstance(ln, dict):
            lt = _id_hex(_get(ln, "traceId", "trace_id"), 16, "links.traceId", required=False)
            ls = _id_hex(_get(ln, "spanId", "span_id"), 8, "links.spanId", required=False)
            if lt and ls:
                links.append(f"{lt}:{ls}")
    return RawSpan(
        trace_id=trace or "",
        span_id=span or "",
        parent_id=parent,
        name=name if isinstance(name, str) else "",
        kind=_enum(get("kind"), KIND_NAMES, "kind", 5),
        start_ns=_int64(_get(s, "startTimeUnixNano", "start_time_unix_nano"), "startTimeUnixNano"),
        end_ns=_int64(_get(s, "endTimeUnixNano", "end_time_unix_nano"), "endTimeUnixNano"),
        attrs=attrs,
        status_code=_enum(status.get("code"), STATUS_NAMES, "status.code", 2),
        status_message=status.get("message") or "",
        resource=resource,
        scope=scope,
        events=events,
        links=links,
    )


def walk_json(doc: Any) -> tuple[list[RawSpan], list[Rejected]]:
    """Spans of one OTLP/JSON ``ExportTraceServiceRequest``, and the spans rejected with why."""
    if not isinstance(doc, dict):
        raise PayloadRejected(
            f"must be an OTLP ExportTraceServiceRequest object, got {type(doc).__name__}", field="body"
        )
    if "resourceSpans" not in doc and "resource_spans" not in doc:
        raise PayloadRejected("is not an OTLP trace export: it has no 'resourceSpans'", field="body")
    spans: list[RawSpan] = []
    rejected: list[Rejected] = []
    for i, rs in enumerate(_list(doc, "resourceSpans", "resource_spans", "")):
        rpath = f"resourceSpans.{i}"
        res = rs.get("resource") if isinstance(rs, dict) else None
        try:
            resource = _json_attrs((res or {}).get("attributes")) if isinstance(res, dict) else {}
        except (SpanError, KeyError, TypeError, AttributeError) as exc:
            raise PayloadRejected(f"has a bad attribute: {exc}", field=f"{rpath}.resource.attributes") from None
        for j, ss in enumerate(_list(rs, "scopeSpans", "scope_spans", rpath)):
            spath = f"{rpath}.scopeSpans.{j}"
            sc = ss.get("scope") if isinstance(ss, dict) else None
            scope = sc.get("name") if isinstance(sc, dict) else None
            for k, s in enumerate(_list(ss, "spans", "spans", spath)):
                try:
                    if not isinstance(s, dict):
                        raise SpanError("", f"a span must be an object, got {type(s).__name__}")
                    span = _json_span(s, resource, scope)
                except SpanError as exc:
                    rejected.append(Rejected(f"{spath}.spans.{k}", exc.field, exc.reason))
                    continue
                span.loc = (i, j, k)
                spans.append(span)
    return spans, rejected


# ---- protobuf ---------------------------------------------------------------------------------


def _pb_value(v: Any) -> Any:
    text = v.string_value  # the common case first: no WhichOneof for a non-empty string
    if text:
        return text
    which = v.WhichOneof("value")
    if which == "string_value":
        return text
    if which == "int_value":
        return v.int_value
    if which == "double_value":
        f = v.double_value
        return f if math.isfinite(f) else str(f)
    if which == "bool_value":
        return v.bool_value
    if which == "array_value":
        return [_pb_value(i) for i in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _pb_value(kv.value) for kv in v.kvlist_value.values}
    if which == "bytes_value":
        return base64.b64encode(v.bytes_value).decode()
    return None


def _pb_attrs(kvs: Any) -> dict[str, Any]:
    # strings inline (most attributes); anything else, and the empty string, through _pb_value
    return {kv.key: s if (s := (v := kv.value).string_value) else _pb_value(v) for kv in kvs}


def walk_proto(msg: Any) -> tuple[list[RawSpan], list[Rejected]]:
    """Spans of a decoded ``ExportTraceServiceRequest`` protobuf message (walked directly)."""
    spans: list[RawSpan] = []
    rejected: list[Rejected] = []
    for i, rs in enumerate(msg.resource_spans):
        resource = _pb_attrs(rs.resource.attributes)
        for j, ss in enumerate(rs.scope_spans):
            scope = ss.scope.name or None
            for k, s in enumerate(ss.spans):
                tid, sid, pid = s.trace_id, s.span_id, s.parent_span_id
                if len(tid) != 16 or len(sid) != 8 or (pid and len(pid) != 8) or not any(tid) or not any(sid):
                    try:  # the slow path, for the reason
                        _bytes_id(tid, 16, "traceId", required=True)
                        _bytes_id(sid, 8, "spanId", required=True)
                        _bytes_id(pid, 8, "parentSpanId", required=False)
                    except SpanError as exc:
                        rejected.append(Rejected(f"resourceSpans.{i}.scopeSpans.{j}.spans.{k}", exc.field, exc.reason))
                        continue
                status = s.status
                events = [(ev.name, _pb_attrs(ev.attributes)) for ev in s.events] if s.events else []
                links = [f"{ln.trace_id.hex()}:{ln.span_id.hex()}" for ln in s.links] if s.links else []
                spans.append(
                    RawSpan(
                        tid.hex(),
                        sid.hex(),
                        pid.hex() if pid and any(pid) else None,
                        s.name,
                        s.kind,
                        s.start_time_unix_nano or None,
                        s.end_time_unix_nano or None,
                        _pb_attrs(s.attributes),
                        status.code,
                        status.message,
                        resource,
                        scope,
                        events,
                        links,
                        (i, j, k),
                    )
                )
    return spans, rejected
