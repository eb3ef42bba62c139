"""The tool-call normaliser: one ``ToolCall`` list from each provider's and convention's shape,
including the real OpenTelemetry fixtures (GenAI output messages, OpenInference attributes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from scorers.rule.tools import ToolCall, tool_calls, tool_schemas

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "otel"
PARIS = {"city": "Paris"}
ARGS = '{"city": "Paris"}'

SHAPES: dict[str, Any] = {
    "openai chat completion": {"choices": [{"message": {"role": "assistant", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": ARGS}}]}}]},
    "openai message list": [{"role": "user", "content": "weather?"}, {"role": "assistant", "content": None,
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": ARGS}}]}],
    "openai legacy function_call": {"role": "assistant", "function_call": {"name": "get_weather", "arguments": ARGS}},
    "openai responses api": {"output": [{"type": "reasoning", "summary": []},
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": ARGS}]},
    "anthropic message": {"role": "assistant", "content": [{"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": "c1", "name": "get_weather", "input": PARIS}]},
    "otel genai output messages": [{"role": "assistant", "finish_reason": "tool_call",
        "parts": [{"type": "tool_call", "id": "c1", "name": "get_weather", "arguments": PARIS}]}],
    "openinference nested": [{"message": {"role": "assistant", "tool_calls": [
        {"tool_call": {"id": "c1", "function": {"name": "get_weather", "arguments": ARGS}}}]}}],
    "openinference flattened": {
        "llm.output_messages.0.message.role": "assistant",
        "llm.output_messages.0.message.tool_calls.0.tool_call.id": "c1",
        "llm.output_messages.0.message.tool_calls.0.tool_call.function.name": "get_weather",
        "llm.output_messages.0.message.tool_calls.0.tool_call.function.arguments": ARGS,
    },
    "gemini": {"candidates": [{"content": {"role": "model", "parts": [
        {"functionCall": {"name": "get_weather", "args": PARIS}}]}}]},
    "langchain ai message": {"type": "ai", "content": "", "tool_calls": [
        {"name": "get_weather", "args": PARIS, "id": "c1", "type": "tool_call"}]},
    "json text": orjson.dumps({"choices": [{"message": {"tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": ARGS}}]}}]}).decode(),
}  # fmt: skip


@pytest.mark.parametrize("shape", SHAPES, ids=list(SHAPES))
def test_each_shape_gives_the_same_call(shape: str) -> None:
    (call,) = tool_calls(SHAPES[shape])
    assert (call.name, call.arguments, call.arguments_error) == ("get_weather", PARIS, None)


def test_order_and_several_calls_are_kept() -> None:
    flat = {
        f"llm.output_messages.0.message.tool_calls.{i}.tool_call.function.{k}": v
        for i, name in enumerate(["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k"])
        for k, v in (("name", name), ("arguments", "{}"))
    }
    assert [c.name for c in tool_calls(flat)] == list("abcdefghijk")  # "10" after "9", not after "1"


def test_arguments_that_are_not_json_are_reported() -> None:
    (call,) = tool_calls([{"type": "function", "function": {"name": "f", "arguments": "{city: Paris"}}])
    assert call.arguments == "{city: Paris" and call.arguments_error and "not JSON" in call.arguments_error


def test_tool_definitions_are_not_calls() -> None:
    definitions = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    assert tool_calls({"tools": definitions}) == []
    assert tool_schemas(definitions) == {"get_weather": {"type": "object"}}
    assert tool_schemas([{"name": "a", "input_schema": {"type": "object"}}, {"name": "b", "inputSchema": True},
                         {"name": "c"}]) == {"a": {"type": "object"}, "b": True, "c": True}  # fmt: skip


def _attributes(path: Path) -> dict[str, Any]:
    """The span attributes of an OTLP/JSON export, as plain values."""
    out: dict[str, Any] = {}
    for rs in orjson.loads(path.read_bytes())["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            for span in ss["spans"]:
                for attr in span.get("attributes", []):
                    value = attr["value"]
                    out[attr["key"]] = next(iter(value.values())) if value else None
    return out


@pytest.fixture
def fixtures() -> Path:
    if not FIXTURES.is_dir():
        pytest.skip(f"shared fixtures not found at {FIXTURES}")
    return FIXTURES


def test_real_genai_output_messages(fixtures: Path) -> None:
    attrs = _attributes(fixtures / "genai_traceloop_openai_tools_chat.otlp.json")
    (call,) = tool_calls(attrs["gen_ai.output.messages"])
    assert call == ToolCall("get_weather", PARIS, call.id, None) and call.id
    assert set(tool_schemas(attrs["gen_ai.tool.definitions"])) == {"get_weather"}


def test_real_openinference_attributes_and_output_value(fixtures: Path) -> None:
    attrs = _attributes(fixtures / "openinference_openai_tools_chat.otlp.json")
    flat = {k: v for k, v in attrs.items() if k.startswith("llm.output_messages.")}
    from_flat = tool_calls(flat)
    from_value = tool_calls(attrs["output.value"])  # the raw chat completion, as JSON text
    assert [(c.name, c.arguments) for c in from_flat] == [("get_weather", PARIS)]
    assert [(c.name, c.arguments, c.id) for c in from_value] == [(c.name, c.arguments, c.id) for c in from_flat]
    assert set(tool_schemas([{"tool": {"json_schema": attrs["llm.tools.0.tool.json_schema"]}}])) == {"get_weather"}
