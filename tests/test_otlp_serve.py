"""The front door: the OpenTelemetry SDK's own OTLP/HTTP exporter (protobuf) sends GenAI spans to a
running ``evalsvc serve``; the spans come back as steps of a run, with their verdicts."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult
from opentelemetry.trace import Status, StatusCode

from .serve_process import running_serve

EVALUATORS = r"""
evaluators:
  - name: answer_not_empty
    scorer: not_empty
    target: {source: otel, kind: llm}
    params: {field: output.0.content}
  - name: answer_has_no_email
    scorer: regex
    target: {source: otel, kind: llm}
    params: {pattern: '[\w.+-]+@[\w-]+\.[\w.]+', must_match: false, field: output.0.content}
"""


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, str]]:
    with running_serve(tmp_path, {"EVALSVC_OTLP_GROUP_BY": "workflow.run_id"}) as served:
        yield served


def _messages(text: str) -> str:
    return json.dumps([{"role": "assistant", "parts": [{"type": "text", "content": text}]}])


def _emit(base: str, key: str, *, compression: Compression) -> tuple[str, str]:
    """An agent run as an instrumented app traces it; answers (trace id, run id)."""
    exporter = OTLPSpanExporter(
        endpoint=f"{base}/v1/traces", headers={"authorization": f"Bearer {key}"}, compression=compression, timeout=30
    )
    provider = TracerProvider(resource=Resource.create({"service.name": "weather-agent"}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    tracer = provider.get_tracer("weather-agent", "1.0")
    run_id = f"wf-{compression.value}"
    with tracer.start_as_current_span("invoke_agent weather-agent") as root:
        root.set_attribute("gen_ai.operation.name", "invoke_agent")
        root.set_attribute("workflow.run_id", run_id)
        for n, answer in enumerate(["It is sunny in Paris.", "Ask bob@example.com", ""]):
            with tracer.start_as_current_span("chat gpt-4o-mini") as s:
                s.set_attributes({
                    "gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o-mini",
                    "gen_ai.usage.input_tokens": 100 + n, "gen_ai.usage.output_tokens": 10 + n,
                    "gen_ai.input.messages": json.dumps([{"role": "user", "parts": [{"type": "text",
                                                                                     "content": f"q{n}"}]}]),
                    "gen_ai.output.messages": _messages(answer), "workflow.run_id": run_id,
                })  # fmt: skip
        with tracer.start_as_current_span("execute_tool get_weather") as tool:
            tool.set_attributes({"gen_ai.operation.name": "execute_tool", "workflow.run_id": run_id})
            tool.record_exception(TimeoutError("weather API timed out"))
            tool.set_status(Status(StatusCode.ERROR, "timed out"))
        trace_id = format(root.get_span_context().trace_id, "032x")
    assert provider.force_flush(30_000)
    provider.shutdown()
    return trace_id, run_id


def _wait_for_verdicts(client: httpx.Client, run_id: str, expected: int) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        r = client.get(f"/v1/runs/{run_id}")
        if r.status_code == 200:
            run: dict[str, Any] = r.json()
            verdicts = [v for s in run["steps"] for v in s["verdicts"] if v["status"] == "completed"]
            if len(run["steps"]) == 5 and len(verdicts) == expected:
                return run
        assert time.monotonic() < deadline, r.text
        time.sleep(0.2)


@pytest.mark.parametrize("compression", [Compression.NoCompression, Compression.Gzip])
def test_sdk_exporter_to_serve(served: tuple[str, str], compression: Compression) -> None:
    base, key = served
    with httpx.Client(base_url=base, headers={"authorization": f"Bearer {key}"}, timeout=30) as client:
        r = client.post("/v1/evaluators", content=EVALUATORS, headers={"content-type": "application/yaml"})
        assert r.status_code == 200, r.text
        trace_id, run_id = _emit(base, key, compression=compression)
        run = _wait_for_verdicts(client, run_id, expected=6)
    assert run["source"] == "otel" and run["workflow"] == "weather-agent"
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for step in run["steps"]:
        by_kind.setdefault(step["kind"], []).append(step)
        assert step["attributes"]["otel.trace_id"] == trace_id
        assert step["attributes"]["service.name"] == "weather-agent"
    [root] = by_kind["agent"]
    assert root["parent_step_key"] is None and root["status"] == "completed"
    assert {s["parent_step_key"] for s in by_kind["llm"] + by_kind["tool"]} == {root["step_key"]}
    verdicts = {
        s["output"][0]["content"]: {v["evaluator"]: v["passed"] for v in s["verdicts"]}
        for s in sorted(by_kind["llm"], key=lambda s: s["input_tokens"])
    }
    assert verdicts == {
        "It is sunny in Paris.": {"answer_not_empty": True, "answer_has_no_email": True},
        "Ask bob@example.com": {"answer_not_empty": True, "answer_has_no_email": False},
        "": {"answer_not_empty": False, "answer_has_no_email": True},
    }
    assert [s["model"] for s in by_kind["llm"]] == ["gpt-4o-mini"] * 3
    [tool] = by_kind["tool"]
    assert tool["status"] == "failed" and tool["verdicts"] == []
    assert tool["error"]["type"] == "TimeoutError" and tool["error"]["message"] == "weather API timed out"
    assert "Traceback" in tool["error"]["stack"] or "TimeoutError" in tool["error"]["stack"]


def test_sdk_exporter_with_a_wrong_key_fails(served: tuple[str, str]) -> None:
    base, _ = served
    exporter = OTLPSpanExporter(endpoint=f"{base}/v1/traces", headers={"authorization": "Bearer wrong"}, timeout=10)
    span = TracerProvider().get_tracer("t").start_span("y")
    span.end()
    assert exporter.export([span]) == SpanExportResult.FAILURE  # type: ignore[list-item]  # 401: not retried
    exporter.shutdown()  # type: ignore[no-untyped-call]
    with httpx.Client(base_url=base, headers={"authorization": f"Bearer {served[1]}"}) as client:
        assert client.get("/v1/runs").json() == []
