"""A local stand-in for Inngest's event API and REST API, strict about each request's shape.

- ``POST /e/{event key}``: a JSON event or array of events, each ``{"name": str, "data": object}``
  with an optional string ``id``, numeric ``ts``, object ``user`` and string ``v``; the key must be
  the expected one (else 401). Answers ``{"ids": [...], "status": 200}`` like Inngest. Events with an
  ``id`` seen before are kept once (``repeats`` counts the others), as Inngest deduplicates them.
- ``DELETE /v1/runs/{run id}``: ``Authorization: Bearer {signing key}`` (else 401); answers
  ``{"data": {"run_id": ..., "status": "Cancelled"}}``.

Anything else, or a malformed request, is answered 400 (or 404/405) and noted in ``problems``, so a
test asserts ``problems == []``. ``fail_with`` holds statuses to answer the next requests with, first
one first (e.g. ``[503]``: one failure, then normal service).

    with FakeInngest(event_key="ek", signing_key="signkey-test-00") as inngest:
        ... EVALSVC_INNGEST_EVENT_API_URL = EVALSVC_INNGEST_API_URL = inngest.url ...
        assert inngest.problems == [] and [e["name"] for e in inngest.events] == [...]
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

__all__ = ["FakeInngest"]

_OPTIONAL = {"id": str, "ts": (int, float), "user": dict, "v": str}


class FakeInngest:
    def __init__(self, *, event_key: str, signing_key: str) -> None:
        self.event_key, self.signing_key = event_key, signing_key
        self.requests: list[dict[str, Any]] = []  # every request: method, path, headers, body
        self.events: list[dict[str, Any]] = []  # accepted events, one per id
        self.cancelled: list[str] = []  # run ids cancelled, in order
        self.repeats = 0
        self.problems: list[str] = []
        self.fail_with: list[int] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> FakeInngest:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    # ---- the API ---------------------------------------------------------------------------------
    def _events(self, body: bytes) -> tuple[int, dict[str, Any]]:
        try:
            payload = json.loads(body)
        except ValueError:
            return self._problem(400, "the body is not JSON")
        events = payload if isinstance(payload, list) else [payload]
        if not events:
            return self._problem(400, "no events")
        for i, event in enumerate(events):
            if not isinstance(event, dict):
                return self._problem(400, f"event {i} is not an object")
            if not isinstance(event.get("name"), str) or not event["name"]:
                return self._problem(400, f"event {i} has no name")
            if not isinstance(event.get("data"), dict):
                return self._problem(400, f"event {i}: data must be an object")
            extra = set(event) - {"name", "data", *_OPTIONAL}
            if extra:
                return self._problem(400, f"event {i}: unknown fields {sorted(extra)}")
            for name, kind in _OPTIONAL.items():
                if name in event and not isinstance(event[name], kind):
                    return self._problem(400, f"event {i}: {name} has the wrong type")
        ids = []
        for event in events:
            eid = event.get("id")
            if eid is not None and any(e.get("id") == eid for e in self.events):
                self.repeats += 1
            else:
                self.events.append(event)
            ids.append(eid or f"generated-{len(self.requests)}")
        return 200, {"ids": ids, "status": 200}

    def _cancel(self, run_id: str, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if headers.get("authorization") != f"Bearer {self.signing_key}":
            return self._problem(401, "the REST API needs Authorization: Bearer <signing key>")
        self.cancelled.append(run_id)
        return 200, {"data": {"run_id": run_id, "status": "Cancelled"}}

    def _problem(self, status: int, message: str) -> tuple[int, dict[str, Any]]:
        self.problems.append(message)
        return status, {"error": message, "status": status}

    def _answer(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.requests.append({"method": method, "path": path, "headers": headers, "body": body})
            if self.fail_with:
                status = self.fail_with.pop(0)
                return status, {"error": f"injected {status}", "status": status}
            parts = path.split("?", 1)[0].strip("/").split("/")
            if method == "POST" and len(parts) == 2 and parts[0] == "e":
                if unquote(parts[1]) != self.event_key:
                    return self._problem(401, "unknown event key")
                if headers.get("content-type", "").split(";")[0] != "application/json":
                    return self._problem(400, "content-type must be application/json")
                return self._events(body)
            if method == "DELETE" and len(parts) == 3 and parts[:2] == ["v1", "runs"] and parts[2]:
                return self._cancel(unquote(parts[2]), headers)
            return self._problem(404, f"no such endpoint: {method} {path}")

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, answer = fake._answer(self.command, self.path, headers, body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_POST = do_DELETE = do_GET = do_PUT = _serve  # noqa: N815 (http.server's names)

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                return

        return Handler
