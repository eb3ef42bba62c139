"""The Celery adapter end to end: a private ``redis-server``, a real worker running
``tests/celery_remediation_app.py`` (evalsvc's hook installed), ``evalsvc listen celery`` ingesting its
events, evaluators applied through the API, and actions read back through ``GET /v1/actions``.

- retry: a task's first answer fails its eval, evalsvc re-sends the task with its original arguments
  and id, and attempt 2 of the same step runs and passes; a re-dispatch after a crash sends the task
  again, and the hook drops that copy (the task ran twice, not three times);
- pause and resume: a failed eval stops the workers consuming the task's queue, a task sent then stays
  queued, and approving the review resumes the queue and the task runs;
- cancel: rejecting a review revokes the task on the workers.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa

from evalsvc.adapters import ActionContext, ActionFailed, get
from evalsvc.adapters.celery import parse_arguments
from evalsvc.pipeline.remediate import dispatch_action
from evalsvc.settings import Settings
from evalsvc.store.db import get_engine
from evalsvc.store.models import Action, table, utcnow

from .conftest import Api
from .test_connector_celery import EVALSVC, ROOT, PrivateRedis, Proc, cli_env, private_redis, wait_until

__all__ = ["private_redis"]  # the module-scoped fixture, shared with the connector's tests

RETRY_YAML = """
evaluators:
  - name: answer_is_good
    scorer: regex
    target: {source: celery, kind: task, step: remediation.answer}
    params: {pattern: "^'good"}
    on_fail: {action: retry, max_attempts: 3}
"""

PAUSE_YAML = """
evaluators:
  - name: echo_is_polite
    scorer: regex
    target: {source: celery, kind: task, step: remediation.echo}
    params: {pattern: please}
    on_fail: {action: pause}
  - name: echo_is_reviewed
    scorer: regex
    target: {source: celery, kind: task, step: remediation.echo}
    params: {pattern: please}
    on_fail: {action: review}
"""

REVIEW_YAML = """
evaluators:
  - name: echo_is_reviewed
    scorer: regex
    target: {source: celery, kind: task, step: remediation.echo}
    params: {pattern: please}
    on_fail: {action: review}
"""


# ---- unit: the arguments a task is re-sent with --------------------------------------------------


def test_arguments_come_from_json_or_a_python_literal_and_nothing_else() -> None:
    assert parse_arguments({"args": '["a", 1, {"x": null}]', "kwargs": '{"k": true}'}) == (
        ["a", 1, {"x": None}], {"k": True})  # fmt: skip
    assert parse_arguments({"args": "('a', 1, None)", "kwargs": "{'k': True}"}) == (["a", 1, None], {"k": True})
    for bad in ({"args": "(<object at 0x1>,)", "kwargs": "{}"}, {"args": "('trunc...", "kwargs": "{}"},
                {"args": "{}", "kwargs": "{}"}, None):  # fmt: skip
        with pytest.raises(ValueError):
            parse_arguments(bad)


def test_module_examples_run() -> None:
    import doctest

    import evalsvc.adapters.celery

    result = doctest.testmod(evalsvc.adapters.celery)
    assert result.attempted == 2 and result.failed == 0


def _ctx(settings: Settings, kind: str, **step: Any) -> ActionContext:
    base = {"step_key": "t1", "attempt": 1, "name": "remediation.answer", "kind": "task", "status": "completed",
            "input": {"args": '["k"]', "kwargs": "{}"}, "output": "'bad'", "error": None, "attributes": {}}  # fmt: skip
    return ActionContext(
        action_id=1, kind=kind, idempotency_key="evalsvc-1-" + kind, reason=None, project="default",
        run={"id": 1, "source": "celery", "run_key": "t1", "workflow": None, "status": "completed",
             "attributes": {"celery.broker": "redis://:**@127.0.0.1:1/0"}},
        step={**base, **step}, verdict={}, on_fail={"action": kind, "max_attempts": 2}, settings=settings,
    )  # fmt: skip


def test_retry_refuses_what_it_cannot_send_without_retrying(settings: Settings) -> None:
    adapter = get("celery")
    assert adapter is not None and {"retry", "pause", "resume", "cancel"} <= adapter.kinds
    with pytest.raises(ActionFailed, match="masked password") as masked:
        adapter.perform(_ctx(settings, "retry"))
    assert masked.value.retryable is False
    direct = settings.model_copy(update={"celery_actions_broker_url": "redis://127.0.0.1:9/0"})
    with pytest.raises(ActionFailed, match="reached the limit") as limit:
        adapter.perform(_ctx(direct, "retry", attempt=2))
    assert limit.value.retryable is False
    with pytest.raises(ActionFailed, match=r"install evalsvc\.client\.celery") as unreadable:
        adapter.perform(_ctx(direct, "retry", input={"args": "(<Tile at 0x7f>,)", "kwargs": "{}"}))
    assert unreadable.value.retryable is False
    with pytest.raises(ActionFailed, match="broker unreachable") as down:  # nothing listens on port 9
        adapter.perform(_ctx(direct, "cancel"))
    assert down.value.retryable is True


# ---- the front door: a real worker on a private Redis ------------------------------------------


@pytest.fixture(scope="module")
def tasks(private_redis: PrivateRedis) -> Iterator[Any]:
    from . import celery_remediation_app

    celery_remediation_app.app.conf.broker_url = private_redis.url
    yield celery_remediation_app
    celery_remediation_app.app.close()


@pytest.fixture(scope="module")
def worker(private_redis: PrivateRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    log = tmp_path_factory.mktemp("remediation-worker") / "worker.log"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("EVALSVC_")},
           "EVALSVC_TEST_CELERY_REMEDIATION_BROKER": private_redis.url}  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tests.celery_remediation_app", "worker", "-E", "-Q", "remediation",
             "--pool", "prefork", "--concurrency", "1", "--without-mingle", "--without-gossip", "--loglevel", "INFO",
             "--hostname", f"remediation-{os.getpid()}@%h"],
            env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    proc_ = Proc(proc, log)
    proc_.wait_for("ready.")
    yield proc_
    proc_.stop()


@pytest.fixture
def listener(settings: Settings, private_redis: PrivateRedis, worker: Proc, tmp_path: Path) -> Iterator[Proc]:
    log = tmp_path / "listen.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*EVALSVC, "listen", "celery", "--broker", private_redis.url, "--flush-seconds", "0.3",
             "--max-seconds", "280"],
            env=cli_env(settings), cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    listen = Proc(proc, log)
    listen.wait_for("connected to")
    yield listen
    listen.stop()


def runs(private_redis: PrivateRedis, key: str) -> int:
    client = redis.Redis.from_url(private_redis.url)
    try:
        return int(client.get(f"runs:{key}") or 0)
    finally:
        client.close()


def judged(api: Api, run_key: str, attempts: int, proc: Proc) -> list[dict[str, Any]]:
    """The run's step attempts once there are ``attempts`` of them, all ended and judged."""

    def done() -> list[dict[str, Any]] | None:
        r = api.get(f"/v1/runs/{run_key}")
        if r.status_code != 200:
            return None
        steps = sorted(r.json()["steps"], key=lambda s: s["attempt"])
        if len(steps) < attempts or any(s["status"] not in ("completed", "failed", "cancelled") for s in steps):
            return None
        if any(not s["verdicts"] or any(v["status"] == "pending" for v in s["verdicts"]) for s in steps):
            return None
        return steps

    found: list[dict[str, Any]] = wait_until(done, what=f"{attempts} judged attempts of {run_key}", proc=proc)
    return found


def actions_of(api: Api, kind: str, want: Callable[[dict[str, Any]], bool], proc: Proc) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        got = [a for a in api.get("/v1/actions", params={"kind": kind}).json() if want(a)]
        return got[0] if got else None

    found: dict[str, Any] = wait_until(find, what=f"a {kind} action", proc=proc)
    return found


@pytest.mark.services
@pytest.mark.slow
def test_failed_eval_resends_the_task_and_attempt_two_passes_once(
    api: Api, settings: Settings, tasks: Any, private_redis: PrivateRedis, worker: Proc, listener: Proc
) -> None:
    api.apply(RETRY_YAML)
    key = f"retry-{time.monotonic_ns()}"
    sent = tasks.answer.apply_async((key,), kwargs={"topic": "late refunds"})

    first, second = judged(api, sent.id, 2, listener)
    assert (first["step_key"], first["attempt"], second["step_key"], second["attempt"]) == (sent.id, 1, sent.id, 2)
    assert first["output"].startswith("'bad answer about late refunds") and first["verdicts"][0]["passed"] is False
    assert second["output"].startswith("'good answer about late refunds") and second["verdicts"][0]["passed"] is True
    # the hook recorded the original arguments as JSON; the re-sent attempt has the same ones
    assert first["input"] == second["input"] == {"args": f'["{key}"]', "kwargs": '{"topic": "late refunds"}'}

    action = actions_of(api, "retry", lambda a: a["status"] == "succeeded", listener)
    assert action["response"]["task_id"] == sent.id and action["response"]["attempt"] == 2
    assert action["attempts"] == 1
    assert runs(private_redis, key) == 2

    # a worker that died after sending, before recording: the action is sent again after the lease
    engine = get_engine(settings.resolved_database_url())
    a = table(Action)
    with engine.begin() as conn:
        conn.execute(sa.update(a).where(a.c.id == action["id"]).values(
            status="dispatched", claimed_at=utcnow() - timedelta(seconds=settings.lease_seconds + 1)))  # fmt: skip
    assert dispatch_action(engine=engine, settings=settings, action_id=action["id"]).status == "succeeded"
    worker.wait_for(f"already re-sent for {action['idempotency_key']}")
    assert runs(private_redis, key) == 2  # the copy was dropped: attempt 2 ran once
    (again,) = [x for x in api.get("/v1/actions", params={"kind": "retry"}).json() if x["id"] == action["id"]]
    assert again["attempts"] == 2 and again["status"] == "succeeded"


def queued(private_redis: PrivateRedis, queue: str) -> int:
    client = redis.Redis.from_url(private_redis.url)
    try:
        return int(client.llen(queue))
    finally:
        client.close()


@pytest.mark.services
@pytest.mark.slow
def test_pause_stops_the_queue_until_the_review_is_approved(
    api: Api, tasks: Any, private_redis: PrivateRedis, worker: Proc, listener: Proc
) -> None:
    api.apply(PAUSE_YAML)
    try:
        _pause_then_resume(api, tasks, private_redis, listener)
    finally:  # the worker is shared by the module's tests: never leave its queue stopped
        tasks.app.control.add_consumer("remediation", reply=True, timeout=5)


def _pause_then_resume(api: Api, tasks: Any, private_redis: PrivateRedis, listener: Proc) -> None:
    rude = tasks.echo.apply_async((f"rude-{time.monotonic_ns()}", "give me the report"))
    judged(api, rude.id, 1, listener)
    pause = actions_of(api, "pause", lambda a: a["status"] in ("succeeded", "failed"), listener)
    assert pause["status"] == "succeeded", pause
    assert pause["response"]["queue"] == "remediation" and pause["response"]["workers"]

    # the workers no longer consume the queue: a task sent now stays in it
    key = f"waiting-{time.monotonic_ns()}"
    waiting = tasks.echo.apply_async((key, "please wait"))
    inspect = tasks.app.control.inspect(timeout=5)
    active = wait_until(inspect.active_queues, what="the workers' queues")
    assert all(q["name"] != "remediation" for queues in active.values() for q in queues), active
    time.sleep(2)  # ample time for a consuming worker to take it; the assertion is on the queue, not the time
    assert queued(private_redis, "remediation") == 1 and runs(private_redis, key) == 0

    (review,) = [r for r in api.get("/v1/reviews").json() if r["run_key"] == rude.id]
    r = api.post(f"/v1/reviews/{review['id']}/approve", json={"reviewer": "ana", "comment": "fine, go on"})
    assert r.status_code == 200, r.text
    resume = actions_of(api, "resume", lambda a: a["status"] in ("succeeded", "failed"), listener)
    assert resume["status"] == "succeeded" and resume["response"]["queue"] == "remediation", resume
    wait_until(lambda: runs(private_redis, key) == 1, what="the waiting task to run")
    assert judged(api, waiting.id, 1, listener)[0]["verdicts"][0]["passed"] is True


@pytest.mark.services
@pytest.mark.slow
def test_review_rejection_revokes_the_task(
    api: Api, tasks: Any, private_redis: PrivateRedis, worker: Proc, listener: Proc
) -> None:
    api.apply(REVIEW_YAML)
    sent = tasks.echo.apply_async((f"rejected-{time.monotonic_ns()}", "send it now"))
    judged(api, sent.id, 1, listener)
    (review,) = [r for r in api.get("/v1/reviews").json() if r["run_key"] == sent.id]
    r = api.post(f"/v1/reviews/{review['id']}/reject", json={"reviewer": "ana", "comment": "rude"})
    assert r.status_code == 200 and r.json()["follow_up_action_id"], r.text
    cancel = actions_of(api, "cancel", lambda a: a["status"] in ("succeeded", "failed"), listener)
    assert cancel["status"] == "succeeded" and cancel["response"]["revoked"] == sent.id, cancel
    inspect = tasks.app.control.inspect(timeout=5)
    revoked = wait_until(lambda: inspect.revoked() or {}, what="the workers' revoked ids")
    assert any(sent.id in ids for ids in revoked.values()), revoked
