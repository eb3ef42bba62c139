"""Map a span's attributes to a step's input, output, model, tokens, cost and kind.

Understands the OpenTelemetry GenAI semantic conventions (old and new ``gen_ai.*`` names), OpenInference
(``llm.*``, ``input.value``/``output.value``, flattened ``llm.input_messages.N.*``), the Vercel AI SDK
(``ai.*``), LangSmith (``langsmith.*``) and Traceloop (``traceloop.*``). Messages from every
convention come out in one shape, ``{"role", "content"}`` plus ``tool_calls`` (``{"id", "name",
"arguments"}``) and ``tool_call_id`` when present, so that one evaluator reads them all the same way
(``output.0.content``)::

    >>> from connectors.otlp_semconv import map_attributes
    >>> m = map_attributes({"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4.1-nano",
    ...                     "gen_ai.usage.input_tokens": 56, "gen_ai.completion.0.role": "assistant",
    ...                     "gen_ai.completion.0.content": "Paris"})
    >>> m.kind, m.model, m.input_tokens, m.output, m.rest
    ('llm', 'gpt-4.1-nano', 56, [{'role': 'assistant', 'content': 'Paris'}], {'gen_ai.operation.name': 'chat', \
'gen_ai.request.model': 'gpt-4.1-nano', 'gen_ai.usage.input_tokens': 56})
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = ["Mapped", "map_attributes", "normalize_message"]

# attributes whose content becomes the step's input or output (not kept in ``attributes``)
CONTENT_KEYS = frozenset(
    {
        "gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.system_instructions", "gen_ai.prompt",
        "gen_ai.completion", "input.value", "output.value", "ai.prompt", "ai.prompt.messages", "ai.response.text",
        "ai.response.toolCalls", "ai.response.object", "ai.toolCall.args", "ai.toolCall.result",
        "ai.toolCall.input", "ai.toolCall.output", "traceloop.entity.input", "traceloop.entity.output",
        "gen_ai.tool.call.arguments", "gen_ai.tool.call.result",
    }
)  # fmt: skip
_INDEXED = ("llm.input_messages.", "llm.output_messages.", "gen_ai.prompt.", "gen_ai.completion.")

_OPERATION_KIND = {
    "chat": "llm", "text_completion": "llm", "generate_content": "llm", "completion": "llm",
    "embeddings": "embedding", "execute_tool": "tool", "invoke_agent": "agent", "create_agent": "agent",
}  # fmt: skip
_MODEL_KEYS = ("gen_ai.response.model", "gen_ai.request.model", "llm.model_name", "ai.response.model", "ai.model.id",
               "langsmith.metadata.ls_model_name")  # fmt: skip
_IN_TOKENS = ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens", "llm.token_count.prompt",
              "ai.usage.inputTokens", "ai.usage.promptTokens", "llm.usage.prompt_tokens")  # fmt: skip
_OUT_TOKENS = ("gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens", "llm.token_count.completion",
               "ai.usage.outputTokens", "ai.usage.completionTokens", "llm.usage.completion_tokens")  # fmt: skip
_COST = ("gen_ai.usage.cost", "llm.cost.total", "gen_ai.cost.usd", "gen_ai.usage.total_cost")


@dataclass(slots=True)
class Mapped:
    kind: str | None = None
    input: Any = None
    output: Any = None
    model: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float | None = None
    rest: dict[str, Any] = field(default_factory=dict)


def _json(value: Any) -> Any:
    """JSON text decoded (objects and arrays only); anything else as it is."""
    if isinstance(value, str) and value[:1] in ("{", "["):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
    return value


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def _call(id_: Any, name: Any, arguments: Any) -> dict[str, Any]:
    return {"id": id_, "name": name, "arguments": arguments}


def normalize_message(m: Any) -> dict[str, Any]:
    """One message of any convention (GenAI ``parts``, OpenAI ``content``/``tool_calls``, Vercel
    content parts) as ``{"role", "content", "tool_calls"?, "tool_call_id"?}``."""
    if type(m) is not dict:
        return {"role": None, "content": _text(m)} if not isinstance(m, dict) else normalize_message(dict(m))
    parts = m.get("parts")
    # fast paths: one text part (GenAI semconv), or plain text content (OpenAI) without tool calls
    if parts is not None:
        if type(parts) is list and len(parts) == 1 and len(m) <= 3:
            p = parts[0]
            if type(p) is dict and p.get("type") == "text" and "tool_call_id" not in m:
                c = p.get("content")
                return {"role": m.get("role"), "content": c if type(c) is str else _text(c)}
    elif len(m) <= 2 and type(m.get("content")) is str and "role" in m:
        return {"role": m["role"], "content": m["content"]}
    if isinstance(m.get("message"), dict) and "role" not in m:  # an OpenAI choice
        m = m["message"]
        parts = m.get("parts")
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    out: dict[str, Any] = {"role": m.get("role")}
    content = m.get("content")
    if isinstance(parts, list):  # GenAI semconv
        for p in parts:
            if not isinstance(p, dict):
                continue
            t = p.get("type")
            if t == "text":
                texts.append(_text(p.get("content")) or "")
            elif t == "tool_call":
                calls.append(_call(p.get("id"), p.get("name"), p.get("arguments")))
            elif t == "tool_call_response":
                out["tool_call_id"] = p.get("id")
                texts.append(_text(p.get("response")) or "")
    elif isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):  # OpenAI / Vercel content parts
        for p in content:
            if isinstance(p, str):
                texts.append(p)
            elif isinstance(p, dict):
                t = p.get("type")
                if t in ("text", "input_text", "output_text") or (t is None and "text" in p):
                    texts.append(_text(p.get("text")) or "")
                elif t == "tool-call":
                    calls.append(_call(p.get("toolCallId"), p.get("toolName"), p.get("input", p.get("args"))))
                elif t == "tool-result":
                    out["tool_call_id"] = p.get("toolCallId")
                    texts.append(_text(p.get("output", p.get("result"))) or "")
    tool_calls = m.get("tool_calls")
    for tc in tool_calls if isinstance(tool_calls, list) else ():
        if isinstance(tc, dict):
            fn = tc["function"] if isinstance(tc.get("function"), dict) else tc
            calls.append(_call(tc.get("id"), fn.get("name"), fn.get("arguments")))
    if m.get("tool_call_id"):
        out["tool_call_id"] = m["tool_call_id"]
    out["content"] = "\n".join(texts) if texts else None
    if calls:
        out["tool_calls"] = calls
    return out


def _messages(value: Any) -> list[dict[str, Any]] | None:
    value = _json(value)
    if isinstance(value, list):
        return [normalize_message(m) for m in value]
    return None


def _unflatten(items: list[tuple[list[str], Any]]) -> Any:
    """``[(["0", "message", "role"], "user"), ...]`` into nested dicts and lists (numeric segments)."""
    root: dict[str, Any] = {}
    for parts, value in items:
        node = root
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                break
        else:
            node[parts[-1]] = value
    return _lists(root)


def _lists(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    if node and all(k.isdigit() for k in node):
        return [_lists(node[k]) for k in sorted(node, key=int)]
    return {k: _lists(v) for k, v in node.items()}


def _oi_message(node: Any) -> dict[str, Any]:
    """An OpenInference ``message`` node (``role``, ``content``, ``contents``, ``tool_calls``)."""
    m = node.get("message", node) if isinstance(node, dict) else {}
    if not isinstance(m, dict):
        return normalize_message(m)
    plain: dict[str, Any] = {"role": m.get("role"), "content": m.get("content")}
    contents = m.get("contents")
    if plain["content"] is None and isinstance(contents, list):
        plain["content"] = [c.get("message_content", c) for c in contents if isinstance(c, dict)]
    calls = []
    tool_calls = m.get("tool_calls")
    for tc in tool_calls if isinstance(tool_calls, list) else ():
        call = tc.get("tool_call", tc) if isinstance(tc, dict) else None
        if isinstance(call, dict):
            calls.append({"id": call.get("id"), "function": call.get("function")})
    if calls:
        plain["tool_calls"] = calls
    if m.get("tool_call_id"):
        plain["tool_call_id"] = m["tool_call_id"]
    return normalize_message(plain)


def _indexed(attrs: dict[str, Any], prefix: str) -> list[dict[str, Any]] | None:
    n = len(prefix)
    items = [(k[n:].split("."), v) for k, v in attrs.items() if k.startswith(prefix)]
    if not items:
        return None
    tree = _unflatten(items)
    if not isinstance(tree, list):
        return None
    if prefix.startswith("llm."):
        return [_oi_message(node) for node in tree]
    return [normalize_message(node) for node in tree]


def _count(value: Any) -> int | None:
    if type(value) is int:
        return value if value >= 0 else None
    if isinstance(value, str) and value.isdigit():
        return int(value)
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    return None


def _first(attrs: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for k in keys:
        v = attrs.get(k)
        if v is not None and v != "":
            return v
    return None


def _kind(attrs: dict[str, Any]) -> str | None:
    oi = attrs.get("openinference.span.kind")
    if isinstance(oi, str) and oi:
        return oi.lower()
    op = attrs.get("gen_ai.operation.name")
    if isinstance(op, str) and op:
        return _OPERATION_KIND.get(op, op)
    for key in ("langsmith.span.kind", "traceloop.span.kind"):
        v = attrs.get(key)
        if isinstance(v, str) and v:
            return v.lower()
    ai = attrs.get("ai.operationId")
    if isinstance(ai, str) and ai.startswith("ai."):
        if ai.endswith((".doGenerate", ".doStream")):
            return "llm"
        if ai.endswith(".doEmbed"):
            return "embedding"
        return "tool" if ai == "ai.toolCall" else "chain"
    if attrs.get("llm.request.type") in ("chat", "completion"):
        return "llm"
    return None


def _prompt_messages(value: Any) -> Any:
    """``gen_ai.prompt`` / ``ai.prompt`` as JSON: a request with ``messages`` (and ``system``), a
    ``prompt`` string, or a list of messages; anything else as it is."""
    value = _json(value)
    if isinstance(value, list):
        return [normalize_message(m) for m in value]
    if isinstance(value, dict):
        msgs = value.get("messages")
        out = [normalize_message(m) for m in msgs] if isinstance(msgs, list) else []
        if isinstance(value.get("system"), str):
            out.insert(0, {"role": "system", "content": value["system"]})
        if isinstance(value.get("prompt"), str):
            out.append({"role": "user", "content": value["prompt"]})
        if out:
            return out
    return value


def _completion_messages(value: Any) -> Any:
    value = _json(value)
    if isinstance(value, dict):
        choices = value.get("choices")
        if isinstance(choices, list) and choices:
            return [normalize_message(c) for c in choices]
        if isinstance(value.get("messages"), list):
            return [normalize_message(m) for m in value["messages"]]
    if isinstance(value, list):
        return [normalize_message(m) for m in value]
    return value


def _input(attrs: dict[str, Any], indexed: bool) -> Any:
    get = attrs.get
    msgs = _messages(get("gen_ai.input.messages"))
    if msgs is None and indexed:
        msgs = _indexed(attrs, "llm.input_messages.") or _indexed(attrs, "gen_ai.prompt.")
    if msgs is None and "ai.prompt.messages" in attrs:
        msgs = _messages(get("ai.prompt.messages"))
    if msgs is not None:
        system = _json(get("gen_ai.system_instructions"))
        if system:
            content = normalize_message({"parts": system})["content"] if isinstance(system, list) else _text(system)
            msgs.insert(0, {"role": "system", "content": content})
        return msgs
    for key in ("input.value", "traceloop.entity.input", "gen_ai.tool.call.arguments", "ai.toolCall.args",
                "ai.toolCall.input"):  # fmt: skip
        v = get(key)
        if v is not None:
            return _json(v)
    for key in ("gen_ai.prompt", "ai.prompt"):
        v = get(key)
        if v is not None:
            return _prompt_messages(v)
    return None


def _output(attrs: dict[str, Any], indexed: bool) -> Any:
    get = attrs.get
    msgs = _messages(get("gen_ai.output.messages"))
    if msgs is None and indexed:
        msgs = _indexed(attrs, "llm.output_messages.") or _indexed(attrs, "gen_ai.completion.")
    if msgs is not None:
        return msgs
    text, calls = get("ai.response.text"), _json(get("ai.response.toolCalls"))
    if text is not None or isinstance(calls, list):
        msg: dict[str, Any] = {"role": "assistant", "content": text}
        if isinstance(calls, list) and calls:
            msg["tool_calls"] = [
                _call(c.get("toolCallId"), c.get("toolName"), c.get("input", c.get("args")))
                for c in calls
                if isinstance(c, dict)
            ]
        return [msg]
    for key in ("output.value", "ai.response.object", "traceloop.entity.output", "gen_ai.tool.call.result",
                "ai.toolCall.result", "ai.toolCall.output"):  # fmt: skip
        v = get(key)
        if v is not None:
            return _json(v)
    v = get("gen_ai.completion")
    return None if v is None else _completion_messages(v)


def _usage_metadata(attrs: dict[str, Any]) -> dict[str, Any]:
    usage = _json(attrs.get("langsmith.usage_metadata"))
    return usage if isinstance(usage, dict) else {}


def _cut(v: Any, chars: int) -> Any:
    if isinstance(v, list | dict):
        text = orjson.dumps(v, option=orjson.OPT_NON_STR_KEYS)
        if len(text) > chars:
            return text[:chars].decode(errors="ignore") + "…"
        return v
    return v[:chars] + "…" if isinstance(v, str) and len(v) > chars else v


def map_attributes(attrs: dict[str, Any], *, max_attributes: int = 128, max_chars: int = 4096) -> Mapped:
    """What a span's attributes say about the step. ``rest`` holds the attributes not used as
    content: at most ``max_attributes`` of them (``otel.dropped_attributes`` counts the others),
    long values cut to ``max_chars`` characters."""
    mc = max_chars
    rest = {
        k: v if (t := type(v)) is int or t is float or t is bool or (t is str and len(v) <= mc) else _cut(v, mc)
        for k, v in attrs.items()
        if k not in CONTENT_KEYS and not k.startswith(_INDEXED)
    }
    indexed = len(rest) < len(attrs) - len(CONTENT_KEYS.intersection(attrs))
    if len(rest) > max_attributes:
        keys = list(rest)
        for k in keys[max_attributes:]:
            del rest[k]
        rest["otel.dropped_attributes"] = len(keys) - max_attributes
    m = Mapped(rest=rest)
    m.kind = _kind(attrs)
    m.input = _input(attrs, indexed)
    m.output = _output(attrs, indexed)
    model = _first(attrs, _MODEL_KEYS)
    m.model = str(model)[:256] if model is not None else None
    m.input_tokens = _count(_first(attrs, _IN_TOKENS))
    m.output_tokens = _count(_first(attrs, _OUT_TOKENS))
    if (m.input_tokens is None or m.output_tokens is None) and "langsmith.usage_metadata" in attrs:
        usage = _usage_metadata(attrs)
        m.input_tokens = m.input_tokens if m.input_tokens is not None else _count(usage.get("input_tokens"))
        m.output_tokens = m.output_tokens if m.output_tokens is not None else _count(usage.get("output_tokens"))
    cost = _first(attrs, _COST)
    if cost is None and ("gen_ai.usage.input_cost" in attrs or "gen_ai.usage.output_cost" in attrs):
        parts = [attrs.get("gen_ai.usage.input_cost"), attrs.get("gen_ai.usage.output_cost")]
        cost = sum(p for p in parts if isinstance(p, int | float) and not isinstance(p, bool))
    if isinstance(cost, str):
        try:
            cost = float(cost)
        except ValueError:
            cost = None
    if isinstance(cost, int | float) and not isinstance(cost, bool) and math.isfinite(cost) and cost >= 0:
        m.cost_usd = float(cost)
    if m.kind is None and (m.model is not None or m.input_tokens is not None):
        m.kind = "llm"
    return m
