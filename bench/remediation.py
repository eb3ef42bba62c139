"""Remediation latency: from a step's record being ingested to its remediation reaching the orchestrator.

The "orchestrator" is a local webhook receiver (Standard Webhooks, signature verified) on
127.0.0.1; the evaluator fails every bench record and has ``on_fail: webhook`` pointing at it.
For each sample the bench posts one failing record to ``POST /v1/ingest/json`` of a real
``evalsvc serve`` process and measures, on the wall clock of this one machine, from just before
the request is sent to the moment the receiver has read the verified webhook of that record.
Samples are sequential (one in flight), after a few warm-up ones.

Two runners:

- ``inprocess``: ``evalsvc serve`` with its in-process worker (ingest wakes it; it scores and
  dispatches in the same pass).
- ``celery``: ``evalsvc serve`` as the API only, plus ``evalsvc worker`` processes on Redis (the
  scoring task enqueues the dispatch task at once).

    $ .venv/bin/python bench/remediation.py                      # both runners, 100 samples each
    $ .venv/bin/python bench/remediation.py --runner inprocess --samples 30
    $ .venv/bin/python bench/remediation.py --redis-url redis://127.0.0.1:6379/12 --database-url postgresql+psycopg://...
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import orjson
from standardwebhooks.webhooks import Webhook

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
TARGETS = {"inprocess": 1.0, "celery": 2.0}  # median seconds (issue 5)

EVALUATORS = """
evaluators:
  - name: total_is_number
    scorer: json_schema
    target: {{step: extract}}
    params: {{schema: {{type: object, required: [total], properties: {{total: {{type: number}}}}}}}}
    on_fail: {{action: webhook, url: "{url}"}}
"""


class Receiver:
    """The orchestrator endpoint: verifies each webhook and notes when the run's remediation arrived."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.cond = threading.Condition()
        webhook, receiver = Webhook(SECRET), self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                webhook.verify(body, dict(self.headers))
                now = time.time()
                run_key = orjson.loads(body)["run"]["run_key"]
                self.send_response(200)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"{}")
                with receiver.cond:
                    receiver.arrived.setdefault(run_key, now)
                    receiver.cond.notify_all()

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/orchestrator"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, run_key: str, timeout: float) -> float:
        with self.cond:
            if not self.cond.wait_for(lambda: run_key in self.arrived, timeout):
                raise TimeoutError(f"no remediation for {run_key} within {timeout} s")
            return self.arrived[run_key]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "evalsvc.cli", *args]


@contextmanager
def _processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


def measure(runner: str, *, samples: int, warmup: int, database_url: str, redis_url: str, workers: int) -> list[float]:
    receiver = Receiver()
    home = Path(tempfile.mkdtemp(prefix=f"evalsvc-bench-remediation-{runner}-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVALSVC_")}
    env.update(
        EVALSVC_HOME=str(home),
        EVALSVC_DATABASE_URL=database_url,
        EVALSVC_WEBHOOK_SECRET=SECRET,
        EVALSVC_WEBHOOK_ALLOW_PRIVATE="true",
        EVALSVC_LOG_LEVEL="WARNING",
    )
    if runner == "celery":
        env.update(EVALSVC_BROKER_URL=redis_url, EVALSVC_QUEUE=f"evalsvc-bench-{secrets.token_hex(4)}")
    else:
        env.update(EVALSVC_BROKER_URL="", EVALSVC_RUNNER="inprocess")
    log = (home / "processes.log").open("wb")
    latencies: list[float] = []
    with _processes() as procs:
        key = subprocess.run(_cli("keys", "create"), env=env, capture_output=True, text=True, check=True).stdout.strip()
        port = _free_port()
        procs.append(subprocess.Popen(_cli("serve", "--port", str(port)), env=env, stdout=log, stderr=log))
        if runner == "celery":
            for _ in range(workers):
                procs.append(subprocess.Popen(_cli("worker", "--pool", "solo"), env=env, stdout=log, stderr=log))
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, headers={"authorization": f"Bearer {key}"}, timeout=60) as client:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                    raise SystemExit(f"evalsvc did not start; see {home / 'processes.log'}")
                time.sleep(0.1)
            r = client.post("/v1/evaluators", content=EVALUATORS.format(url=receiver.url),
                            headers={"content-type": "application/yaml"})  # fmt: skip
            r.raise_for_status()
            for i in range(warmup + samples):
                run_key = f"{runner}-{i}"
                body = orjson.dumps([{"source": "json", "run_key": run_key, "step_key": "extract",
                                      "status": "completed", "output": {"total": "12,50"}}])  # fmt: skip
                t0 = time.time()
                r = client.post("/v1/ingest/json", content=body, headers={"content-type": "application/json"})
                r.raise_for_status()
                arrived = receiver.wait_for(run_key, timeout=120)
                if i >= warmup:
                    latencies.append(arrived - t0)
    log.close()
    receiver.close()
    return latencies


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runner", choices=["inprocess", "celery", "both"], default="both")
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2, help="Celery worker processes (solo pool each).")
    parser.add_argument("--database-url", default="", help="Default: a SQLite file in a temporary EVALSVC_HOME.")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    args = parser.parse_args()
    runners = ["inprocess", "celery"] if args.runner == "both" else [args.runner]
    print("| runner | samples | median | p95 | max | target (median) | met |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for runner in runners:
        lat = measure(runner, samples=args.samples, warmup=args.warmup, database_url=args.database_url,
                      redis_url=args.redis_url, workers=args.workers)  # fmt: skip
        med = statistics.median(lat)
        met = "yes" if med < TARGETS[runner] else "**no**"
        print(f"| {runner} | {len(lat)} | {med * 1000:.0f} ms | {p95(lat) * 1000:.0f} ms | "
              f"{max(lat) * 1000:.0f} ms | < {TARGETS[runner]:g} s | {met} |")  # fmt: skip


if __name__ == "__main__":
    main()
