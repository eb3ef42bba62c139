"""The OTLP connector's translation: every file of ``../shared/fixtures/otel`` with its field values,
protobuf and JSON alike, ids, enums and int64 in every accepted spelling, errors, grouping and bounds."""

from __future__ import annotations

import base64
import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from connectors import get
from connectors.otlp import OtlpConnector
from evalsvc.errors import PayloadRejected
from evalsvc.schemas import StepRecord

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "otel"
needs_fixtures = pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"shared fixtures not found at {FIXTURES}")

USER_PARIS = [{"role": "user", "content": "What is the weather in Paris? Use the tool."}]
UNICORN = (
    "In the hush of night, a gentle unicorn trotted through a moonlit field, sprinkling stardust on every "
    "sleeping blanket until the whole world drifted peacefully into dreams."
)

# file -> span id -> expected fields (absent fields are checked to be None where listed in NONE)
EXPECTED: dict[str, dict[str, dict[str, Any]]] = {
    "genai_official_openai_tools_chat.otlp.json": {
        "7551d7999cc49749": dict(
            run_key="ba91fea61f0ff272079fa544fc6083c9", name="chat gpt-4.1-nano", kind="llm", status="completed",
            model="gpt-4.1-nano-2025-04-14", input_tokens=56, output_tokens=14, input=None, output=None,
            parent_step_key=None, error=None, started_at=datetime(2026, 6, 2, 21, 11, 21, 697000, tzinfo=UTC),
            attrs={"gen_ai.request.model": "gpt-4.1-nano", "server.port": 443,
                   "gen_ai.response.finish_reasons": ["tool_calls"], "otel.span_kind": "client",
                   "otel.scope": "@opentelemetry/instrumentation-openai"},
        ),
    },
    "genai_traceloop_openai_tools_chat.otlp.json": {
        "673d6c3726c46220": dict(
            run_key="d764d92d0b17bbf599738c8a3480ed4d", kind="llm", status="completed",
            model="gpt-4.1-nano-2025-04-14", input_tokens=56, output_tokens=14, input=USER_PARIS,
            output=[{"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_LHX7eZPJ3MbyWgBdg4Pk9idO", "name": "get_weather", "arguments": {"city": "Paris"}}]}],
            parent_step_key=None, error=None,
            attrs={"gen_ai.provider.name": "openai", "gen_ai.usage.total_tokens": 70},
            not_attrs=["gen_ai.input.messages", "gen_ai.output.messages"],
        ),
    },
    "openinference_openai_tools_chat.otlp.json": {
        "7ae40e90d08d49a0": dict(
            run_key="11ba7f7788bfcc93b09a60537e4d868c", name="OpenAI Chat Completions", kind="llm",
            status="completed", model="gpt-4.1-nano-2025-04-14", input_tokens=56, output_tokens=30, input=USER_PARIS,
            output=[{"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_u2pjsFzugXyY04mM1oDWyt3q", "name": "get_weather", "arguments": '{"city": "Paris"}'}]}],
            parent_step_key=None, error=None, attrs={"llm.provider": "openai", "llm.token_count.total": 86},
            not_attrs=["input.value", "output.value", "llm.input_messages.0.message.role"],
        ),
    },
    "langsmith_otel_openai_params_chat.otlp.json": {
        "6759083dcb25cf8d": dict(
            run_key="71cf19bb84453e7d515b8f49aa00e6fe", name="ChatOpenAI", kind="llm", status="completed",
            model="gpt-4.1-nano-2025-04-14", input_tokens=22, output_tokens=6,
            input=[{"role": "system", "content": "You are a terse assistant."},
                   {"role": "user", "content": "Name three primary colors."}],
            output=[{"role": "assistant", "content": "Red, blue, yellow."}], parent_step_key=None, error=None,
            attrs={"langsmith.span.kind": "llm", "langsmith.trace.session_name": "langsmith-openai-fixtures"},
            not_attrs=["gen_ai.prompt", "gen_ai.completion"],
        ),
    },
    "vercel_aisdk_generatetext_parent_child.otlp.json": {
        "8b66b60781e335a3": dict(
            run_key="d069bf14279b319a53e31f48db2e135e", name="ai.generateText.doGenerate", kind="llm",
            status="completed", model="gpt-5.4-nano-2026-03-17", input_tokens=17, output_tokens=40,
            input=[{"role": "user", "content": "Write a one-sentence bedtime story about a unicorn."}],
            output=[{"role": "assistant", "content": UNICORN}], parent_step_key="60d37a7b3ae50b38", error=None,
            attrs={"ai.settings.maxRetries": 2, "ai.model.provider": "openai.responses"},
        ),
        "60d37a7b3ae50b38": dict(
            run_key="d069bf14279b319a53e31f48db2e135e", name="ai.generateText", kind="chain", status="completed",
            model="gpt-5.4-nano", input_tokens=17, output_tokens=40,
            input=[{"role": "user", "content": "Write a one-sentence bedtime story about a unicorn."}],
            output=[{"role": "assistant", "content": UNICORN}], parent_step_key=None, error=None,
        ),
    },
    "otlp_spec_example_trace.json": {
        "eee19b7ec3c1b174": dict(
            run_key="5b8efff798038103d269b633813fc60c", name="I'm a server span", kind="span", status="completed",
            parent_step_key="eee19b7ec3c1b173", workflow="my.service", model=None, input=None, output=None,
            error=None, started_at=datetime(2018, 12, 13, 14, 51, tzinfo=UTC),
            ended_at=datetime(2018, 12, 13, 14, 51, 1, tzinfo=UTC),
            attrs={"my.span.attr": "some value", "otel.span_kind": "server", "service.name": "my.service"},
        ),
    },
    "jaeger_multi_resource_error_status.otlp.json": {
        sid: dict(
            run_key=run, name=f"test-general-conversion-{int(sid, 16)}", kind="span", status="failed",
            parent_step_key=parent, workflow="service-x", error={"message": "span status is ERROR"},
            attrs={"peer.ipv4": 23456, "blob": "AAAwOQ==", "temperature": 72.5, "otel.span_kind": kind,
                   "otel.links": ["00000000000000010000000000000000:0000000000000004",
                                  "00000000000000ff0000000000000000:00000000000000ff"]},
        )
        for sid, run, parent, kind in (
            ("0000000000000002", "00000000000000010000000000000000", "0000000000000003", "server"),
            ("0000000000000003", "00000000000000020000000000000000", "0000000000000010", "client"),
            ("0000000000000004", "00000000000000010000000000000000", "0000000000000011", "producer"),
            ("0000000000000005", "00000000000000020000000000000000", "0000000000000010", "consumer"),
        )
    },
}  # fmt: skip


def load(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return doc


def to_protobuf(doc: dict[str, Any]) -> ExportTraceServiceRequest:
    """An OTLP/JSON document as the protobuf message an SDK sends (ids as bytes), through protobuf's
    own JSON parser (which wants base64 ids, so the hex ids are converted first)."""
    doc = copy.deepcopy(doc)
    for rs in doc["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            for s in ss["spans"]:
                for obj in [s, *s.get("links", [])]:
                    for key in ("traceId", "spanId", "parentSpanId"):
                        if obj.get(key):
                            obj[key] = base64.b64encode(bytes.fromhex(obj[key])).decode()
    return json_format.ParseDict(doc, ExportTraceServiceRequest())


def by_span(records: list[Any]) -> dict[str, StepRecord]:
    assert all(isinstance(r, StepRecord) for r in records)
    return {r.step_key: r for r in records}


@needs_fixtures
def test_every_fixture_file_is_covered() -> None:
    assert sorted(p.name for p in FIXTURES.iterdir() if p.suffix == ".json") == sorted(EXPECTED)


@needs_fixtures
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_fields(name: str) -> None:
    records = by_span(get("otlp").to_steps(load(name)))
    assert sorted(records) == sorted(EXPECTED[name])
    for sid, want in EXPECTED[name].items():
        rec = records[sid]
        assert rec.source == "otel" and rec.attempt == 1
        for fld, value in want.items():
            if fld == "attrs":
                for k, v in value.items():
                    assert rec.attributes.get(k) == v, (sid, k, rec.attributes.get(k))
            elif fld == "not_attrs":
                assert not set(value) & set(rec.attributes), (sid, value)
            elif fld == "error":
                got = rec.error.model_dump(exclude_none=True) if rec.error else None
                assert got == value, (sid, got)
            elif fld == "status":
                assert rec.status is not None and rec.status.value == value
            else:
                assert getattr(rec, fld) == value, (sid, fld, getattr(rec, fld))
        assert rec.attributes["otel.trace_id"] == want.get("run_key", rec.run_key)


@needs_fixtures
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_protobuf_and_json_give_the_same_records(name: str) -> None:
    doc = load(name)
    conn = OtlpConnector()
    from_json = [r.model_dump() for r in conn.translate(doc).records]
    message = to_protobuf(doc)
    from_message = [r.model_dump() for r in conn.translate(message).records]
    from_bytes = [r.model_dump() for r in conn.translate(message.SerializeToString()).records]
    assert from_json == from_message == from_bytes
    assert from_json


@needs_fixtures
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_records_equal_their_validated_copies(name: str) -> None:
    """The connector builds records without a validation pass; they must be exactly what
    validation would make of them."""
    for rec in OtlpConnector().translate(load(name)).records:
        again = StepRecord.model_validate(rec.model_dump(exclude_unset=True))
        assert again == rec
        assert again.model_fields_set == rec.model_fields_set


# ---- spellings real producers use ---------------------------------------------------------------


def export(*spans: dict[str, Any], resource: dict[str, Any] | None = None) -> dict[str, Any]:
    attrs = [{"key": k, "value": {"stringValue": v}} for k, v in (resource or {}).items()]
    return {"resourceSpans": [{"resource": {"attributes": attrs}, "scopeSpans": [{"spans": list(spans)}]}]}


def span(**kw: Any) -> dict[str, Any]:
    out = {"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203331", "name": "s",
           "startTimeUnixNano": "1700000000000000000", "endTimeUnixNano": "1700000001000000000"}  # fmt: skip
    out.update(kw)
    return out


def kv(key: str, value: dict[str, Any]) -> dict[str, Any]:
    return {"key": key, "value": value}


@pytest.mark.parametrize(
    ("overrides", "field", "want"),
    [
        ({"traceId": "CvdlGRbNQ92ESOshHIAxnA==", "spanId": "t61rcWkgMzE="}, "run_key", "0af7651916cd43dd8448eb211c80319c"),
        ({"traceId": "CvdlGRbNQ92ESOshHIAxnA==", "spanId": "t61rcWkgMzE="}, "step_key", "b7ad6b7169203331"),
        ({"traceId": "0AF7651916CD43DD8448EB211C80319C"}, "run_key", "0af7651916cd43dd8448eb211c80319c"),
        ({"parentSpanId": "AAAAAAAAAAE="}, "parent_step_key", "0000000000000001"),
        ({"parentSpanId": ""}, "parent_step_key", None),
        ({"parentSpanId": "0000000000000000"}, "parent_step_key", None),
        ({"status": {"code": "STATUS_CODE_ERROR", "message": "boom"}}, "status", "failed"),
        ({"status": {"code": "ERROR"}}, "status", "failed"),
        ({"status": {"code": 2}}, "status", "failed"),
        ({"status": {"code": "STATUS_CODE_OK"}}, "status", "completed"),
        ({"status": {"code": 0}}, "status", "completed"),
        ({"status": {}}, "status", "completed"),
        ({"kind": "SPAN_KIND_CLIENT"}, "span_kind", "client"),
        ({"kind": 5}, "span_kind", "consumer"),
        ({"startTimeUnixNano": 1700000000000000000, "endTimeUnixNano": 1700000000500000000}, "latency", 0.5),
        ({"startTimeUnixNano": "1700000000000000000", "endTimeUnixNano": "1700000000250000000"}, "latency", 0.25),
        ({"attributes": [kv("gen_ai.usage.input_tokens", {"intValue": "12"})]}, "input_tokens", 12),
        ({"attributes": [kv("gen_ai.usage.input_tokens", {"intValue": 12})]}, "input_tokens", 12),
        ({"attributes": [kv("gen_ai.usage.prompt_tokens", {"intValue": 9}),
                         kv("gen_ai.usage.completion_tokens", {"intValue": 4})]}, "output_tokens", 4),
        ({"attributes": [kv("llm.token_count.prompt", {"intValue": "7"})]}, "input_tokens", 7),
        ({"attributes": [kv("ai.usage.promptTokens", {"intValue": 5})]}, "input_tokens", 5),
        ({"attributes": [kv("gen_ai.usage.cost", {"doubleValue": 0.0021})]}, "cost_usd", 0.0021),
        ({"attributes": [kv("llm.cost.total", {"doubleValue": "0.5"})]}, "cost_usd", 0.5),
        ({"attributes": [kv("gen_ai.operation.name", {"stringValue": "execute_tool"})]}, "kind", "tool"),
        ({"attributes": [kv("gen_ai.operation.name", {"stringValue": "invoke_agent"})]}, "kind", "agent"),
        ({"attributes": [kv("gen_ai.operation.name", {"stringValue": "embeddings"})]}, "kind", "embedding"),
        ({"attributes": [kv("openinference.span.kind", {"stringValue": "RETRIEVER"})]}, "kind", "retriever"),
        ({"attributes": [kv("traceloop.span.kind", {"stringValue": "workflow"})]}, "kind", "workflow"),
        ({"attributes": [kv("ai.operationId", {"stringValue": "ai.toolCall"})]}, "kind", "tool"),
        ({"attributes": [kv("llm.request.type", {"stringValue": "chat"})]}, "kind", "llm"),
    ],
)  # fmt: skip
def test_spellings(overrides: dict[str, Any], field: str, want: Any) -> None:
    [rec] = OtlpConnector().to_steps(export(span(**overrides)))
    assert isinstance(rec, StepRecord)
    got: Any
    if field == "status":
        got = rec.status.value if rec.status else None
    elif field == "span_kind":
        got = rec.attributes.get("otel.span_kind")
    elif field == "latency":
        assert rec.started_at and rec.ended_at
        got = (rec.ended_at - rec.started_at).total_seconds()
    else:
        got = getattr(rec, field)
    assert got == want


def test_exception_event_is_the_error() -> None:
    ev = {"name": "exception", "timeUnixNano": "1700000000500000000", "attributes": [
        kv("exception.type", {"stringValue": "TimeoutError"}), kv("exception.message", {"stringValue": "took 30 s"}),
        kv("exception.stacktrace", {"stringValue": "Traceback ...\nTimeoutError: took 30 s"})]}  # fmt: skip
    [rec] = OtlpConnector().to_steps(export(span(status={"code": 2, "message": "failed"}, events=[ev])))
    assert isinstance(rec, StepRecord) and rec.status and rec.status.value == "failed"
    assert rec.error is not None
    assert (rec.error.type, rec.error.message) == ("TimeoutError", "took 30 s")
    assert rec.error.stack and rec.error.stack.endswith("took 30 s")
    # an exception event alone (status unset) is an error too; error.type and the status message otherwise
    [rec] = OtlpConnector().to_steps(export(span(events=[ev])))
    assert isinstance(rec, StepRecord) and rec.status and rec.status.value == "failed"
    attrs = [kv("error.type", {"stringValue": "RateLimitError"})]
    [rec] = OtlpConnector().to_steps(export(span(status={"code": 2, "message": "429 from upstream"}, attributes=attrs)))
    assert isinstance(rec, StepRecord) and rec.error is not None
    assert (rec.error.type, rec.error.message) == ("RateLimitError", "429 from upstream")


def test_indexed_prompt_and_completion_and_system_instructions() -> None:
    attrs = [
        kv("gen_ai.prompt.0.role", {"stringValue": "system"}), kv("gen_ai.prompt.0.content", {"stringValue": "Be brief."}),
        kv("gen_ai.prompt.1.role", {"stringValue": "user"}), kv("gen_ai.prompt.1.content", {"stringValue": "Hi"}),
        kv("gen_ai.completion.0.role", {"stringValue": "assistant"}),
        kv("gen_ai.completion.0.tool_calls.0.name", {"stringValue": "lookup"}),
        kv("gen_ai.completion.0.tool_calls.0.arguments", {"stringValue": '{"q": 1}'}),
    ]  # fmt: skip
    [rec] = OtlpConnector().to_steps(export(span(attributes=attrs)))
    assert isinstance(rec, StepRecord)
    assert rec.input == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert rec.output == [{"role": "assistant", "content": None,
                           "tool_calls": [{"id": None, "name": "lookup", "arguments": '{"q": 1}'}]}]  # fmt: skip
    assert not any(k.startswith(("gen_ai.prompt", "gen_ai.completion")) for k in rec.attributes)

    new = [
        kv("gen_ai.system_instructions", {"stringValue": '[{"type":"text","content":"Answer in French."}]'}),
        kv("gen_ai.input.messages", {"stringValue": '[{"role":"user","parts":[{"type":"text","content":"Hi"}]}]'}),
    ]  # fmt: skip
    [rec] = OtlpConnector().to_steps(export(span(attributes=new)))
    assert isinstance(rec, StepRecord)
    assert rec.input == [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hi"}]


def test_openinference_chain_values_and_tool_spans() -> None:
    attrs = [kv("openinference.span.kind", {"stringValue": "CHAIN"}),
             kv("input.value", {"stringValue": '{"question": "why?"}'}), kv("output.value", {"stringValue": "because"})]  # fmt: skip
    [rec] = OtlpConnector().to_steps(export(span(attributes=attrs)))
    assert isinstance(rec, StepRecord)
    assert (rec.kind, rec.input, rec.output) == ("chain", {"question": "why?"}, "because")
    tool = [kv("gen_ai.operation.name", {"stringValue": "execute_tool"}),
            kv("gen_ai.tool.call.arguments", {"stringValue": '{"city":"Paris"}'}),
            kv("gen_ai.tool.call.result", {"stringValue": '{"temp_c":21}'})]  # fmt: skip
    [rec] = OtlpConnector().to_steps(export(span(attributes=tool)))
    assert isinstance(rec, StepRecord)
    assert (rec.kind, rec.input, rec.output) == ("tool", {"city": "Paris"}, {"temp_c": 21})


def test_group_by_span_then_resource_attribute() -> None:
    conn = OtlpConnector(group_by=["workflow.run_id", "temporal.workflow_id"])
    a = span(attributes=[kv("workflow.run_id", {"stringValue": "run-42"})])
    b = span(spanId="b7ad6b7169203332", traceId="1af7651916cd43dd8448eb211c80319c")
    c = span(spanId="b7ad6b7169203333", traceId="2af7651916cd43dd8448eb211c80319c")
    recs = conn.translate(export(a, b, resource={"temporal.workflow_id": "wf-7"})).records
    assert [r.run_key for r in recs] == ["run-42", "wf-7"]
    assert recs[1].attributes["otel.trace_id"] == "1af7651916cd43dd8448eb211c80319c"
    [rec] = conn.translate(export(c)).records
    assert rec.run_key == "2af7651916cd43dd8448eb211c80319c"  # no grouping attribute: the trace


def test_attributes_are_bounded() -> None:
    attrs = [kv(f"a{i}", {"stringValue": "x" * 10}) for i in range(20)] + [kv("long", {"stringValue": "y" * 100})]
    [rec] = OtlpConnector(max_attributes=5, max_attribute_chars=50).to_steps(export(span(attributes=attrs)))
    assert isinstance(rec, StepRecord)
    assert [k for k in rec.attributes if k.startswith("a")] == ["a0", "a1", "a2", "a3", "a4"]
    assert rec.attributes["otel.dropped_attributes"] == 16
    [rec] = OtlpConnector(max_attribute_chars=50).to_steps(export(span(attributes=attrs)))
    assert isinstance(rec, StepRecord)
    assert rec.attributes["long"] == "y" * 50 + "…"


def test_values_of_every_type() -> None:
    attrs = [
        kv("s", {"stringValue": "v"}), kv("i", {"intValue": "-3"}), kv("d", {"doubleValue": 1.5}),
        kv("b", {"boolValue": True}), kv("raw", {"bytesValue": "AAE="}), kv("empty", {}),
        kv("arr", {"arrayValue": {"values": [{"intValue": 1}, {"stringValue": "two"}]}}),
        kv("map", {"kvlistValue": {"values": [kv("k", {"boolValue": False})]}}),
        kv("nan", {"doubleValue": "NaN"}),
    ]  # fmt: skip
    doc = export(span(attributes=attrs))
    [rec] = OtlpConnector().to_steps(doc)
    assert isinstance(rec, StepRecord)
    want = {"s": "v", "i": -3, "d": 1.5, "b": True, "raw": "AAE=", "empty": None, "arr": [1, "two"],
            "map": {"k": False}, "nan": "nan"}  # fmt: skip
    assert {k: rec.attributes[k] for k in want} == want
    [again] = OtlpConnector().translate(to_protobuf(doc)).records
    assert {k: again.attributes[k] for k in want} == want


@pytest.mark.parametrize(
    ("overrides", "field", "reason"),
    [
        ({"traceId": "xyz"}, "traceId", "32 hex digits"),
        ({"traceId": ""}, "traceId", "missing"),
        ({"traceId": "00000000000000000000000000000000"}, "traceId", "all zeros"),
        ({"spanId": "b7ad6b71692033"}, "spanId", "16 hex digits"),
        ({"parentSpanId": 12}, "parentSpanId", "hex string"),
        ({"kind": "SPAN_KIND_SIDEWAYS"}, "kind", "SPAN_KIND_SERVER"),
        ({"status": {"code": 7}}, "status.code", "0..2"),
        ({"startTimeUnixNano": "soon"}, "startTimeUnixNano", "integer"),
        ({"endTimeUnixNano": "1600000000000000000"}, "endTimeUnixNano", "before startTimeUnixNano"),
        ({"attributes": [kv("n", {"intValue": "many"})]}, "attributes.n", "invalid literal"),
    ],
)
def test_bad_spans_are_rejected_by_path(overrides: dict[str, Any], field: str, reason: str) -> None:
    good = span(spanId="b7ad6b7169203399")
    out = OtlpConnector().translate(export(good, span(**overrides)))
    assert [r.step_key for r in out.records] == ["b7ad6b7169203399"]
    [bad] = out.rejected
    assert (bad.path, bad.field) == ("resourceSpans.0.scopeSpans.0.spans.1", field)
    assert reason in bad.reason
    with pytest.raises(PayloadRejected) as info:
        OtlpConnector().to_steps(export(good, span(**overrides)))
    assert info.value.field == f"resourceSpans.0.scopeSpans.0.spans.1.{field}"


@pytest.mark.parametrize(
    ("payload", "field", "reason"),
    [
        ([1], "body", "got int"),
        ({"spans": []}, "body", "no 'resourceSpans'"),
        ({"resourceSpans": {}}, "resourceSpans", "must be an array"),
        ({"resourceSpans": [{"scopeSpans": "x"}]}, "resourceSpans.0.scopeSpans", "must be an array"),
        ({"resourceSpans": [{"scopeSpans": [{"spans": 3}]}]}, "resourceSpans.0.scopeSpans.0.spans", "must be an array"),
        (b"\x0a\xff\xff", "body", "protobuf"),
    ],
)
def test_unreadable_payloads_raise(payload: Any, field: str, reason: str) -> None:
    with pytest.raises(PayloadRejected) as info:
        OtlpConnector().translate(payload)
    assert info.value.field == field and reason in info.value.message


@needs_fixtures
def test_a_list_of_documents_as_the_cli_passes_it() -> None:
    docs = [load("otlp_spec_example_trace.json"), load("vercel_aisdk_generatetext_parent_child.otlp.json")]
    recs = OtlpConnector().to_steps(docs)
    assert [r.step_key for r in recs if isinstance(r, StepRecord)] == [
        "eee19b7ec3c1b174", "8b66b60781e335a3", "60d37a7b3ae50b38"]  # fmt: skip
    bad = copy.deepcopy(docs[1])
    bad["resourceSpans"][0]["scopeSpans"][0]["spans"][1]["spanId"] = "nope"
    out = OtlpConnector().translate([docs[0], bad])
    assert [r.path for r in out.rejected] == ["documents.1.resourceSpans.0.scopeSpans.0.spans.1"]


@pytest.mark.parametrize(
    "attrs",
    [
        [kv("gen_ai.input.messages", {"stringValue": '[1, "two", null, {"parts": "x"}, {"tool_calls": 5}]'})],
        [kv("gen_ai.output.messages", {"stringValue": '[{"role": "assistant", "parts": [3, {"type": "tool_call"}]}]'})],
        [kv("gen_ai.output.messages", {"stringValue": "[not json"})],
        [kv("llm.output_messages.0.message.tool_calls.0.tool_call", {"stringValue": "flat"}),
         kv("llm.output_messages.0.message.tool_calls.1.tool_call.function.name", {"stringValue": "f"})],
        [kv("llm.input_messages.x.message.role", {"stringValue": "user"})],
        [kv("gen_ai.prompt.0", {"stringValue": "text"}), kv("gen_ai.prompt.0.role", {"stringValue": "user"})],
        [kv("gen_ai.completion", {"stringValue": '{"choices": [5, {"message": 3}]}'})],
        [kv("ai.response.toolCalls", {"stringValue": '[{"toolName": "t"}, 7]'})],
        [kv("gen_ai.usage.input_tokens", {"stringValue": "-4"}), kv("gen_ai.usage.cost", {"stringValue": "free"})],
    ],
)  # fmt: skip
def test_odd_content_never_breaks_the_batch(attrs: list[dict[str, Any]]) -> None:
    """Content in shapes no convention describes is mapped as well as it can be, or refuses that
    one span; the request as a whole never fails."""
    out = OtlpConnector().translate(export(span(attributes=attrs), span(spanId="b7ad6b7169203399")))
    assert len(out.records) + len(out.rejected) == 2
    assert "b7ad6b7169203399" in [r.step_key for r in out.records]
    for rec in out.records:
        assert StepRecord.model_validate(rec.model_dump(exclude_unset=True)) == rec
