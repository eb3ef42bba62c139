"""Plain functions that make test data."""

from __future__ import annotations

from typing import Any


def record(run_key: str = "r1", step_key: str = "extract", **overrides: Any) -> dict[str, Any]:
    """One finished step record in the generic JSON shape."""
    base: dict[str, Any] = {
        "source": "json",
        "run_key": run_key,
        "step_key": step_key,
        "attempt": 1,
        "name": step_key,
        "kind": "llm",
        "status": "completed",
        "started_at": "2026-11-01T10:00:00Z",
        "ended_at": "2026-11-01T10:00:01.500Z",
        "input": {"text": "Invoice from ACME, total 12.50 EUR"},
        "output": {"total": 12.5},
        "workflow": "invoice-agent",
    }
    base.update(overrides)
    return base


SCHEMA_YAML = """
evaluators:
  - name: total_is_number
    scorer: json_schema
    target: {workflow: invoice-agent, step: "extract*"}
    params:
      schema: {type: object, required: [total], properties: {total: {type: number}}}
    on_fail: review
"""
