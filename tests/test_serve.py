"""`evalsvc serve` as a real process: health, OpenAPI, ingest, and the in-process worker."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .factories import SCHEMA_YAML, record


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, str]]:
    env = {**os.environ, "EVALSVC_HOME": str(tmp_path / "home"), "EVALSVC_DATABASE_URL": "", "EVALSVC_BROKER_URL": ""}
    key = subprocess.run([sys.executable, "-m", "evalsvc.cli", "keys", "create"], env=env, capture_output=True,
                         text=True, check=True, timeout=120).stdout.strip()  # fmt: skip
    port = _free_port()
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "evalsvc.cli", "serve", "--port", str(port)], env=env,
                            stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.1)
        yield base, key
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        log.close()
        # uvicorn shuts down cleanly, then re-raises the signal it was stopped with
        assert code in (0, -signal.SIGTERM), (tmp_path / "serve.log").read_text()
        assert "Application shutdown complete" in (tmp_path / "serve.log").read_text()


def test_serve_ingests_and_scores(served: tuple[str, str]) -> None:
    base, key = served
    health = httpx.get(f"{base}/healthz").json()
    assert health == {"status": "ok", "store": "sqlite", "runner": "inprocess"}
    assert "/v1/ingest/{connector}" in httpx.get(f"{base}/openapi.json").json()["paths"]
    headers = {"authorization": f"Bearer {key}"}
    with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
        r = client.post("/v1/evaluators", content=SCHEMA_YAML, headers={"content-type": "application/yaml"})
        assert r.status_code == 200, r.text
        r = client.post(
            "/v1/ingest/json", json=[record("r1", "extract", output={"total": "x"}), record("r2", "extract")]
        )
        assert r.status_code == 200 and r.json()["accepted"] == 2
        deadline = time.monotonic() + 30
        while True:
            evals = client.get("/v1/evals").json()
            if len(evals) == 2 and all(e["status"] == "completed" for e in evals):
                break
            assert time.monotonic() < deadline, evals
            time.sleep(0.1)
        assert {e["run_key"]: e["passed"] for e in evals} == {"r1": False, "r2": True}
        assert client.get("/v1/reviews").json()[0]["run_key"] == "r1"
        assert client.get("/v1/runs").status_code == 200
        assert httpx.get(f"{base}/v1/runs").status_code == 401
