"""LangSmith run payloads to runs and steps.

Reads what the LangSmith SDKs send to ``POST /runs/batch`` (``{"post": [run-create], "patch":
[run-update]}``), a list of runs, ``{"runs": [...]}`` or one run. The create and the update of a
run are merged on its id (the JS SDK's update carries no ``id``: it is the last segment of
``dotted_order``). A trace (``trace_id``) is one run; each LangSmith run is one step (see
``docs/connectors/langsmith.md``): ``run_type`` is the kind (``llm``, ``chain``, ``tool``, ...),
``parent_run_id`` (or the ``dotted_order`` prefix) the parent, ``error`` the step's error, and
an LLM run's model and token counts come from its outputs or ``extra.metadata``. Times may be
ISO strings or epoch milliseconds. LangSmith has no attempts: every step is attempt 1. Pure.

    >>> from connectors.langsmith import LangSmithConnector
    >>> recs = LangSmithConnector().to_steps({"post": [{"id": "r1", "trace_id": "r1", "name": "ChatOpenAI",
    ...     "run_type": "llm", "start_time": "1728803138291", "inputs": {"q": "hi"}}],
    ...     "patch": [{"id": "r1", "end_time": "1728803148730", "outputs": {"a": "hello"}}]})
    >>> [(r["run_key"], r["kind"], r["status"], r["ended_at"]) for r in recs]
    [('r1', 'llm', 'completed', '2024-10-13T07:05:48.730000+00:00')]
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from evalsvc.errors import PayloadRejected
from evalsvc.schemas import StepRecord

from .base import register

__all__ = ["LangSmithConnector", "runs_to_steps"]

SOURCE = "langsmith"
_EPOCH_MS_MIN = 10**11  # a number this large is epoch milliseconds (JS SDK), not seconds


def _time(value: Any, field_name: str) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = value / 1000 if value >= _EPOCH_MS_MIN else value
        return datetime.fromtimestamp(seconds, tz=UTC).isoformat()
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise PayloadRejected(f"is neither an ISO time nor epoch milliseconds: {value!r}",
                                  field=field_name) from None  # fmt: skip
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).isoformat()
    raise PayloadRejected("must be an ISO time or epoch milliseconds", field=field_name)


def _dotted(run: dict[str, Any]) -> list[str]:
    """Run ids along the ``dotted_order`` path (``<time>Z<id>.<time>Z<id>...``), root first."""
    order = run.get("dotted_order")
    if not isinstance(order, str) or not order:
        return []
    return [part.split("Z", 1)[1] for part in order.split(".") if "Z" in part]


def _run_id(run: dict[str, Any]) -> str | None:
    rid = run.get("id")
    if isinstance(rid, str) and rid:
        return rid
    path = _dotted(run)
    return path[-1] if path else None


def _merge(post: list[Any], patch: list[Any], where: str) -> list[tuple[str, dict[str, Any]]]:
    runs: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    for part, items in (("post", post), ("patch", patch)):
        for i, run in enumerate(items):
            at = f"{where}{part}.{i}"
            if not isinstance(run, dict):
                raise PayloadRejected("a run must be a JSON object", field=at)
            rid = _run_id(run)
            if rid is None:
                raise PayloadRejected("a run needs its id (or a dotted_order ending in it)", field=f"{at}.id")
            if rid not in runs:
                runs[rid] = {}
                order.append(rid)
            runs[rid].update({k: v for k, v in run.items() if v is not None})
    return [(rid, runs[rid]) for rid in order]


def _usage(outputs: Any, run: dict[str, Any]) -> tuple[int | None, int | None]:
    candidates: list[tuple[Any, str, str]] = []
    if isinstance(outputs, dict):
        candidates += [(outputs.get("usage_metadata"), "input_tokens", "output_tokens"),
                       (outputs.get("usage"), "prompt_tokens", "completion_tokens"),
                       (outputs.get("usage"), "input_tokens", "output_tokens")]  # fmt: skip
    candidates.append((run, "prompt_tokens", "completion_tokens"))
    for block, inp, out in candidates:
        if isinstance(block, dict) and isinstance(block.get(inp), int) and isinstance(block.get(out), int):
            return block[inp], block[out]
    return None, None


def _model(run: dict[str, Any]) -> str | None:
    outputs, inputs = run.get("outputs"), run.get("inputs")
    metadata = (run.get("extra") or {}).get("metadata") or {}
    invocation = (run.get("extra") or {}).get("invocation_params") or {}
    for value in (
        outputs.get("model") if isinstance(outputs, dict) else None,
        metadata.get("ls_model_name"),
        invocation.get("model"),
        inputs.get("model") if isinstance(inputs, dict) else None,
    ):
        if isinstance(value, str) and value:
            return value
    return None


def _trace(rid: str, runs: dict[str, dict[str, Any]]) -> str:
    """The trace of a run: its ``trace_id``, the root of its ``dotted_order``, or its parents' root."""
    seen: set[str] = set()
    while rid not in seen:
        seen.add(rid)
        run = runs.get(rid, {})
        path = _dotted(run)
        if run.get("trace_id") or path:
            return str(run.get("trace_id") or path[0])
        parent = run.get("parent_run_id")
        if not parent or parent not in runs:
            return str(parent or rid)
        rid = str(parent)
    return rid


def _step(rid: str, run: dict[str, Any], trace_id: str, roots: dict[str, str], at: str) -> dict[str, Any]:
    path = _dotted(run)
    parent = run.get("parent_run_id") or (path[-2] if len(path) > 1 else None)
    metadata = (run.get("extra") or {}).get("metadata") or {}
    error = run.get("error")
    ended = _time(run.get("end_time"), f"{at}.end_time")
    rec: dict[str, Any] = {
        "source": SOURCE,
        "run_key": str(trace_id),
        "step_key": rid,
        "attempt": 1,
        "name": str(run.get("name") or run.get("run_type") or "run"),
        "kind": str(run.get("run_type") or "chain"),
        "status": "failed" if error else ("completed" if ended else "running"),
        "started_at": _time(run.get("start_time"), f"{at}.start_time"),
        "ended_at": ended,
        "input": run.get("inputs"),
        "output": run.get("outputs") if run.get("outputs") not in ({}, None) else None,
        "parent_step_key": str(parent) if parent else None,
        "workflow": roots.get(str(trace_id)) or run.get("session_name"),
        "run_attributes": {"langsmith.session_name": run["session_name"]} if run.get("session_name") else {},
        "attributes": {
            "langsmith.run_type": run.get("run_type"),
            "langsmith.dotted_order": run.get("dotted_order"),
            "langsmith.tags": run.get("tags") or None,
            "langsmith.provider": metadata.get("ls_provider"),
        },
    }
    if error:
        rec["error"] = {"type": "LangSmithRunError", "message": str(error)}
    rec["model"] = _model(run) if rec["kind"] in ("llm", "embedding") else None
    rec["input_tokens"], rec["output_tokens"] = _usage(run.get("outputs"), run)
    cost = run.get("total_cost")
    if isinstance(cost, int | float | str) and not isinstance(cost, bool):
        try:
            rec["cost_usd"] = float(cost)
        except ValueError:
            raise PayloadRejected(f"is not a number: {cost!r}", field=f"{at}.total_cost") from None
    rec["attributes"] = {k: v for k, v in rec["attributes"].items() if v is not None}
    return {k: v for k, v in rec.items() if v is not None}


def runs_to_steps(post: list[Any], patch: list[Any] | None = None, *, where: str = "") -> list[dict[str, Any]]:
    """Run creates (and their updates) to step records, one per LangSmith run."""
    merged = _merge(post, patch or [], where)
    by_id = dict(merged)
    traces = {rid: _trace(rid, by_id) for rid, _ in merged}
    roots: dict[str, str] = {}
    for rid, run in merged:  # the workflow of a trace is its root run's name
        if not run.get("parent_run_id") and len(_dotted(run)) <= 1 and run.get("name"):
            roots[traces[rid]] = str(run["name"])
    return [_step(rid, run, traces[rid], roots, f"{where}runs.{rid}") for rid, run in merged]


@register
class LangSmithConnector:
    """LangSmith run payloads: a trace is a run, a LangSmith run a step."""

    name: ClassVar[str] = "langsmith"

    def to_steps(self, payload: Any) -> list[StepRecord | dict[str, Any]]:
        docs = [payload] if isinstance(payload, dict) else payload
        if not isinstance(docs, list) or not docs:
            raise PayloadRejected("expected {post, patch}, {runs}, a run, or a list of them", field="body")
        post: list[Any] = []
        patch: list[Any] = []
        for n, doc in enumerate(docs):
            where = f"{n}." if len(docs) > 1 else ""
            if not isinstance(doc, dict):
                raise PayloadRejected("must be a JSON object", field=where.rstrip(".") or "body")
            if "post" in doc or "patch" in doc:
                for part in ("post", "patch"):
                    value = doc.get(part, [])
                    if not isinstance(value, list):
                        raise PayloadRejected("must be an array of runs", field=f"{where}{part}")
                    (post if part == "post" else patch).extend(value)
            elif "runs" in doc:
                if not isinstance(doc["runs"], list):
                    raise PayloadRejected("must be an array of runs", field=f"{where}runs")
                post.extend(doc["runs"])
            else:
                post.append(doc)
        return list(runs_to_steps(post, patch))
