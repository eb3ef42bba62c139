"""Langfuse trace exports to runs and steps.

A Langfuse trace export (``{"trace": {...}, "observations": [...]}``, as the Langfuse UI's
"download trace" and ``GET /api/public/traces/{id}`` give it; the observations may also sit
inside ``trace``) is one run; each observation is one step (see ``docs/connectors/langfuse.md``):
``GENERATION`` becomes kind ``llm`` with model, tokens and cost, ``parentObservationId`` the parent
step, and ``level == "ERROR"`` with its ``statusMessage`` the step's error. Langfuse has no
attempts: every step is attempt 1. A list of exports works too. Pure: no I/O.

    >>> from connectors.langfuse import LangfuseConnector
    >>> recs = LangfuseConnector().to_steps({"trace": {"id": "t1", "name": "qa"}, "observations": [
    ...     {"id": "o1", "type": "GENERATION", "name": "chat", "model": "gpt-4o-mini",
    ...      "startTime": "2025-01-01T00:00:00Z", "endTime": "2025-01-01T00:00:01Z",
    ...      "usageDetails": {"input": 12, "output": 3}, "costDetails": {"total": 0.0001}}]})
    >>> [(r["run_key"], r["step_key"], r["kind"], r["input_tokens"], r["output_tokens"]) for r in recs]
    [('t1', 'o1', 'llm', 12, 3)]
"""

from __future__ import annotations

from typing import Any, ClassVar

import orjson

from evalsvc.errors import PayloadRejected
from evalsvc.schemas import StepRecord

from .base import register

__all__ = ["LangfuseConnector", "decode_json_text", "export_to_steps"]

SOURCE = "langfuse"
KINDS = {"GENERATION": "llm", "EMBEDDING": "embedding"}
RUN_ATTRS = ("sessionId", "userId", "tags", "environment", "release", "version")
STEP_ATTRS = ("level", "statusMessage", "modelParameters", "environment", "version", "promptName",
              "promptVersion", "completionStartTime", "timeToFirstToken")  # fmt: skip


def decode_json_text(value: Any) -> Any:
    """Langfuse keeps many inputs and outputs as JSON text: decode those, keep other text as is."""
    if isinstance(value, str) and value[:1] in ("{", "[", '"'):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
    return value


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number >= 0 else None


def _tokens(obs: dict[str, Any], *names: str) -> int | None:
    usage = obs.get("usageDetails") or obs.get("usage") or {}
    for source, key in [(usage, n) for n in names] + [(obs, n) for n in names]:
        if isinstance(source, dict):
            number = _number(source.get(key))
            if number is not None:
                return int(number)
    return None


def _cost(obs: dict[str, Any]) -> float | None:
    details = obs.get("costDetails")
    if isinstance(details, dict) and _number(details.get("total")) is not None:
        return _number(details["total"])
    for key in ("totalCost", "calculatedTotalCost"):
        if _number(obs.get(key)):
            return _number(obs[key])
    return None


def _step(obs: dict[str, Any], run: dict[str, Any], where: str) -> dict[str, Any]:
    obs_id, obs_type = obs.get("id"), obs.get("type")
    if not isinstance(obs_id, str) or not obs_id:
        raise PayloadRejected("an observation needs its id", field=f"{where}id")
    if not isinstance(obs_type, str) or not obs_type:
        raise PayloadRejected("an observation needs its type (SPAN, GENERATION, EVENT, ...)", field=f"{where}type")
    start, end = obs.get("startTime"), obs.get("endTime")
    if obs_type == "EVENT" and end is None:
        end = start  # events are points in time
    level = str(obs.get("level") or "DEFAULT").upper()
    rec: dict[str, Any] = {
        **run,
        "step_key": obs_id,
        "attempt": 1,
        "name": str(obs.get("name") or obs_type.lower()),
        "kind": KINDS.get(obs_type, obs_type.lower()),
        "started_at": start,
        "ended_at": end,
        "input": decode_json_text(obs.get("input")),
        "output": decode_json_text(obs.get("output")),
        "parent_step_key": obs.get("parentObservationId"),
        "attributes": {f"langfuse.{k}": obs[k] for k in STEP_ATTRS if obs.get(k) not in (None, "", {}, [])},
    }
    rec["attributes"]["langfuse.type"] = obs_type
    if level == "ERROR":
        rec["status"] = "failed"
        rec["error"] = {"type": "ERROR", "message": str(obs.get("statusMessage") or "observation level ERROR")}
    else:
        rec["status"] = "completed" if end else "running"
    if obs.get("model"):
        rec["model"] = str(obs["model"])
    rec["input_tokens"] = _tokens(obs, "input", "promptTokens", "inputUsage")
    rec["output_tokens"] = _tokens(obs, "output", "completionTokens", "outputUsage")
    if obs_type != "GENERATION" and not rec["input_tokens"] and not rec["output_tokens"]:
        rec["input_tokens"] = rec["output_tokens"] = None  # Langfuse writes 0 usage on every span
    rec["cost_usd"] = _cost(obs) if (obs_type == "GENERATION" or _cost(obs)) else None
    return {k: v for k, v in rec.items() if v is not None}


def export_to_steps(doc: dict[str, Any], *, where: str = "") -> list[dict[str, Any]]:
    """One Langfuse trace export (``{trace, observations}``) to step records."""
    trace = doc.get("trace")
    if not isinstance(trace, dict):
        raise PayloadRejected("must be the trace object of a Langfuse export", field=f"{where}trace")
    observations = doc.get("observations", trace.get("observations"))
    if not isinstance(observations, list):
        raise PayloadRejected("must be the trace's observations array", field=f"{where}observations")
    trace_id = trace.get("id")
    if not isinstance(trace_id, str) or not trace_id:
        raise PayloadRejected("must be the trace's id", field=f"{where}trace.id")
    run_attrs = {f"langfuse.{k}": trace[k] for k in RUN_ATTRS if trace.get(k) not in (None, "", [], {})}
    run: dict[str, Any] = {"source": SOURCE, "run_key": trace_id, "run_attributes": run_attrs}
    if trace.get("name"):
        run["workflow"] = str(trace["name"])
    out = []
    for i, obs in enumerate(observations):
        if not isinstance(obs, dict):
            raise PayloadRejected("an observation must be a JSON object", field=f"{where}observations.{i}")
        if obs.get("traceId") not in (None, trace_id):
            raise PayloadRejected(f"belongs to trace {obs['traceId']!r}, not {trace_id!r}",
                                  field=f"{where}observations.{i}.traceId")  # fmt: skip
        out.append(_step(obs, run, f"{where}observations.{i}."))
    return out


@register
class LangfuseConnector:
    """Langfuse trace exports: a trace is a run, an observation a step."""

    name: ClassVar[str] = "langfuse"

    def to_steps(self, payload: Any) -> list[StepRecord | dict[str, Any]]:
        docs = [payload] if isinstance(payload, dict) else payload
        if not isinstance(docs, list) or not docs:
            raise PayloadRejected("expected a Langfuse trace export {trace, observations} or a list of them",
                                  field="body")  # fmt: skip
        out: list[StepRecord | dict[str, Any]] = []
        for n, doc in enumerate(docs):
            where = f"{n}." if len(docs) > 1 else ""
            if not isinstance(doc, dict):
                raise PayloadRejected("a trace export must be a JSON object", field=where.rstrip(".") or "body")
            out.extend(export_to_steps(doc, where=where))
        return out
