"""`evalsvc serve --workers 2` as a real process: two uvicorn worker processes on one port share one
SQLite store; concurrent ingest through both is stored once, and every evaluation is scored once
by the in-process workers (their claims are in the store)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from .factories import SCHEMA_YAML, record

THREADS, BATCHES, PER_BATCH = 6, 4, 50


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _children(pid: int) -> list[int]:
    return [int(c) for task in Path(f"/proc/{pid}/task").glob("*/children") for c in task.read_text().split()]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, str, int, Path]]:
    home = tmp_path / "home"
    env = {**os.environ, "EVALSVC_HOME": str(home), "EVALSVC_DATABASE_URL": "", "EVALSVC_BROKER_URL": ""}
    key = subprocess.run([sys.executable, "-m", "evalsvc.cli", "keys", "create"], env=env, capture_output=True,
                         text=True, check=True, timeout=120).stdout.strip()  # fmt: skip
    port = _free_port()
    log_path = tmp_path / "serve.log"
    log = log_path.open("w")
    proc = subprocess.Popen([sys.executable, "-m", "evalsvc.cli", "serve", "--port", str(port), "--workers", "2"],
                            env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200 and len(_children(proc.pid)) >= 2:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        yield base, key, proc.pid, home
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        log.close()
        assert code in (0, -signal.SIGTERM), log_path.read_text()


def test_two_worker_processes_ingest_and_score_once(served: tuple[str, str, int, Path]) -> None:
    base, key, pid, home = served
    assert len(_children(pid)) >= 2  # the supervisor and two worker processes
    headers = {"authorization": f"Bearer {key}"}
    with httpx.Client(base_url=base, headers=headers, timeout=120) as client:
        r = client.post("/v1/evaluators", content=SCHEMA_YAML, headers={"content-type": "application/yaml"})
        assert r.status_code == 200, r.text

    def post(thread: int) -> list[dict[str, int]]:
        out = []
        with httpx.Client(base_url=base, headers=headers, timeout=120) as c:
            for b in range(BATCHES):
                recs = []
                for i in range(PER_BATCH):
                    n = (thread * BATCHES + b) * PER_BATCH + i
                    bad = n % 10 == 0
                    recs.append(record(f"run-{n}", "extract", output={"total": "x" if bad else 1.5}))
                # the same batch twice, in two requests that may land on different processes
                first = c.post("/v1/ingest/json", json=recs)
                again = c.post("/v1/ingest/json", json=recs)
                assert first.status_code == 200 and again.status_code == 200, (first.text, again.text)
                out += [first.json(), again.json()]
        return out

    with ThreadPoolExecutor(THREADS) as pool:
        answers = [a for part in pool.map(post, range(THREADS)) for a in part]
    total = THREADS * BATCHES * PER_BATCH
    assert sum(a["accepted"] for a in answers) == total
    assert sum(a["duplicate"] for a in answers) == total
    assert sum(a["rejected"] for a in answers) == 0

    engine = sa.create_engine(f"sqlite:///{home / 'evalsvc.db'}")
    try:
        deadline = time.monotonic() + 120
        while True:
            with engine.connect() as conn:
                statuses = dict(conn.execute(sa.text("SELECT status, count(*) FROM eval_result GROUP BY status")).all())
            if statuses == {"completed": total}:
                break
            assert time.monotonic() < deadline, statuses
            time.sleep(0.2)
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM step")).scalar() == total
            failed = conn.execute(sa.text("SELECT count(*) FROM eval_result WHERE passed = 0")).scalar()
            assert failed == total // 10
            # on_fail: review, once per failed result
            assert conn.execute(sa.text("SELECT count(*) FROM review_item")).scalar() == total // 10
    finally:
        engine.dispose()
