"""The Celery app whose worker the Celery connector's tests run (``celery -A tests.celery_events_app
worker -E``): tasks that succeed, fail, retry and then succeed, and a chain and a task that starts a
child, for parent links. The broker comes from ``EVALSVC_TEST_CELERY_EVENTS_BROKER``.

    $ EVALSVC_TEST_CELERY_EVENTS_BROKER=redis://127.0.0.1:6390/0 \\
        celery -A tests.celery_events_app worker -E --pool solo
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

app = Celery("evalsvc-events-test", broker=os.environ.get("EVALSVC_TEST_CELERY_EVENTS_BROKER", "memory://"))
app.conf.update(
    worker_send_task_events=True,  # what `-E` turns on
    task_send_sent_event=True,  # task-sent events from the clients (here: the tests)
    task_ignore_result=True,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=1,
)


@app.task(name="events.add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="events.double")
def double(x: int) -> int:
    return x * 2


@app.task(name="events.fail")
def fail(message: str) -> None:
    raise ValueError(message)


@app.task(name="events.flaky", bind=True, max_retries=5)
def flaky(self: Any, fails: int, *, label: str = "flaky") -> str:
    """Fails (and retries at once) ``fails`` times, then succeeds."""
    if self.request.retries < fails:
        raise self.retry(exc=RuntimeError(f"{label}: attempt {self.request.retries + 1} failed"), countdown=0)
    return f"{label} ok after {self.request.retries} retries"


@app.task(name="events.spawn", bind=True)
def spawn(self: Any, x: int) -> str:
    """Starts a child task (its parent is this task, its root this task's root)."""
    child = add.delay(x, 1)
    return f"spawned {child.id}"


@app.task(name="events.gate")
def gate(x: int, key: str, timeout: float = 120.0) -> int:
    """Runs until the Redis key ``key`` exists on the broker (the test sets it): long enough to
    restart a listener while it runs, however slow the machine."""
    import time

    import redis

    client = redis.Redis.from_url(app.conf.broker_url)
    deadline = time.monotonic() + timeout
    try:
        while not client.exists(key) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        client.close()
    return x
