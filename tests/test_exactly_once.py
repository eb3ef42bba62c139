"""Exactly-once remediation when the worker dies mid-dispatch, with real processes.

A webhook receiver acts on the first delivery of an id and then hangs before answering, so the
side effect has happened but evalsvc never learns it. The process that sent it (an ``evalsvc
serve`` with its in-process worker, or an ``evalsvc worker`` on Redis) is SIGKILLed; another one
starts, claims the action again once its lease ran out, and re-sends it with the same
``webhook-id``. The receiver, which drops ids it has seen, acts once; the Action ends succeeded,
once, after two attempts.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from evalsvc.settings import Settings

from .conftest import REDIS_URL, WEBHOOK_SECRET
from .factories import record

WAIT_SECONDS = 90.0
LEASE_SECONDS = "2"


class HangingReceiver:
    """Verifies the signature, acts on the first delivery of each id, then hangs (until released)
    before answering it; repeats are answered at once and not acted on."""

    def __init__(self) -> None:
        self.deliveries: list[str] = []
        self.acted: list[str] = []
        self.first = threading.Event()
        self.release = threading.Event()
        self.lock = threading.Lock()
        webhook, receiver = Webhook(WEBHOOK_SECRET), self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                webhook.verify(body, dict(self.headers))
                msg_id = self.headers["webhook-id"]
                with receiver.lock:
                    receiver.deliveries.append(msg_id)
                    repeat = msg_id in receiver.acted
                    if not repeat:
                        receiver.acted.append(msg_id)  # the side effect, e.g. a retry started
                if not repeat:
                    receiver.first.set()
                    receiver.release.wait(WAIT_SECONDS)  # the sender dies before the answer
                try:
                    self.send_response(200)
                    self.end_headers()
                    self.wfile.write(b"{}")
                except OSError:
                    pass  # the sender is gone

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[HangingReceiver]:
    r = HangingReceiver()
    yield r
    r.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _env(settings: Settings, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVALSVC_")}
    env.update(
        EVALSVC_HOME=str(tmp_path / "home"),
        EVALSVC_DATABASE_URL=settings.resolved_database_url(),
        EVALSVC_BROKER_URL="",
        EVALSVC_WEBHOOK_SECRET=WEBHOOK_SECRET,
        EVALSVC_WEBHOOK_ALLOW_PRIVATE="true",
        EVALSVC_WEBHOOK_TIMEOUT_SECONDS=str(WAIT_SECONDS * 2),  # the hang is not a timeout
        EVALSVC_LEASE_SECONDS=LEASE_SECONDS,
        EVALSVC_LOG_FORMAT="text",
    )
    env.update(extra)
    return env


def _wait(check: Callable[[], Any], what: str, logs: list[Path]) -> Any:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    tails = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in logs if p.exists())
    pytest.fail(f"timed out waiting for {what}\n{tails}")


class Procs:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path, self.procs, self.logs = tmp_path, list[subprocess.Popen[bytes]](), list[Path]()

    def start(self, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = self.tmp_path / f"proc-{len(self.procs)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "evalsvc.cli", *args], env=env, stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.tmp_path,
                                    start_new_session=True)  # fmt: skip
        self.procs.append(proc)
        self.logs.append(log)
        return proc

    def serve(self, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
        port = _free_port()
        proc = self.start(["serve", "--port", str(port)], env)
        base = f"http://127.0.0.1:{port}"

        def up() -> bool:
            assert proc.poll() is None, self.logs[-1].read_text()
            try:
                return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        _wait(up, "evalsvc serve to answer", self.logs)
        return proc, base

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    p = Procs(tmp_path)
    yield p
    p.stop_all()


def _yaml(url: str) -> str:
    return f"""
evaluators:
  - name: total_is_number
    scorer: json_schema
    params: {{schema: {{type: object, required: [total], properties: {{total: {{type: number}}}}}}}}
    on_fail: {{action: webhook, url: "{url}"}}
  - name: total_is_float
    scorer: json_schema
    params: {{schema: {{type: object, properties: {{total: {{type: number}}}}}}}}
    on_fail: {{action: webhook, url: "{url}"}}
"""


def _setup(env: dict[str, str], base: str, receiver: HangingReceiver) -> httpx.Client:
    key = subprocess.run([sys.executable, "-m", "evalsvc.cli", "keys", "create"], env=env, capture_output=True,
                         text=True, check=True, timeout=120).stdout.strip()  # fmt: skip
    client = httpx.Client(base_url=base, headers={"authorization": f"Bearer {key}"}, timeout=30)
    r = client.post("/v1/evaluators", content=_yaml(receiver.url), headers={"content-type": "application/yaml"})
    assert r.status_code == 200, r.text
    # two evaluators fail the one step: one webhook (one remediation per step and kind)
    assert client.post("/v1/ingest/json", json=[record("r1", "extract", output={"total": "x"})]).status_code == 200
    return client


def _actions(client: httpx.Client) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = client.get("/v1/actions").json()
    return out


def _check_exactly_once(client: httpx.Client, receiver: HangingReceiver, procs: Procs) -> None:
    (action,) = _wait(lambda: [a for a in _actions(client) if a["status"] == "succeeded"], "the re-send", procs.logs)
    assert action["kind"] == "webhook" and action["attempts"] == 2
    assert set(action["reason"].removeprefix("failed: ").split(", ")) == {"total_is_number", "total_is_float"}
    assert receiver.acted == [action["idempotency_key"]]  # acted once
    assert receiver.deliveries == [action["idempotency_key"]] * 2  # the same id, twice at most
    assert len(_actions(client)) == 1


def test_serve_killed_mid_dispatch_sends_once(
    settings: Settings, tmp_path: Path, receiver: HangingReceiver, procs: Procs
) -> None:
    env = _env(settings, tmp_path, EVALSVC_RUNNER="inprocess")
    first, base = procs.serve(env)
    client = _setup(env, base, receiver)
    _wait(receiver.first.is_set, "the first delivery", procs.logs)
    assert [a["status"] for a in _actions(client)] == ["dispatched"]
    first.send_signal(signal.SIGKILL)
    assert first.wait(30) == -signal.SIGKILL
    _, base = procs.serve(env)
    with httpx.Client(base_url=base, headers=client.headers, timeout=30) as again:
        _check_exactly_once(again, receiver, procs)
    client.close()


@pytest.mark.services
def test_celery_worker_killed_mid_dispatch_sends_once(
    settings: Settings, tmp_path: Path, receiver: HangingReceiver, procs: Procs
) -> None:
    queue = f"evalsvc-once-{os.getpid()}-{time.monotonic_ns()}"
    env = _env(settings, tmp_path, EVALSVC_BROKER_URL=REDIS_URL, EVALSVC_QUEUE=queue)
    worker = procs.start(["worker", "--pool", "solo", "--concurrency", "1"], env)
    _, base = procs.serve(env)  # the API only: with a broker, the work goes to the Celery worker
    client = _setup(env, base, receiver)
    _wait(receiver.first.is_set, "the first delivery", procs.logs)
    assert [a["status"] for a in _actions(client)] == ["dispatched"]
    os.killpg(worker.pid, signal.SIGKILL)  # the worker and any child it forked
    assert worker.wait(30) == -signal.SIGKILL
    procs.start(["worker", "--pool", "solo", "--concurrency", "1"], env)
    _check_exactly_once(client, receiver, procs)
    client.close()
