"""The Celery connector: the real event fixture (translation, ``evalsvc ingest``, the API), the folding
of retries and out-of-order batches, and ``evalsvc listen celery`` for real: a private
``redis-server``, a Celery worker running ``tests/celery_events_app.py`` with events on, and the
listener as a subprocess, through a restart of the broker.
"""

from __future__ import annotations

import doctest
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from typer.testing import CliRunner

from connectors import get as get_connector
from connectors.celery_events import CeleryEventFolder
from evalsvc.cli import app as cli_app
from evalsvc.errors import PayloadRejected
from evalsvc.schemas import StepRecord, step_status_rank
from evalsvc.settings import Settings

from .conftest import SHARED, Api

FIXTURE = SHARED / "fixtures" / "celery" / "dea_task_received_started_succeeded.jsonl"
UUID = "13d1e3c4-cecd-4306-903f-97ed1ec2d73d"
TASK = "datacube._celery_runner.run_cloud_pickled_function"
ROOT = Path(__file__).resolve().parents[1]
WAIT_SECONDS = 90.0
# the console script's entry point (`python -m evalsvc.cli` would run cli.py as __main__, without the
# commands that the cli_* modules add to evalsvc.cli's app)
EVALSVC = [sys.executable, "-c", "from evalsvc.cli import main; main()"]

EVALUATOR_YAML = """
evaluators:
  - name: task_has_result
    scorer: not_empty
    target: {source: celery, kind: task}
    params: {field: output}
"""


def fixture_events() -> list[dict[str, Any]]:
    if not FIXTURE.exists():
        pytest.skip(f"the shared fixtures are absent ({FIXTURE} not found)")
    return [orjson.loads(line) for line in FIXTURE.read_bytes().splitlines() if line.strip()]


def cli_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVALSVC_")}
    env.update(EVALSVC_HOME=str(settings.home), EVALSVC_DATABASE_URL=settings.resolved_database_url())
    return env


# ---- the translation ---------------------------------------------------------------------------


def test_fixture_events_become_one_step_with_its_timing_input_and_output() -> None:
    records = [StepRecord.model_validate(r) for r in get_connector("celery").to_steps(fixture_events())]
    assert [(r.source, r.run_key, r.step_key, r.attempt) for r in records] == [("celery", UUID, UUID, 1)] * 3
    assert [r.status.value if r.status else None for r in records] == ["scheduled", "running", "completed"]
    assert {r.name for r in records} == {TASK}
    assert {r.kind for r in records} == {"task"}
    assert {r.workflow for r in records} == {TASK}
    received, started, succeeded = records
    assert started.started_at == datetime.fromtimestamp(1507241505.7179525, tz=UTC)
    assert succeeded.ended_at == datetime.fromtimestamp(1507241575.8904157, tz=UTC)
    assert received.input["args"].startswith("(functools.partial(<function do_fc_task at 0x7fb79d1332f0>")
    assert received.input["kwargs"].startswith("{'task': {'nbar': Tile<sources=<xarray.DataArray")
    assert isinstance(succeeded.output, str) and succeeded.output.startswith("<xarray.DataArray (time: 1)>")
    assert received.parent_step_key is None and received.error is None
    assert received.attributes["celery.hostname"] == "celery@kveikur"
    assert received.attributes["celery.retries"] == 0
    assert succeeded.attributes["celery.runtime"] == pytest.approx(70.13666241300234)
    assert received.run_attributes == {"celery.root_id": UUID}


def test_ingest_cli_imports_the_fixture_once(settings: Settings, tmp_path: Path) -> None:
    fixture_events()
    runner = CliRunner()
    env = cli_env(settings)
    first = runner.invoke(cli_app, ["ingest", str(FIXTURE), "--connector", "celery"], env=env)
    assert first.exit_code == 0, first.output
    assert "3 accepted, 0 duplicate, 0 rejected" in first.output
    again = runner.invoke(cli_app, ["ingest", str(FIXTURE), "--connector", "celery"], env=env)
    assert again.exit_code == 0 and "0 accepted, 3 duplicate, 0 rejected" in again.output, again.output

    shown = runner.invoke(cli_app, ["runs", "show", UUID, "--json"], env=env)
    assert shown.exit_code == 0, shown.output
    run = orjson.loads(shown.output)
    assert (run["source"], run["workflow"], run["status"]) == ("celery", TASK, "completed")
    [step] = run["steps"]
    assert (step["step_key"], step["attempt"], step["name"], step["status"]) == (UUID, 1, TASK, "completed")
    assert step["latency_ms"] == pytest.approx((1507241575.8904157 - 1507241505.7179525) * 1000, abs=0.01)
    assert step["attributes"]["celery.event"] == "task-succeeded"


def test_malformed_events_are_refused_naming_the_field(settings: Settings, tmp_path: Path, api: Api) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(
        b'{"type": "task-received", "uuid": "a", "name": "t", "timestamp": 1.0}\n{"type": "task-started"}\n'
    )
    result = CliRunner().invoke(cli_app, ["ingest", str(bad), "--connector", "celery"], env=cli_env(settings))
    assert result.exit_code == 4, result.output
    assert "1.uuid" in result.output and "task id" in result.output

    r = api.post("/v1/ingest/celery", json=[{"type": "task-failed", "uuid": "b", "timestamp": "yesterday"}])
    assert r.status_code == 422, r.text
    assert "0.timestamp" in r.text
    r = api.get("/v1/runs")
    assert r.status_code == 200 and r.json() == [], r.text

    r = api.post("/v1/ingest/celery", json={"events": fixture_events()})
    assert r.status_code == 200, r.text
    detail = api.get(f"/v1/runs/{UUID}").json()
    assert [(s["step_key"], s["status"]) for s in detail["steps"]] == [(UUID, "completed")]


# events of one retried task as a real worker sent them (tests/celery_events_app.py: flaky(2); exceptions
# and tracebacks shortened), in the order they arrived: the worker sends its task events in groups, so the
# retry's task-sent (sent from inside the task) overtakes the received / started / retried of its attempt
T, W, C = "505b4f38-9230-46b5-9ad7-422d492b82b4", "celery@vm", "gen15728@vm"
FLAKY = [
    {"type": "task-sent", "uuid": T, "root_id": T, "parent_id": None, "name": "events.flaky", "args": "(2,)",
     "kwargs": "{}", "retries": 0, "hostname": C, "timestamp": 1795320539.1986506, "clock": 9},
    {"type": "task-sent", "uuid": T, "root_id": T, "parent_id": T, "name": "events.flaky", "args": "(2,)",
     "kwargs": "{}", "retries": 1, "hostname": W, "timestamp": 1795320539.2102473, "clock": 15},
    {"type": "task-received", "uuid": T, "root_id": T, "parent_id": None, "name": "events.flaky", "args": "(2,)",
     "kwargs": "{}", "retries": 0, "hostname": W, "timestamp": 1795320539.2037935, "clock": 12},
    {"type": "task-started", "uuid": T, "hostname": W, "timestamp": 1795320539.2039154, "clock": 13},
    {"type": "task-retried", "uuid": T, "hostname": W, "timestamp": 1795320539.219176, "clock": 15,
     "exception": "RuntimeError('attempt 1 failed')", "traceback": "Traceback ...\nRuntimeError: attempt 1 failed"},
    {"type": "task-sent", "uuid": T, "root_id": T, "parent_id": T, "name": "events.flaky", "args": "(2,)",
     "kwargs": "{}", "retries": 2, "hostname": W, "timestamp": 1795320539.2474098, "clock": 27},
    {"type": "task-received", "uuid": T, "root_id": T, "parent_id": T, "name": "events.flaky", "args": "(2,)",
     "kwargs": "{}", "retries": 1, "hostname": W, "timestamp": 1795320539.2457223, "clock": 24},
    {"type": "task-started", "uuid": T, "hostname": W, "timestamp": 1795320539.24584, "clock": 25},
    {"type": "task-retried", "uuid": T, "hostname": W, "timestamp": 1795320539.254081, "clock": 27,
     "exception": "RuntimeError('attempt 2 failed')", "traceback": "Traceback ...\nRuntimeError: attempt 2 failed"},
    {"type": "task-received", "uuid": T, "root_id": T, "parent_id": T, "name": "events.flaky", "args": "(2,)",
     "kwargs": "{}", "retries": 2, "hostname": W, "timestamp": 1795320539.2712436, "clock": 34},
    {"type": "task-started", "uuid": T, "hostname": W, "timestamp": 1795320539.2713387, "clock": 35},
    {"type": "task-succeeded", "uuid": T, "hostname": W, "timestamp": 1795320539.2716599, "clock": 36,
     "result": "'flaky ok after 2 retries'", "runtime": 0.0003},
]  # fmt: skip
FLAKY_WANT = {
    1: ("failed", "RuntimeError('attempt 1 failed')", None),
    2: ("failed", "RuntimeError('attempt 2 failed')", None),
    3: ("completed", None, "'flaky ok after 2 retries'"),
}


def fold_per_attempt(batches: list[list[dict[str, Any]]]) -> dict[int, tuple[str, str | None, Any]]:
    """Fold the batches with one folder and merge the records of each attempt the store's way:
    the furthest status wins; every record keeps the task's run, name and no parent."""
    folder = CeleryEventFolder()
    got: dict[int, tuple[str, str | None, Any]] = {}
    for batch in batches:
        for rec in folder.fold(batch):
            assert (rec["run_key"], rec["step_key"], rec["name"], rec.get("parent_step_key")) == (
                T, T, "events.flaky", None)  # fmt: skip
            old = got.get(rec["attempt"])
            if old is None or step_status_rank(rec["status"]) >= step_status_rank(old[0]):
                err = rec.get("error")
                got[rec["attempt"]] = (rec["status"], err["message"] if err else None, rec.get("output"))
    return got


@pytest.mark.parametrize("size", [1, 2, 3, 5, len(FLAKY)])
def test_retries_keep_the_task_id_and_raise_the_attempt_in_any_batching(size: int) -> None:
    batches = [FLAKY[i : i + size] for i in range(0, len(FLAKY), size)]
    assert fold_per_attempt(batches) == FLAKY_WANT


def test_retries_fold_the_same_in_time_order_reversed_or_shuffled() -> None:
    assert fold_per_attempt([list(reversed(FLAKY))]) == FLAKY_WANT
    by_time = sorted(FLAKY, key=lambda e: e["timestamp"])
    assert fold_per_attempt([[e] for e in by_time]) == FLAKY_WANT
    # another worker received the retry before the first reported its task-retried
    late_retry = [e for e in by_time if e is not FLAKY[4]]
    late_retry.insert(late_retry.index(FLAKY[7]) + 1, FLAKY[4])
    assert fold_per_attempt([[e] for e in late_retry]) == FLAKY_WANT


def test_a_rejected_batch_leaves_the_folder_as_it_was() -> None:
    folder = CeleryEventFolder()
    attempt_one = FLAKY[2:5]  # received, started, retried
    with pytest.raises(PayloadRejected) as refused:
        folder.fold([*attempt_one, {"type": "task-started", "uuid": T, "timestamp": "soon"}])
    assert refused.value.field == "3.timestamp"
    assert len(folder) == 0
    got = [(r["attempt"], r["status"]) for r in folder.fold(attempt_one)]
    assert got == [(1, "scheduled"), (1, "running"), (1, "failed")]


def test_children_get_their_root_as_run_and_later_events_keep_it() -> None:
    root, child = "r-1", "c-1"
    folder = CeleryEventFolder(max_tasks=2)
    first = folder.fold([
        {"type": "task-received", "uuid": root, "root_id": root, "parent_id": None, "name": "flow.start",
         "retries": 0, "timestamp": 10.0},
        {"type": "task-received", "uuid": child, "root_id": root, "parent_id": root, "name": "flow.step",
         "retries": 0, "timestamp": 11.0},
    ])  # fmt: skip
    later = folder.fold([
        {"type": "task-started", "uuid": child, "timestamp": 12.0},
        {"type": "task-failed", "uuid": child, "timestamp": 13.0, "exception": "KeyError('x')", "traceback": "tb"},
        {"type": "task-revoked", "uuid": "gone", "timestamp": 14.0, "terminated": False, "expired": True},
        {"type": "worker-heartbeat", "hostname": "w", "timestamp": 14.0},
    ])  # fmt: skip
    assert [(r["run_key"], r["step_key"], r.get("parent_step_key"), r["workflow"]) for r in first] == [
        (root, root, None, "flow.start"), (root, child, root, "flow.start")]  # fmt: skip
    assert [(r["run_key"], r["step_key"], r["status"], r.get("name")) for r in later] == [
        (root, child, "running", "flow.step"), (root, child, "failed", "flow.step"),
        ("gone", "gone", "timed_out", None)]  # fmt: skip
    assert later[1]["error"] == {"message": "KeyError('x')", "type": "KeyError", "stack": "tb"}
    assert len(folder) == 2  # bounded: the root was forgotten first


def test_resolver_places_tasks_the_folder_has_not_seen() -> None:
    from connectors.celery_events import TaskIdentity

    asked: list[list[str]] = []

    def resolve(uuids: list[str]) -> dict[str, TaskIdentity]:
        asked.append(uuids)
        return {"c": TaskIdentity(run_key="r", parent="p", name="flow.step", retried=1, received_at={2: -1e18})}

    recs = CeleryEventFolder(resolve=resolve).fold([
        {"type": "task-succeeded", "uuid": "c", "timestamp": 5.0, "result": "1"},
        {"type": "task-succeeded", "uuid": "d", "timestamp": 5.0, "result": "2"},
    ])  # fmt: skip
    assert asked == [["c", "d"]]
    assert [(r["run_key"], r["step_key"], r["attempt"], r.get("parent_step_key"), r.get("name")) for r in recs] == [
        ("r", "c", 2, "p", "flow.step"), ("d", "d", 1, None, None)]  # fmt: skip


def test_module_example_runs() -> None:
    import connectors.celery_events

    assert doctest.testmod(connectors.celery_events).failed == 0


def test_listen_help_documents_its_options_and_a_missing_broker_exits_4(settings: Settings) -> None:
    runner = CliRunner()
    shown = runner.invoke(cli_app, ["listen", "celery", "--help"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0
    for option in ("--broker", "--project", "--batch", "--flush-seconds", "--max-seconds", "--until-idle"):
        assert option in shown.output
    env = {**cli_env(settings), "EVALSVC_CELERY_EVENTS_BROKER_URL": ""}
    missing = runner.invoke(cli_app, ["listen", "celery"], env=env)
    assert missing.exit_code == 4 and "--broker" in missing.output, missing.output
    wrong = runner.invoke(cli_app, ["listen", "celery", "--broker", "http://127.0.0.1:1"], env=env)
    assert wrong.exit_code == 4 and "--broker must be" in wrong.output, wrong.output


# ---- the front door: a real worker, a private Redis, `evalsvc listen celery` ----------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PrivateRedis:
    """A ``redis-server`` of the test's own on a free port, so it can be restarted (no persistence:
    a restart is a broker that lost everything, as after a crash)."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port = folder, _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.folder), "--logfile", str(self.folder / "redis.log")],
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + 30
        while True:
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                assert self.proc.poll() is None and time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)

    def restart(self) -> None:
        self.stop()
        self.start()


@dataclass
class Proc:
    proc: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_for(self, needle: str, *, count: int = 1) -> None:
        wait_until(lambda: self.text().count(needle) >= count, what=f"{needle!r} in {self.log.name}", proc=self)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def wait_until(check: Callable[[], Any], *, what: str, proc: Proc | None = None) -> Any:
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        value = check()
        if value:
            return value
        if proc is not None and proc.proc.poll() is not None:
            pytest.fail(
                f"{proc.log.name} exited with {proc.proc.returncode} waiting for {what}:\n{proc.text()[-3000:]}"
            )
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}" + (f"\n{proc.text()[-3000:]}" if proc else ""))
        time.sleep(0.2)


@pytest.fixture(scope="module")
def private_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = PrivateRedis(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tasks(private_redis: PrivateRedis) -> Iterator[Any]:
    """The tasks module, its app pointed at the private Redis (to send tasks like a client)."""
    from . import celery_events_app

    celery_events_app.app.conf.broker_url = private_redis.url
    yield celery_events_app
    celery_events_app.app.close()


@pytest.fixture(scope="module")
def events_worker(private_redis: PrivateRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    """``celery -A tests.celery_events_app worker -E``: a real worker sending task events (prefork, the
    default pool: a solo pool would hold its buffered events while a task runs)."""
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("EVALSVC_")},
           "EVALSVC_TEST_CELERY_EVENTS_BROKER": private_redis.url}  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tests.celery_events_app", "worker", "-E", "--pool", "prefork", "--concurrency", "2",
             "--without-mingle", "--without-gossip", "--loglevel", "INFO", "--hostname", f"events-{os.getpid()}@%h"],
            env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    worker = Proc(proc, log)
    worker.wait_for("ready.")
    yield worker
    worker.stop()


@pytest.fixture
def start_listener(settings: Settings, private_redis: PrivateRedis, tmp_path: Path) -> Iterator[Callable[[], Proc]]:
    started: list[Proc] = []

    def start() -> Proc:
        log = tmp_path / f"listen-{len(started)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [*EVALSVC, "listen", "celery", "--broker", private_redis.url,
                 "--flush-seconds", "0.3", "--max-seconds", "280"],
                env=cli_env(settings), cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
        listener = Proc(proc, log)
        started.append(listener)
        listener.wait_for("connected to")
        return listener

    yield start
    for listener in started:
        listener.stop()


def runs_when_done(api: Api, want: dict[str, int], proc: Proc) -> dict[str, dict[str, Any]]:
    """Wait until each run has its number of step attempts, all ended and judged; answer the runs."""

    def done() -> dict[str, dict[str, Any]] | None:
        got = {}
        for run_key, attempts in want.items():
            r = api.get(f"/v1/runs/{run_key}")
            if r.status_code != 200:
                return None
            run = r.json()
            steps = run["steps"]
            if len(steps) != attempts or any(step_status_rank(s["status"]) < 2 for s in steps):
                return None
            if any(not s["verdicts"] or s["verdicts"][0]["status"] == "pending" for s in steps):
                return None
            got[run_key] = run
        return got

    runs: dict[str, dict[str, Any]] = wait_until(done, what=f"runs {want}", proc=proc)
    return runs


def steps_of(run: dict[str, Any]) -> list[tuple[Any, ...]]:
    """(name, attempt, status, parent, output, error type, verdict) of each step, by start time."""
    steps = sorted(run["steps"], key=lambda s: (s["started_at"] or "", s["attempt"]))
    return [(s["name"], s["attempt"], s["status"], s["parent_step_key"], s["output"],
             (s["error"] or {}).get("type"), s["verdicts"][0]["passed"]) for s in steps]  # fmt: skip


def all_run_keys(api: Api) -> set[str]:
    r = api.get("/v1/runs", params={"limit": 500})
    assert r.status_code == 200, r.text
    return {run["run_key"] for run in r.json()}


@pytest.mark.services
@pytest.mark.slow
def test_listen_celery_follows_a_real_worker_through_a_broker_restart(
    api: Api, tasks: Any, events_worker: Proc, private_redis: PrivateRedis, start_listener: Callable[[], Proc]
) -> None:
    api.apply(EVALUATOR_YAML)
    listener = start_listener()
    ok, bad, flaky = tasks.add.delay(2, 3), tasks.fail.delay("boom"), tasks.flaky.delay(2)
    chain = (tasks.add.s(1, 2) | tasks.double.s()).delay()
    spawn = tasks.spawn.delay(5)
    want = {ok.id: 1, bad.id: 1, flaky.id: 3, chain.parent.id: 2, spawn.id: 2}
    runs = runs_when_done(api, want, listener)

    assert steps_of(runs[ok.id]) == [("events.add", 1, "completed", None, "5", None, True)]
    [step] = runs[ok.id]["steps"]
    assert (step["step_key"], step["input"], step["kind"]) == (ok.id, {"args": "(2, 3)", "kwargs": "{}"}, "task")
    assert (runs[ok.id]["workflow"], runs[ok.id]["status"]) == ("events.add", "completed")
    assert runs[ok.id]["attributes"] == {"celery.root_id": ok.id, "celery.broker": private_redis.url}
    assert steps_of(runs[bad.id]) == [("events.fail", 1, "failed", None, None, "ValueError", False)]
    assert runs[bad.id]["steps"][0]["error"]["message"] == "ValueError('boom')"
    assert "Traceback" in runs[bad.id]["steps"][0]["error"]["stack"]
    assert runs[bad.id]["status"] == "failed"
    assert steps_of(runs[flaky.id]) == [
        ("events.flaky", 1, "failed", None, None, "RuntimeError", False),
        ("events.flaky", 2, "failed", None, None, "RuntimeError", False),
        ("events.flaky", 3, "completed", None, "'flaky ok after 2 retries'", None, True),
    ]
    assert {s["step_key"] for s in runs[flaky.id]["steps"]} == {flaky.id}
    messages = sorted(s["error"]["message"] for s in runs[flaky.id]["steps"] if s["error"])
    # the pool decides whether the event carries the Retry or its cause; either way the cause is named
    assert [m.endswith(f"RuntimeError('flaky: attempt {n} failed')") for n, m in enumerate(messages, 1)] == [True] * 2
    assert runs[flaky.id]["status"] == "completed"
    add_id = chain.parent.id
    assert steps_of(runs[add_id]) == [("events.add", 1, "completed", None, "3", None, True),
                                      ("events.double", 1, "completed", add_id, "6", None, True)]  # fmt: skip
    assert {s["step_key"] for s in runs[add_id]["steps"]} == {add_id, chain.id}
    assert runs[add_id]["workflow"] == "events.add"
    spawned = steps_of(runs[spawn.id])
    assert spawned[0][:4] == ("events.spawn", 1, "completed", None)
    assert spawned[1] == ("events.add", 1, "completed", spawn.id, "6", None, True)
    assert runs[spawn.id]["workflow"] == "events.spawn"
    assert all_run_keys(api) == set(want), "a task landed in a run of its own"

    # the broker dies and comes back empty; the listener reconnects, and new work arrives once
    private_redis.restart()
    listener.wait_for("reconnected to")
    after, flaky_after = tasks.add.delay(10, 20), tasks.flaky.delay(1, label="after-restart")
    want.update({after.id: 1, flaky_after.id: 2})
    runs = runs_when_done(api, want, listener)
    assert steps_of(runs[after.id]) == [("events.add", 1, "completed", None, "30", None, True)]
    assert [s[1:3] for s in steps_of(runs[flaky_after.id])] == [(1, "failed"), (2, "completed")]
    assert all_run_keys(api) == set(want)
    evals = api.get("/v1/evals", params={"limit": 500}).json()
    assert len(evals) == sum(want.values()), "one verdict per attempt, nothing twice"
    assert len({(e["run_key"], e["step_key"], e["attempt"]) for e in evals}) == len(evals)

    assert listener.stop() == 0, listener.text()
    text = listener.text()
    assert "SIGTERM: ingesting what arrived, then stopping" in text and "stopped:" in text, text
    assert "broker unavailable" in text and "Traceback" not in text, text
    assert "rejected" not in text.replace("0 rejected", ""), text


@pytest.mark.services
@pytest.mark.slow
def test_a_restarted_listener_finds_the_run_of_a_task_it_did_not_see_start(
    api: Api, tasks: Any, events_worker: Proc, private_redis: PrivateRedis, start_listener: Callable[[], Proc]
) -> None:
    api.apply(EVALUATOR_YAML)
    first = start_listener()
    key = f"release-{os.getpid()}-{time.monotonic_ns()}"
    chain = (tasks.add.s(4, 4) | tasks.gate.s(key)).delay()
    root, child = chain.parent.id, chain.id

    def child_running() -> bool:
        r = api.get(f"/v1/runs/{root}")
        return r.status_code == 200 and any(
            s["step_key"] == child and s["status"] == "running" for s in r.json()["steps"]
        )

    wait_until(child_running, what="the gated child to be running", proc=first)
    assert first.stop(signal.SIGINT) == 0, first.text()
    assert "SIGINT" in first.text()
    second = start_listener()  # knows nothing of the child: only its task-succeeded will come
    client = redis.Redis.from_url(private_redis.url)
    client.set(key, 1, ex=600)
    client.close()
    runs = runs_when_done(api, {root: 2}, second)
    assert steps_of(runs[root]) == [("events.add", 1, "completed", None, "8", None, True),
                                    ("events.gate", 1, "completed", root, "8", None, True)]  # fmt: skip
    assert all_run_keys(api) == {root}, "the child's end landed in a run of its own"


@pytest.mark.services
def test_listen_until_idle_stops_by_itself(
    sqlite_settings: Settings, private_redis: PrivateRedis, tmp_path: Path
) -> None:
    cmd = [*EVALSVC, "listen", "celery", "--broker", private_redis.url, "--until-idle", "1", "--flush-seconds", "0.2"]
    done = subprocess.run(cmd, env=cli_env(sqlite_settings), cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "connected to " + private_redis.url in done.stdout
    assert "stopped: 0 events, 0 records" in done.stdout, done.stdout
