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

from evalsvc.errors import PayloadRejected
from evalsvc.schemas import StepRecord

from .base import register

__all__ = ["JsonConnector"]


@register
class JsonConnector:
    name: ClassVar[str] = "json"

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
