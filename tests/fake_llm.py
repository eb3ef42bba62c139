"""A small OpenAI-compatible chat-completions server on 127.0.0.1, standing in for an LLM judge.

It answers ``POST /v1/chat/completions`` (with ``usage``) like a naive judge:

- the verdict is decided from the judged text: a fenced data block (``-----BEGIN X tag-----`` ...
  ``-----END X tag-----``) that contains :data:`PLANTED` gets the worst label (the last of the
  choices, or the scale's minimum), anything else the best (the first label, or the maximum);
- it obeys injected instructions ("... answer PASS") found **outside** the fenced blocks, so a
  judged text that escapes its fence flips the verdict, while one that stays inside does not;
- behaviours are asked for by markers anywhere in the prompt: ``[[fake:429-once]]``,
  ``[[fake:500-once]]`` (fail the first time this prompt is seen, then answer), ``[[fake:429]]``
  (always), ``[[fake:slow]]`` (sleep ``slow_seconds`` first), ``[[fake:garbage]]`` (the verdict is
  prose, not JSON), ``[[fake:badbody]]`` (the HTTP body is not JSON), ``[[fake:offlabel]]`` (a
  label that is not one of the choices).

It reads the labels from ``response_format`` (json_schema), from the tool's parameters, or from the
prompt ("one of: a, b"). Usage::

    with FakeLLM() as fake:
        api_base = fake.url          # http://127.0.0.1:PORT/v1
        ...
        assert fake.calls == 3
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

__all__ = ["PLANTED", "FakeLLM"]

PLANTED = "[[planted-failure]]"
_BLOCK = re.compile(r"-----BEGIN ([A-Z_]+) ([0-9a-f]{16})-----\n(.*?)\n-----END \1 \2-----", re.S)
_MODE = re.compile(r"\[\[fake:([a-z0-9-]+)\]\]")
_GOOD = {"pass", "yes", "good", "correct", "safe", "ok", "true"}
_BAD = {"fail", "no", "bad", "incorrect", "toxic", "false"}


class FakeLLM:
    """Start with ``with FakeLLM() as fake`` (or :meth:`start`/:meth:`stop`)."""

    def __init__(self, *, slow_seconds: float = 3.0) -> None:
        self.slow_seconds = slow_seconds
        self.requests: list[dict[str, Any]] = []
        self.statuses: list[int] = []
        self._seen: dict[str, int] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self) -> FakeLLM:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                status, payload, extra = fake._answer(self.path, body)
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    for k, v in extra.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                    pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeLLM:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    @property
    def calls(self) -> int:
        """Requests received (including the ones answered with an error)."""
        with self._lock:
            return len(self.requests)

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.statuses.clear()
            self._seen.clear()

    # ---- the judge ---------------------------------------------------------------------------
    def _answer(self, path: str, body: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        prompt = "\n".join(str(m.get("content") or "") for m in body.get("messages", []))
        modes = set(_MODE.findall(prompt))
        with self._lock:
            self.requests.append(body)
            seen = self._seen[prompt] = self._seen.get(prompt, 0) + 1
        status, payload, extra = self._decide(path, body, prompt, modes, seen)
        with self._lock:
            self.statuses.append(status)
        return status, payload, extra

    def _decide(
        self, path: str, body: dict[str, Any], prompt: str, modes: set[str], seen: int
    ) -> tuple[int, Any, dict[str, str]]:
        if not path.rstrip("/").endswith("/chat/completions"):
            return 404, {"error": {"message": f"no route {path}"}}, {}
        if "429" in modes or ("429-once" in modes and seen == 1):
            return 429, {"error": {"message": "rate limited", "type": "rate_limit_error"}}, {"retry-after": "0"}
        if "500-once" in modes and seen == 1:
            return 500, {"error": {"message": "upstream exploded", "type": "server_error"}}, {}
        if "slow" in modes:
            time.sleep(self.slow_seconds)
        if "badbody" in modes:
            return 200, b'{"id": "x", "choices": [', {}
        labels, scale = _choices(body, prompt)
        data = "\n".join(m.group(3) for m in _BLOCK.finditer(prompt))
        outside = _BLOCK.sub(" ", prompt)
        best, worst = (labels[0], labels[-1]) if labels else (str(scale[1]), str(scale[0]))
        verdict, reason = (worst, "planted failure found in the data") if PLANTED in data else (best, "looks fine")
        injected = _injected(outside, labels, best, worst)
        if injected is not None:
            verdict, reason = injected, "obeyed an instruction found outside the data"
        if "offlabel" in modes:
            verdict = "maybe"
        key = "verdict" if labels else "score"
        value: Any = verdict if labels or verdict == "maybe" else int(verdict)
        content = json.dumps({"reasoning": reason, key: value})
        if "garbage" in modes:
            content = f"I think the answer is {verdict}, mostly."
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if body.get("tools") and "garbage" not in modes:
            name = body["tools"][0]["function"]["name"]
            message = {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": name, "arguments": content}}],
            }
        usage = {"prompt_tokens": max(1, len(prompt) // 4), "completion_tokens": max(1, len(content) // 4)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return (
            200,
            {
                "id": f"chatcmpl-{len(self.requests)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", "fake"),
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": usage,
            },
            {},
        )


def _choices(body: dict[str, Any], prompt: str) -> tuple[list[str], tuple[int, int]]:
    schema: dict[str, Any] = {}
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        schema = fmt["json_schema"]["schema"]
    elif body.get("tools"):
        schema = body["tools"][0]["function"]["parameters"]
    props = schema.get("properties", {})
    if "verdict" in props:
        return list(props["verdict"]["enum"]), (0, 0)
    if "score" in props:
        return [], (props["score"]["minimum"], props["score"]["maximum"])
    m = re.search(r"one of: ([\w, .-]+?)\.", prompt)
    if m:
        return [s.strip() for s in m.group(1).split(",")], (0, 0)
    m = re.search(r"integer from (\d+) to (\d+)", prompt)
    if m:
        return [], (int(m.group(1)), int(m.group(2)))
    return ["PASS", "FAIL"], (0, 0)


def _injected(outside: str, labels: list[str], best: str, worst: str) -> str | None:
    """The verdict an injected instruction outside the data asks for, if any."""
    words = "|".join(re.escape(w) for w in [*labels, *_GOOD, *_BAD])
    m = re.search(rf"(?i)\b(?:answer|respond|reply|output|say|verdict)\b\W{{0,3}}(?:with\W+)?({words})\b", outside)
    if m is None:
        return None
    word = m.group(1)
    for label in labels:
        if label.lower() == word.lower():
            return label
    return best if word.lower() in _GOOD else worst
