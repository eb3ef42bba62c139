"""The generic JSON connector: records already in evalsvc's step-record shape.

Accepts a JSON array of records, ``{"records": [...]}``, or one record. Each record is
``source, run_key, step_key, attempt, name, kind, status, started_at, ended_at, input, output,
expected, error, parent_step_key, model, input_tokens, output_tokens, cost_usd, attributes`` plus the
run-level ``workflow``, ``run_status`` and ``run_attributes``; ``source`` defaults to ``json``.

    >>> from connectors.generic_json import JsonConnector
    >>> JsonConnector().to_steps({"records": [{"run_key": "r1", "step_key": "a"}]})
    [{'run_key': 'r1', 'step_key': 'a', 'source': 'json'}]
"""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec
import orjson

from evalsvc.errors import PayloadRejected
from evalsvc.schemas import StepRecord
from evalsvc.wire import WireRecord, decode_record, split_array

from .base import register

__all__ = ["JsonConnector"]


@register
class JsonConnector:
    name: ClassVar[str] = "json"

    def __init__(self, *, max_record_bytes: int = 1024 * 1024) -> None:
        self.max_record_bytes = max_record_bytes

    @classmethod
    def from_settings(cls, settings: Any) -> JsonConnector:
        return cls(max_record_bytes=settings.max_record_bytes)

    def from_bytes(self, body: bytes) -> list[WireRecord | StepRecord | dict[str, Any]] | None:
        """A JSON array of records, still encoded, to step records: each record is decoded on its
        own by the fast lane (:mod:`evalsvc.wire`), and one it does not take as it is comes back
        as a dict, for the usual validation. None for any other body (the caller decodes it and
        calls :meth:`to_steps`)."""
        if body.lstrip()[:1] != b"[":
            return None
        try:
            raws = split_array(body)
        except msgspec.DecodeError:
            return None
        out: list[WireRecord | StepRecord | dict[str, Any]] = []
        small = self.max_record_bytes // 2  # a record near the limit gets the exact size check
        for raw in raws:
            rec = decode_record(raw) if len(raw) <= small else None
            if rec is not None:
                out.append(rec)
                continue
            try:
                item = orjson.loads(bytes(raw))
            except orjson.JSONDecodeError:
                return None  # JSON that orjson does not read (a number out of range): the caller says so
            out.extend(self.to_steps([item]))
        return out

    def to_steps(self, payload: Any) -> list[StepRecord | dict[str, Any]]:
        if isinstance(payload, dict) and "records" in payload:
            payload = payload["records"]
            if not isinstance(payload, list):
                raise PayloadRejected("must be a JSON array of step records", field="records")
        elif isinstance(payload, dict):
            payload = [payload]
        if not isinstance(payload, list):
            raise PayloadRejected(
                "expected a JSON array of step records, an object with 'records', or one record", field="records"
            )
        out: list[StepRecord | dict[str, Any]] = []
        for item in payload:
            if isinstance(item, dict) and "source" not in item:
                item = {**item, "source": "json"}
            out.append(item)
        return out
