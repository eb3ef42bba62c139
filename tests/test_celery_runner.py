"""The Celery runner for real: the API (TestClient) sends ids through the machine's Redis to an
``evalsvc worker`` subprocess, which scores into the same store (PostgreSQL, or a SQLite file) and
posts signed webhooks to a local receiver. Covers the happy path, recovery of pending rows whose
messages were lost, duplicate task deliveries, and the worker's refusal to start without a broker.

Each test session uses its own Celery queue, so concurrent sessions on one Redis do not steal
each other's tasks; each test starts its own worker and stops it in teardown.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from fastapi.testclient import TestClient

from evalsvc.api.main import create_app
from evalsvc.demo.receiver import WebhookReceiver
from evalsvc.pipeline.score import score_pending
from evalsvc.settings import Settings
from evalsvc.store.db import get_engine
from evalsvc.worker.celery_app import make_celery, sweep
from evalsvc.worker.runner import CeleryRunner

from .conftest import REDIS_URL, WEBHOOK_SECRET, Api, make_key
from .factories import record

pytestmark = pytest.mark.services

QUEUE = f"evalsvc-test-{secrets.token_hex(4)}"
WAIT_SECONDS = 60.0
SCORE_TASK_DONE = re.compile(r"Task evalsvc\.score_results\[[^]]+\] succeeded")

EVALUATOR_YAML = """
evaluators:
  - name: total_is_number
    scorer: json_schema
    target: {{workflow: invoice-agent, step: "extract*"}}
    params:
      schema: {{type: object, required: [total], properties: {{total: {{type: number}}}}}}
    on_fail: {{action: webhook, url: "{url}"}}
"""


def batch(prefix: str, *, good: int, bad: int) -> tuple[list[dict[str, Any]], set[str]]:
    """``good`` records whose total is a number and ``bad`` ones whose total is a string."""
    records = [record(run_key=f"{prefix}-ok-{i}") for i in range(good)]
    records += [record(run_key=f"{prefix}-bad-{i}", output={"total": "12,50"}) for i in range(bad)]
    return records, {f"{prefix}-bad-{i}" for i in range(bad)}


# ---- the worker process -----------------------------------------------------------------------


@dataclass
class WorkerProcess:
    proc: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # warm shutdown: finish the task at hand
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def worker_env(settings: Settings, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVALSVC_")}
    assert settings.webhook_secret is not None
    env.update(
        EVALSVC_HOME=str(home),
        EVALSVC_DATABASE_URL=settings.resolved_database_url(),
        EVALSVC_BROKER_URL=REDIS_URL,
        EVALSVC_QUEUE=QUEUE,
        EVALSVC_WEBHOOK_SECRET=settings.webhook_secret.get_secret_value(),
        EVALSVC_WEBHOOK_ALLOW_PRIVATE="true",
        EVALSVC_ACTION_BACKOFF_SECONDS=str(settings.action_backoff_seconds),
        EVALSVC_LOG_FORMAT="text",
        EVALSVC_LOG_LEVEL="INFO",
    )
    return env


@pytest.fixture
def start_worker(celery_settings: Settings, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start ``evalsvc worker`` subprocesses (stopped and waited for at teardown)."""
    started: list[WorkerProcess] = []

    def start(*, pool: str = "solo", concurrency: int = 1) -> WorkerProcess:
        log = tmp_path / f"worker-{len(started)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "evalsvc.cli", "worker", "--pool", pool, "--concurrency", str(concurrency)],
                env=worker_env(celery_settings, tmp_path / "worker-home"),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=tmp_path,
                start_new_session=True,  # a Ctrl-C of pytest does not reach it; teardown stops it
            )
        worker = WorkerProcess(proc, log)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


def wait_until(check: Callable[[], Any], *, what: str, worker: WorkerProcess | None) -> Any:
    """Poll ``check`` until it returns something truthy; fail with the worker's log otherwise."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        value = check()
        if value:
            return value
        if worker is not None and worker.proc.poll() is not None:
            pytest.fail(f"worker exited with {worker.proc.returncode} while waiting for {what}:\n{worker.tail()}")
        if time.monotonic() > deadline:
            log = f"\nworker log:\n{worker.tail()}" if worker else ""
            pytest.fail(f"timed out after {WAIT_SECONDS:.0f}s waiting for {what}{log}")
        time.sleep(0.2)


# ---- the API process --------------------------------------------------------------------------


@pytest.fixture
def celery_settings(settings: Settings) -> Settings:
    """The store of the ``settings`` fixture (SQLite file or PostgreSQL), with the Celery runner."""
    return settings.model_copy(
        update={"database_url": settings.resolved_database_url(), "broker_url": REDIS_URL, "queue": QUEUE}
    )


@pytest.fixture
def celery(celery_settings: Settings) -> Iterator[Celery]:
    """A Celery app on the test queue, to send tasks and purge the queue like an operator would."""
    app = make_celery(celery_settings)
    yield app
    app.close()


@pytest.fixture(scope="module", autouse=True)
def _drop_queue() -> Iterator[None]:
    yield
    r = redis.Redis.from_url(REDIS_URL)
    r.delete(QUEUE, f"_kombu.binding.{QUEUE}", f"_kombu.binding_permanent.{QUEUE}")
    r.close()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(WEBHOOK_SECRET) as rec:
        yield rec


@pytest.fixture
def api(celery_settings: Settings, receiver: WebhookReceiver) -> Iterator[Api]:
    with TestClient(create_app(celery_settings)) as client:
        assert client.app.state.worker is None  # type: ignore[attr-defined]
        a = Api(client, make_key(celery_settings, "default"))
        a.apply(EVALUATOR_YAML.format(url=receiver.url))
        yield a


def evals(api: Api, **params: Any) -> list[dict[str, Any]]:
    r = api.get("/v1/evals", params={"limit": 1000, **params})
    assert r.status_code == 200, r.text
    rows: list[dict[str, Any]] = r.json()
    return rows


def actions(api: Api) -> list[dict[str, Any]]:
    r = api.get("/v1/actions", params={"limit": 1000})
    assert r.status_code == 200, r.text
    rows: list[dict[str, Any]] = r.json()
    return rows


def queued(queue: str = QUEUE) -> int:
    r = redis.Redis.from_url(REDIS_URL)
    try:
        return int(r.llen(queue))
    finally:
        r.close()


def wait_scored(api: Api, worker: WorkerProcess, total: int) -> list[dict[str, Any]]:
    def done() -> list[dict[str, Any]] | None:
        rows = evals(api)
        return rows if len(rows) == total and all(e["status"] != "pending" for e in rows) else None

    rows: list[dict[str, Any]] = wait_until(done, what=f"{total} eval results to be scored", worker=worker)
    return rows


def wait_delivered(api: Api, worker: WorkerProcess, receiver: WebhookReceiver, n: int) -> list[dict[str, Any]]:
    def done() -> list[dict[str, Any]] | None:
        rows = actions(api)
        settled = len(rows) == n and all(a["status"] in ("succeeded", "failed") for a in rows)
        return rows if settled and len(receiver.received) >= n else None

    rows: list[dict[str, Any]] = wait_until(done, what=f"{n} webhook actions to settle", worker=worker)
    return rows


def assert_verdicts(rows: list[dict[str, Any]], bad: set[str], worker: WorkerProcess) -> None:
    got = {e["run_key"]: (e["status"], e["passed"]) for e in rows}
    want = {k: ("completed", k not in bad) for k in got}
    assert got == want, worker.tail()


def assert_delivered_once(
    acts: list[dict[str, Any]], receiver: WebhookReceiver, bad: set[str], worker: WorkerProcess
) -> None:
    assert [a["status"] for a in acts] == ["succeeded"] * len(bad), f"{acts}\n{worker.tail()}"
    assert all(a["kind"] == "webhook" and a["attempts"] == 1 for a in acts), acts
    assert len({(a["eval_result_id"], a["kind"]) for a in acts}) == len(acts)
    assert sorted(m["run"]["run_key"] for m in receiver.received) == sorted(bad)
    assert sorted(m["id"] for m in receiver.received) == sorted(a["idempotency_key"] for a in acts)
    assert receiver.repeats == 0, "a webhook was delivered more than once"
    assert receiver.rejected == 0, "a webhook failed signature verification"


# ---- tests ------------------------------------------------------------------------------------

POSTGRES_ONLY = pytest.mark.parametrize("settings", ["postgres"], indirect=True)


def test_worker_scores_ingested_steps_and_delivers_webhooks(
    api: Api, start_worker: Callable[..., WorkerProcess], receiver: WebhookReceiver
) -> None:
    worker = start_worker(pool="prefork", concurrency=2)  # the default pool of `evalsvc worker`
    records, bad = batch("e2e", good=4, bad=3)
    body = api.ingest(records)
    assert body["accepted"] == len(records), body

    rows = wait_scored(api, worker, len(records))
    assert_verdicts(rows, bad, worker)
    acts = wait_delivered(api, worker, receiver, len(bad))
    assert_delivered_once(acts, receiver, bad, worker)
    assert all(a["response"] is not None and a["completed_at"] and a["last_error"] is None for a in acts), acts


@POSTGRES_ONLY
def test_worker_start_recovers_work_whose_messages_were_lost(
    api: Api,
    celery: Celery,
    celery_settings: Settings,
    start_worker: Callable[..., WorkerProcess],
    receiver: WebhookReceiver,
) -> None:
    # results accepted while no worker ran, whose score tasks the broker then lost
    records, bad = batch("lost", good=5, bad=2)
    api.ingest(records)
    assert queued() >= 1
    celery.control.purge()  # a flushed Redis, or a dead worker's prefetched messages
    assert queued() == 0
    # results a worker scored before dying, with its dispatch tasks never sent
    scored, bad_scored = batch("died", good=1, bad=2)
    api.ingest(scored)
    celery.control.purge()
    engine = get_engine(celery_settings.resolved_database_url())
    ids = [e["id"] for e in evals(api, status="pending") if e["run_key"].startswith("died-")]
    assert score_pending(engine=engine, ids=ids).failed == len(bad_scored)
    assert [a["status"] for a in actions(api)] == ["pending"] * len(bad_scored)
    assert len(evals(api, status="pending")) == len(records)
    assert queued() == 0

    worker = start_worker()  # its worker_ready sweep re-enqueues what is pending or due
    rows = wait_scored(api, worker, len(records) + len(scored))
    assert_verdicts(rows, bad | bad_scored, worker)
    acts = wait_delivered(api, worker, receiver, len(bad) + len(bad_scored))
    assert_delivered_once(acts, receiver, bad | bad_scored, worker)


@POSTGRES_ONLY
def test_duplicate_score_tasks_score_and_act_once(
    api: Api, celery: Celery, start_worker: Callable[..., WorkerProcess], receiver: WebhookReceiver
) -> None:
    records, bad = batch("dup", good=3, bad=3)
    api.ingest(records)  # one task in the queue, nobody consuming yet
    ids = [e["id"] for e in evals(api, status="pending")]
    assert len(ids) == len(records)
    for _ in range(2):  # the same ids again, twice: a redelivery and a retry, say
        celery.send_task("evalsvc.score_results", args=[ids])
    assert queued() == 3

    # four threads take the three copies (and the start-up sweep's fourth) at once
    worker = start_worker(pool="threads", concurrency=4)
    rows = wait_scored(api, worker, len(records))
    assert_verdicts(rows, bad, worker)
    acts = wait_delivered(api, worker, receiver, len(bad))
    wait_until(lambda: queued() == 0, what="the queue to drain", worker=worker)
    wait_until(
        lambda: len(SCORE_TASK_DONE.findall(worker.log.read_text())) >= 3,
        what="the three copies of the score task to finish",
        worker=worker,
    )
    time.sleep(1.0)  # duplicate dispatch tasks may still be running: let them, then count
    assert "Traceback" not in worker.log.read_text(), worker.tail()
    assert_delivered_once(actions(api), receiver, bad, worker)
    assert acts == actions(api)


@POSTGRES_ONLY
def test_failed_delivery_is_retried_by_the_worker(
    api: Api, start_worker: Callable[..., WorkerProcess], receiver: WebhookReceiver
) -> None:
    receiver.fail_first = 2  # the target answers 503 twice, then accepts
    worker = start_worker()
    records, bad = batch("retry", good=1, bad=1)
    api.ingest(records)

    acts = wait_delivered(api, worker, receiver, 1)
    assert [(a["status"], a["attempts"], a["last_error"]) for a in acts] == [("succeeded", 3, None)], acts
    assert [m["run"]["run_key"] for m in receiver.received] == sorted(bad)
    assert receiver.repeats == 0 and receiver.fail_first == 0


@POSTGRES_ONLY
def test_periodic_sweep_resends_only_stale_work_and_only_to_an_empty_queue(
    api: Api, celery: Celery, celery_settings: Settings
) -> None:
    runner = CeleryRunner(settings=celery_settings)
    records, _ = batch("sweep", good=2, bad=1)
    api.ingest(records)  # no worker: its score task waits in the queue
    assert queued() == 1
    assert sweep(celery_settings, runner=runner, periodic=True) == (0, 0), "tasks wait: they are on their way"
    celery.control.purge()
    assert sweep(celery_settings, runner=runner, periodic=True) == (0, 0), "younger than the lease: maybe in flight"
    time.sleep(0.05)
    stale = celery_settings.model_copy(update={"lease_seconds": 0.01})
    assert sweep(stale, runner=runner, periodic=True) == (len(records), 0)
    assert queued() == 1
    assert sweep(stale, runner=runner, periodic=True) == (0, 0)
    assert sweep(celery_settings, runner=runner) == (len(records), 0), "a worker's first sweep takes everything"
    assert queued() == 2
    celery.control.purge()
    runner.app.close()


def test_worker_without_broker_exits_4(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVALSVC_")}
    env["EVALSVC_HOME"] = str(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "evalsvc.cli", "worker", "--pool", "solo"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        timeout=60,
        check=False,
    )
    out = proc.stdout.decode() + proc.stderr.decode()
    assert proc.returncode == 4, out
    assert "EVALSVC_BROKER_URL is not set" in out
    assert "Traceback" not in out, out
