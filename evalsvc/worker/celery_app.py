"""The Celery application of ``evalsvc worker`` (scale-out: Redis broker, PostgreSQL store).

Tasks carry ids only, are acknowledged late and rejected back to the queue if the worker dies, and
re-read their rows, so running one twice is harmless. On start (``worker_ready``) and every
``SWEEP_SECONDS`` after, a worker re-enqueues pending results and due actions: nothing that was
accepted waits on a lost message.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Celery, signals

from evalsvc.settings import Settings, get_settings

__all__ = ["SWEEP_SECONDS", "make_celery"]

logger = logging.getLogger(__name__)
SWEEP_SECONDS = 30.0


def make_celery(settings: Settings) -> Celery:
    app = Celery("evalsvc", broker=settings.broker_url, include=["evalsvc.worker.tasks"])
    app.conf.update(
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        task_default_queue=settings.queue,
        broker_transport_options={"visibility_timeout": 3600},
    )
    return app


app = make_celery(get_settings()) if get_settings().broker_url else Celery("evalsvc")


def sweep(settings: Settings) -> tuple[int, int]:
    """Enqueue every pending result and due action (crash recovery); returns their counts."""
    from evalsvc.pipeline.remediate import due_action_ids
    from evalsvc.pipeline.score import pending_ids
    from evalsvc.store.db import get_engine, migrate

    from .runner import CeleryRunner

    engine = get_engine(settings.resolved_database_url())
    migrate(engine)
    runner = CeleryRunner(settings=settings)
    scores = actions = 0
    after = 0
    while ids := pending_ids(engine=engine, limit=settings.score_batch_size, after_id=after):
        runner.submit_scores(ids)
        scores += len(ids)
        after = ids[-1]
    due = due_action_ids(engine=engine, settings=settings, limit=10_000)
    runner.submit_actions(due)
    actions = len(due)
    return scores, actions


@signals.worker_ready.connect
def _on_ready(**_: Any) -> None:
    settings = get_settings()
    stop = threading.Event()

    def loop() -> None:
        while True:
            try:
                scores, actions = sweep(settings)
                if scores or actions:
                    logger.info("sweep re-enqueued %d pending results and %d due actions", scores, actions)
            except Exception:
                logger.exception("sweep failed")
            if stop.wait(SWEEP_SECONDS):
                return

    threading.Thread(target=loop, name="evalsvc-sweep", daemon=True).start()


@signals.worker_process_init.connect
def _fresh_engines(**_: Any) -> None:
    # connections must not cross a fork
    from evalsvc.store.db import dispose_engines

    dispose_engines(close=False)


@signals.setup_logging.connect
def _logging(**_: Any) -> None:
    from evalsvc.logging import configure_logging

    configure_logging(get_settings(), service=True)
