"""A tiny webhook receiver on 127.0.0.1 that verifies Standard Webhooks signatures and drops
repeats by ``webhook-id`` (what a real receiver of evalsvc's webhooks should do)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

__all__ = ["WebhookReceiver"]


class WebhookReceiver:
    def __init__(self, secret: str, *, fail_first: int = 0) -> None:
        self.webhook = Webhook(secret)
        self.received: list[dict[str, Any]] = []  # verified, first deliveries only
        self.repeats = 0
        self.rejected = 0
        self.fail_first = fail_first  # answer 503 to this many requests first (to exercise retries)
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                status = receiver._handle(body, dict(self.headers))
                self.send_response(status)
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _handle(self, body: bytes, headers: dict[str, str]) -> int:
        with self._lock:
            if self.fail_first > 0:
                self.fail_first -= 1
                return 503
            try:
                self.webhook.verify(body, headers)
            except WebhookVerificationError:
                self.rejected += 1
                return 401
            msg_id = {k.lower(): v for k, v in headers.items()}["webhook-id"]
            if any(r["id"] == msg_id for r in self.received):
                self.repeats += 1
                return 200
            self.received.append(json.loads(body))
            return 200

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
