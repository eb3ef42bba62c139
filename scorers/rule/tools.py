"""Tool-call checks: ``tool_called`` (the expected tool was called, optionally with arguments
valid against a JSON Schema) and ``tool_arguments`` (every call's arguments are valid against its
tool's schema, from the tool definitions).

:func:`tool_calls` normalises the common shapes of a model's tool calls, found anywhere in the
field (text holding JSON is decoded): OpenAI chat completions and messages (``tool_calls``, the
legacy ``function_call``), the OpenAI Responses API (``type: function_call`` items), Anthropic
(``type: tool_use`` blocks), OpenTelemetry GenAI output messages (``parts`` of ``type: tool_call``),
OpenInference messages (``message.tool_calls.N.tool_call.function``, nested or as flattened
attribute keys), Gemini (``functionCall``) and LangChain (``tool_calls`` with ``args``)::

    >>> from scorers.rule.tools import tool_calls
    >>> genai = [{"role": "assistant", "parts": [{"type": "tool_call", "name": "get_weather",
    ...                                          "arguments": {"city": "Paris"}}]}]
    >>> [(c.name, c.arguments) for c in tool_calls(genai)]
    [('get_weather', {'city': 'Paris'})]
    >>> openai = {"choices": [{"message": {"tool_calls": [{"id": "c1", "type": "function",
    ...           "function": {"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}}]}}]}
    >>> [(c.name, c.arguments) for c in tool_calls(openai)]
    [('get_weather', {'city': 'Paris'})]
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar, Literal

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import Field, field_validator, model_validator

from evalsvc.errors import UnrecoverableError
from evalsvc.schemas import Score, StepPublic

from ..base import BaseScorer, StepPath, get_field
from ..registry import register
from .common import FIELD, skip, verdict

__all__ = ["ToolArguments", "ToolCall", "ToolCalled", "tool_calls", "tool_schemas"]

_MAX_DEPTH = 24
_MAX_CALLS = 1000


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One tool call: the tool's name, its arguments (decoded from JSON text when they are text),
    and, when the arguments were text that is not JSON, why they could not be decoded."""

    name: str
    arguments: Any
    id: str | None = None
    arguments_error: str | None = None


def _decode(value: Any) -> Any:
    if isinstance(value, str) and value.lstrip()[:1] in ("{", "["):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
    return value


def _call(name: Any, arguments: Any, call_id: Any) -> ToolCall | None:
    if not isinstance(name, str) or not name:
        return None
    error = None
    if isinstance(arguments, str):
        if not arguments.strip():
            arguments = {}
        else:
            try:
                arguments = orjson.loads(arguments)
            except orjson.JSONDecodeError as exc:
                error = f"arguments are not JSON: {exc}"
    elif arguments is None:
        arguments = {}
    return ToolCall(name, arguments, call_id if isinstance(call_id, str) else None, error)


def _as_call(d: Mapping[str, Any]) -> ToolCall | None:
    """The call this object is, in one of the known shapes, or None."""
    kind = d.get("type")
    fn = d.get("function")
    if isinstance(fn, Mapping) and "arguments" in fn:  # OpenAI tool call; OpenInference tool_call
        return _call(fn.get("name"), fn.get("arguments"), d.get("id"))
    if kind in ("tool_call", "function_call"):  # GenAI part, LangChain, OpenAI Responses item
        args = d.get("arguments", d.get("args"))
        return _call(d.get("name"), args, d.get("call_id", d.get("id")))
    if kind == "tool_use":  # Anthropic content block
        return _call(d.get("name"), d.get("input"), d.get("id"))
    for key in ("functionCall", "function_call"):  # Gemini part; legacy OpenAI message
        inner = d.get(key)
        if isinstance(inner, Mapping) and "name" in inner:
            return _call(inner.get("name"), inner.get("arguments", inner.get("args")), inner.get("id"))
    if "name" in d and "args" in d and "id" in d and "content" not in d:  # LangChain ToolCall dict
        return _call(d.get("name"), d.get("args"), d.get("id"))
    return None


def _unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a.0.b": 1}`` -> ``{"a": {"0": {"b": 1}}}`` (numeric keys are walked like a list's)."""
    root: dict[str, Any] = {}
    for key, value in flat.items():
        node = root
        parts = str(key).split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[parts[-1]] = value
    return root


def _walk(value: Any, depth: int) -> Iterator[ToolCall]:
    if depth > _MAX_DEPTH:
        return
    value = _decode(value)
    if isinstance(value, list):
        for item in value:
            yield from _walk(item, depth + 1)
    elif isinstance(value, Mapping):
        if any(".tool_call" in str(k) or str(k).startswith("tool_call.") for k in value):
            value = _unflatten(value)  # OpenInference attributes, flattened
        call = _as_call(value)
        if call is not None:
            yield call
            return
        items = value.items()
        if items and all(str(k).isdigit() for k in value):  # a flattened list: keep its order
            items = sorted(items, key=lambda kv: int(kv[0]))
        for _, item in items:
            yield from _walk(item, depth + 1)


def tool_calls(value: Any) -> list[ToolCall]:
    """Every tool call in ``value`` (any of the shapes in this module's docstring), in order."""
    out: list[ToolCall] = []
    for call in _walk(value, 0):
        out.append(call)
        if len(out) >= _MAX_CALLS:
            break
    return out


def _definition(d: Any) -> tuple[str, Any] | None:
    d = _decode(d)
    if not isinstance(d, Mapping):
        return None
    if isinstance(d.get("tool"), Mapping):  # OpenInference llm.tools.N.tool.json_schema
        return _definition(d["tool"].get("json_schema"))
    inner = d.get("function")
    fn: Mapping[str, Any] = inner if isinstance(inner, Mapping) else d
    name = fn.get("name")
    if not isinstance(name, str) or not name:
        return None
    for key in ("parameters", "input_schema", "inputSchema", "json_schema"):
        if key in fn:
            return name, _decode(fn[key])
    return name, True  # a tool without declared parameters accepts any arguments


def tool_schemas(definitions: Any) -> dict[str, Any]:
    """Tool name -> the JSON Schema of its arguments, from tool definitions in the OpenAI
    (``{"type": "function", "function": {"name", "parameters"}}``), Anthropic (``input_schema``),
    MCP (``inputSchema``) or OpenInference (``{"tool": {"json_schema": ...}}``) shapes."""
    definitions = _decode(definitions)
    if isinstance(definitions, Mapping):
        definitions = (
            [definitions] if ("name" in definitions or "function" in definitions) else list(definitions.values())
        )
    out: dict[str, Any] = {}
    for d in definitions if isinstance(definitions, list) else []:
        found = _definition(d)
        if found is not None:
            out[found[0]] = found[1]
    return out


def _check_schema(schema: Any, what: str) -> None:
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise ValueError(f"{what} is not a valid JSON Schema: {exc.message}") from None


def _first_error(validator: Draft202012Validator, call: ToolCall) -> str | None:
    if call.arguments_error:
        return call.arguments_error
    error = next(iter(validator.iter_errors(call.arguments)), None)
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "(root)"
    return f"arguments at {where}: {error.message}"


@register
class ToolCalled(BaseScorer):
    """The expected tool was called (``expect_called: false``: it was not), optionally with
    arguments valid against ``arguments_schema``. Tool calls are read in the shapes of OpenAI,
    Anthropic, Gemini, LangChain, OpenTelemetry GenAI and OpenInference."""

    name = "tool_called"
    example: ClassVar[dict[str, Any]] = {
        "name": "looks_up_the_weather",
        "target": {"step": "plan"},
        "params": {
            "tool": "get_weather",
            "arguments_schema": {"type": "object", "required": ["city"], "properties": {"city": {"type": "string"}}},
        },
    }
    tool: str = Field(min_length=1, description="Name of the tool that must be called.")
    field: StepPath = FIELD
    arguments_schema: dict[str, Any] | None = Field(
        default=None, description="JSON Schema that every call of the tool's arguments must satisfy."
    )
    expect_called: bool = Field(default=True, description="`false`: pass only when the tool was not called.")

    @field_validator("arguments_schema")
    @classmethod
    def _valid_schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            _check_schema(value, "arguments_schema")
        return value

    @cached_property
    def _validator(self) -> Draft202012Validator | None:
        return None if self.arguments_schema is None else Draft202012Validator(self.arguments_schema)

    async def score(self, step: StepPublic) -> Score:
        calls = tool_calls(get_field(step, self.field))
        names = [c.name for c in calls]
        mine = [c for c in calls if c.name == self.tool]
        if not self.expect_called:
            return verdict(not mine, f"{self.tool!r} was called ({len(mine)} times)", calls=names)
        if not mine:
            seen = f"calls: {', '.join(repr(n) for n in names[:10])}" if names else "no tool calls"
            return verdict(False, f"{self.tool!r} was not called in {self.field} ({seen})", calls=names)
        if self._validator is not None:
            for i, call in enumerate(mine):
                error = _first_error(self._validator, call)
                if error is not None:
                    return verdict(False, f"{self.tool!r} call {i + 1}: {error}", calls=names)
        return verdict(True, calls=names)


@register
class ToolArguments(BaseScorer):
    """Every tool call's arguments are valid against its tool's JSON Schema, from tool definitions
    given in ``tools`` or read from the step (``tools_field``, e.g. the request's ``input.tools``).
    A call of a tool that is not defined fails unless ``unknown_tools: ignore``; a step without
    tool calls is skipped."""

    name = "tool_arguments"
    example: ClassVar[dict[str, Any]] = {
        "name": "tool_arguments_valid",
        "target": {"kind": "llm"},
        "params": {
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "get_weather",
                        "parameters": {
                            "type": "object",
                            "required": ["city"],
                            "properties": {"city": {"type": "string"}},
                        },
                    },
                }
            ]
        },
    }
    field: StepPath = FIELD
    tools: list[dict[str, Any]] | None = Field(
        default=None, description="Tool definitions (OpenAI, Anthropic or MCP shape)."
    )
    tools_field: StepPath | None = Field(default=None, description="Dotted path to the tool definitions in the step.")
    unknown_tools: Literal["fail", "ignore"] = Field(
        default="fail", description="What a call of an undefined tool does."
    )

    @model_validator(mode="after")
    def _one_source(self) -> ToolArguments:
        if (self.tools is None) == (self.tools_field is None):
            raise ValueError("give either tools or tools_field")
        if self.tools is not None:
            schemas = tool_schemas(self.tools)
            if len(schemas) != len(self.tools):
                raise ValueError("every tool definition needs a name (OpenAI, Anthropic or MCP shape)")
            for name, schema in schemas.items():
                _check_schema(schema, f"the parameters of tool {name!r}")
        return self

    @cached_property
    def _fixed(self) -> dict[str, Draft202012Validator] | None:
        if self.tools is None:
            return None
        return {name: Draft202012Validator(schema) for name, schema in tool_schemas(self.tools).items()}

    def _validators(self, step: StepPublic) -> dict[str, Draft202012Validator] | None:
        if self._fixed is not None:
            return self._fixed
        schemas = tool_schemas(get_field(step, self.tools_field or ""))
        if not schemas:
            return None
        out = {}
        for name, schema in schemas.items():
            try:
                Draft202012Validator.check_schema(schema)
            except SchemaError as exc:
                raise UnrecoverableError(
                    f"the step's definition of tool {name!r} has an invalid schema: {exc.message}",
                    field=self.tools_field,
                ) from None
            out[name] = Draft202012Validator(schema)
        return out

    async def score(self, step: StepPublic) -> Score:
        calls = tool_calls(get_field(step, self.field))
        if not calls:
            return skip(f"no tool calls in {self.field}")
        validators = self._validators(step)
        if validators is None:
            return skip(f"no tool definitions at {self.tools_field}")
        names = [c.name for c in calls]
        for i, call in enumerate(calls):
            validator = validators.get(call.name)
            if validator is None:
                if self.unknown_tools == "fail":
                    return verdict(False, f"call {i + 1} is of {call.name!r}, which is not a defined tool", calls=names)
                continue
            error = _first_error(validator, call)
            if error is not None:
                return verdict(False, f"call {i + 1} of {call.name!r}: {error}", calls=names)
        return verdict(True, calls=names)
