"""`evalsvc serve` as a real process: health, OpenAPI, ingest, and the in-process worker."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .factories import SCHEMA_YAML, record
from .serve_process import running_serve


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, str]]:
    with running_serve(tmp_path, check_shutdown=True) as served:
        yield served


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
