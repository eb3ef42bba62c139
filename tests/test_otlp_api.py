"""``POST /v1/traces`` through the HTTP API on both stores: OTLP/JSON and protobuf, gzip, the
OTLP answer with ``partial_success``, bad bodies (400, nothing stored), limits and overload."""

from __future__ import annotations

import asyncio
import gzip
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from evalsvc.api.main import create_app
from evalsvc.settings import Settings

from .conftest import Api, make_key
from .test_connector_otlp import EXPECTED, FIXTURES, export, kv, load, needs_fixtures, span, to_protobuf

PB = {"content-type": "application/x-protobuf"}
JS = {"content-type": "application/json"}

EVALUATORS = r"""
evaluators:
  - name: answer_not_empty
    scorer: not_empty
    target: {source: otel, kind: llm}
    params: {field: output.0.content}
  - name: no_email
    scorer: regex
    target: {source: otel, kind: llm}
    params: {pattern: '[\w.]+@[\w.]+', must_match: false, field: output.0.content}
"""


def chat(span_id: str, answer: str, *, trace: str = "0af7651916cd43dd8448eb211c80319c") -> Any:
    out = json.dumps([{"role": "assistant", "parts": [{"type": "text", "content": answer}]}])
    attrs = [kv("gen_ai.operation.name", {"stringValue": "chat"}), kv("gen_ai.output.messages", {"stringValue": out})]
    return span(traceId=trace, spanId=span_id, name="chat gpt-4o", attributes=attrs)


def stored_runs(api: Api) -> list[Any]:
    runs: list[Any] = api.get("/v1/runs").json()
    return runs


@needs_fixtures
def test_every_fixture_through_the_api(api: Api) -> None:
    for name in sorted(EXPECTED):
        body = (FIXTURES / name).read_bytes()
        r = api.post("/v1/traces", content=body, headers=JS)
        assert r.status_code == 200 and r.json() == {}, (name, r.text)
        assert r.headers["content-type"] == "application/json"
    for name, spans in EXPECTED.items():
        for sid, want in spans.items():
            run = api.get(f"/v1/runs/{want['run_key']}").json()
            [step] = [s for s in run["steps"] if s["step_key"] == sid]
            assert step["status"] == want["status"] and step["kind"] == want["kind"], (name, sid)
            assert step["parent_step_key"] == want["parent_step_key"]
            for fld in ("model", "input_tokens", "output_tokens", "input", "output"):
                if fld in want:
                    assert step[fld] == want[fld], (name, sid, fld)
            if want.get("error"):
                assert step["error"]["message"] == want["error"]["message"]
    # the same exports again, as protobuf: nothing new, nothing changed
    before = stored_runs(api)
    for name in sorted(EXPECTED):
        r = api.post("/v1/traces", content=to_protobuf(load(name)).SerializeToString(), headers=PB)
        assert r.status_code == 200 and r.headers["content-type"] == "application/x-protobuf"
        assert not ExportTraceServiceResponse.FromString(r.content).HasField("partial_success")
    assert stored_runs(api) == before


def test_protobuf_gzip_and_verdicts(api: Api) -> None:
    api.apply(EVALUATORS)
    doc = export(chat("00000000000000a1", "Paris is sunny."), chat("00000000000000a2", "mail me: x@example.com"),
                 chat("00000000000000a3", ""))  # fmt: skip
    body = gzip.compress(to_protobuf(doc).SerializeToString())
    r = api.post("/v1/traces", content=body, headers={**PB, "content-encoding": "gzip"})
    assert r.status_code == 200, r.text
    api.wait_idle()
    run = api.get("/v1/runs/0af7651916cd43dd8448eb211c80319c").json()
    verdicts = {s["step_key"]: {v["evaluator"]: v["passed"] for v in s["verdicts"]} for s in run["steps"]}
    assert verdicts == {
        "00000000000000a1": {"answer_not_empty": True, "no_email": True},
        "00000000000000a2": {"answer_not_empty": True, "no_email": False},
        "00000000000000a3": {"answer_not_empty": False, "no_email": True},
    }


def test_json_gzip(api: Api) -> None:
    body = gzip.compress(json.dumps(export(chat("00000000000000b1", "ok"))).encode())
    r = api.post("/v1/traces", content=body, headers={**JS, "content-encoding": "gzip"})
    assert r.status_code == 200 and r.json() == {}
    assert [s["step_key"] for s in api.get("/v1/runs/0af7651916cd43dd8448eb211c80319c").json()["steps"]] == [
        "00000000000000b1"
    ]


def test_partial_success_names_the_bad_spans(api: Api) -> None:
    doc = export(chat("00000000000000c1", "fine"), span(spanId="zz"), span(spanId="00000000000000c3", kind="SIDEWAYS"))
    r = api.post("/v1/traces", json=doc)
    assert r.status_code == 200
    partial = r.json()["partialSuccess"]
    assert partial["rejectedSpans"] == "2"
    assert "resourceSpans.0.scopeSpans.0.spans.1.spanId" in partial["errorMessage"]
    assert "resourceSpans.0.scopeSpans.0.spans.2.kind" in partial["errorMessage"]
    steps = api.get("/v1/runs/0af7651916cd43dd8448eb211c80319c").json()["steps"]
    assert [s["step_key"] for s in steps] == ["00000000000000c1"]
    # protobuf: a span id of the wrong length
    message = to_protobuf(export(chat("00000000000000c4", "fine")))
    message.resource_spans[0].scope_spans[0].spans.add(trace_id=b"\x01" * 16, span_id=b"\x02" * 3, name="short")
    r = api.post("/v1/traces", content=message.SerializeToString(), headers=PB)
    answer = ExportTraceServiceResponse.FromString(r.content)
    assert r.status_code == 200 and answer.partial_success.rejected_spans == 1
    assert "spans.1.spanId: must be 8 bytes, got 3" in answer.partial_success.error_message


@pytest.mark.parametrize(
    ("body", "headers", "status", "needle"),
    [
        (b"{not json", JS, 400, "not valid JSON"),
        (b"", JS, 400, "empty"),
        (b'{"resourceSpans": "all of them"}', JS, 400, "resourceSpans: must be an array"),
        (b'{"spans": []}', JS, 400, "no 'resourceSpans'"),
        (b"[1, 2]", JS, 400, "ExportTraceServiceRequest object"),
        (b"\x0a\x05\xff\xff\xff", PB, 400, "not a valid OTLP ExportTraceServiceRequest protobuf"),
        (b"this is not gzip at all", {**JS, "content-encoding": "gzip"}, 400, "not valid gzip"),
        (gzip.compress(b'{"resourceSpans": []}')[:-12], {**PB, "content-encoding": "gzip"}, 400, "truncated"),
        (b"{}", {"content-type": "text/plain"}, 415, "Content-Type must be"),
        (b"{}", {**JS, "content-encoding": "br"}, 415, "Content-Encoding must be gzip"),
    ],
)
def test_unreadable_bodies_store_nothing(
    api: Api, body: bytes, headers: dict[str, str], status: int, needle: str
) -> None:
    good = json.dumps(export(chat("00000000000000d1", "hi"))).encode()
    r = api.post("/v1/traces", content=body, headers=headers)
    assert r.status_code == status, r.text
    assert needle in r.json()["message"]
    assert stored_runs(api) == []
    assert api.post("/v1/traces", content=good, headers=JS).status_code == 200


def test_needs_the_api_key(client: TestClient, api: Api) -> None:
    body = json.dumps(export(chat("00000000000000e1", "hi"))).encode()
    r = client.post("/v1/traces", content=body, headers=JS)
    assert r.status_code == 401 and "Bearer" in r.json()["message"]
    r = client.post("/v1/traces", content=body, headers={**JS, "authorization": "Bearer nope"})
    assert r.status_code == 401
    assert stored_runs(api) == []


def test_limits(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", max_body_bytes=4096, max_batch_records=2)
    key = make_key(settings, "default")
    with TestClient(create_app(settings)) as client:
        api = Api(client, key)
        bomb = gzip.compress(b'{"resourceSpans": [' + b" " * 3_000_000 + b"]}")
        assert len(bomb) < 4096
        r = api.post("/v1/traces", content=bomb, headers={**JS, "content-encoding": "gzip"})
        assert r.status_code == 413 and "once decompressed" in r.json()["message"]
        spans = [chat(f"00000000000000f{i}", "x") for i in range(3)]
        r = api.post("/v1/traces", json=export(*spans))
        assert r.status_code == 413 and "3 spans; the limit is 2" in r.json()["message"]
        r = api.post("/v1/traces", content=b"{" * 5000, headers=JS)
        assert r.status_code == 413
        assert stored_runs(api) == []


def test_overload_answers_503_with_retry_after(tmp_path: Path) -> None:
    """One export is held open mid-body; with room for one request in flight, the next one is
    told to come back later, and is accepted once the first is done."""
    settings = Settings(home=tmp_path / "home", otlp_max_inflight_requests=1)
    key = make_key(settings, "default")
    auth = {"authorization": f"Bearer {key}"}
    body = json.dumps(export(chat("0000000000000101", "hi"))).encode()
    with TestClient(create_app(settings)) as client:
        app = client.app

        async def scenario() -> tuple[int, int, str | None, int]:
            release = asyncio.Event()
            started = asyncio.Event()

            async def slow_body() -> Any:
                yield body[:10]
                started.set()
                await release.wait()
                yield body[10:]

            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://evalsvc") as c:
                first = asyncio.create_task(c.post("/v1/traces", content=slow_body(), headers={**JS, **auth}))
                await asyncio.wait_for(started.wait(), 30)
                second = await c.post("/v1/traces", content=body, headers={**JS, **auth})
                release.set()
                done = await first
                third = await c.post("/v1/traces", content=body, headers={**JS, **auth})
            return second.status_code, done.status_code, second.headers.get("retry-after"), third.status_code

        busy, first, retry_after, later = asyncio.run(scenario())
    assert (busy, retry_after, first, later) == (503, "1", 200, 200)


@needs_fixtures
def test_cli_ingests_an_otlp_file_and_json_lines(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from evalsvc.cli import app

    env = {"EVALSVC_HOME": str(tmp_path / "home"), "EVALSVC_DATABASE_URL": "", "EVALSVC_BROKER_URL": ""}
    runner = CliRunner()
    path = FIXTURES / "vercel_aisdk_generatetext_parent_child.otlp.json"
    result = runner.invoke(app, ["ingest", str(path), "--connector", "otlp"], env=env)
    assert result.exit_code == 0, result.output
    assert "2 accepted" in result.output
    lines = tmp_path / "spans.jsonl"  # the Collector's file exporter: one export per line
    lines.write_text("\n".join(json.dumps(load(n)) for n in ("otlp_spec_example_trace.json",
                                                             "jaeger_multi_resource_error_status.otlp.json")))  # fmt: skip
    result = runner.invoke(app, ["ingest", str(lines), "--connector", "otlp"], env=env)
    assert result.exit_code == 0, result.output
    assert "5 accepted" in result.output
    bad = tmp_path / "bad.json"
    doc = load("otlp_spec_example_trace.json")
    doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["traceId"] = "nope"
    bad.write_text(json.dumps(doc))
    result = runner.invoke(app, ["ingest", str(bad), "--connector", "otlp"], env=env)
    assert result.exit_code == 4, result.output
    assert "traceId" in result.output
