"""The Celery app of the Celery remediation tests, with evalsvc's hook installed: a task whose first
run gives a bad answer (the test's evaluator fails it, evalsvc re-sends it, the second run passes).
Runs are counted on the broker (``INCR``), so a test sees how often a task really ran. The broker
comes from ``EVALSVC_TEST_CELERY_REMEDIATION_BROKER``.

    $ EVALSVC_TEST_CELERY_REMEDIATION_BROKER=redis://127.0.0.1:6390/0 \\
        celery -A tests.celery_remediation_app worker -E -Q remediation
"""

from __future__ import annotations

import os

import redis
from celery import Celery

from evalsvc.client.celery import install

QUEUE = "remediation"

app = Celery("evalsvc-remediation-test", broker=os.environ.get("EVALSVC_TEST_CELERY_REMEDIATION_BROKER", "memory://"))
app.conf.update(
    worker_send_task_events=True,
    task_send_sent_event=True,  # task-sent carries the queue, which a pause stops
    task_default_queue=QUEUE,
    task_ignore_result=True,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=1,
)
install(app)


def _count(key: str) -> int:
    client = redis.Redis.from_url(str(app.conf.broker_url))
    try:
        return int(client.incr(f"runs:{key}"))
    finally:
        client.close()


@app.task(name="remediation.answer")
def answer(key: str, *, topic: str = "refunds") -> str:
    """'bad …' on the first run of ``key``, 'good …' afterwards."""
    n = _count(key)
    return f"{'bad' if n == 1 else 'good'} answer about {topic} (run {n})"


@app.task(name="remediation.echo")
def echo(key: str, text: str) -> str:
    _count(key)
    return text
