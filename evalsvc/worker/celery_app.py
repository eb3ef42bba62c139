"""The Celery application of ``evalsvc worker`` (scale-out: Redis broker, PostgreSQL store).

Tasks carry ids only, are acknowledged late and rejected back to the queue if the worker dies, and
re-read their rows, so running one twice is harmless. On start (``worker_ready``) a worker
re-enqueues every pending result and due action, and every ``SWEEP_SECONDS`` after that it
re-enqueues what has been waiting too long: nothing that was accepted waits on a lost message.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from celery import Celery, signals

from evalsvc.settings import Settings, get_settings

if TYPE_CHECKING:
    from datetime import datetime

    from sqlalchemy.engine import Engine

    from .runner import CeleryRunner

__all__ = ["SWEEP_SECONDS", "make_celery", "queue_length", "sweep"]

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


def queue_length(app: Celery, queue: str) -> int:
    """Messages waiting in ``queue`` (not those a worker holds); 0 when the broker has no such
    queue, as Redis has none while it is empty."""
    with app.connection_for_write() as conn:
        try:
            return int(conn.default_channel.queue_declare(queue=queue, passive=True).message_count)
        except conn.channel_errors:
            return 0


def _stale_pending_ids(*, engine: Engine, before: datetime, limit: int, after_id: int) -> list[int]:
    import sqlalchemy as sa

    from evalsvc.store.models import EvalResult, table

    t = table(EvalResult)
    q = (
        sa.select(t.c.id)
        .where(t.c.status == "pending", t.c.id > after_id, t.c.created_at < before)
        .order_by(t.c.id)
        .limit(limit)
    )
    with engine.connect() as conn:
        return [r[0] for r in conn.execute(q)]


def sweep(settings: Settings, *, runner: CeleryRunner | None = None, periodic: bool = False) -> tuple[int, int]:
    """Enqueue pending results and due actions (crash recovery); returns their counts.

    A worker's first sweep, when it starts, takes every pending result. The periodic ones take only
    results pending for longer than ``EVALSVC_LEASE_SECONDS``, and nothing while tasks still wait
    in the queue: re-sending a batch that a worker is scoring right now would score it twice (an
    LLM judge paid twice), and re-sending a backlog on every pass would grow the queue without end.
    Due actions are always taken (claiming one is atomic, so a duplicate is skipped cheaply).
    """
    from evalsvc.pipeline.remediate import due_action_ids
    from evalsvc.pipeline.score import pending_ids
    from evalsvc.store.db import get_engine, migrate
    from evalsvc.store.models import utcnow

    from .runner import CeleryRunner

    engine = get_engine(settings.resolved_database_url())
    migrate(engine)
    runner = runner or CeleryRunner(settings=settings)
    from evalsvc.pipeline.run_evals import schedule_final_runs

    # run-level evaluators of runs that became final: new work, sent now (a first sweep's pending
    # pass below takes them anyway)
    run_ids = schedule_final_runs(engine=engine)
    if periodic and run_ids:
        runner.submit_scores(run_ids)
    if periodic and queue_length(runner.app, settings.queue):
        return len(run_ids), 0
    before = utcnow() - timedelta(seconds=settings.lease_seconds)
    scores, after = (len(run_ids) if periodic else 0), 0
    while True:
        if periodic:
            ids = _stale_pending_ids(engine=engine, before=before, limit=settings.score_batch_size, after_id=after)
        else:
            ids = pending_ids(engine=engine, limit=settings.score_batch_size, after_id=after)
        if not ids:
            break
        runner.submit_scores(ids)
        scores += len(ids)
        after = ids[-1]
    due = due_action_ids(engine=engine, settings=settings, limit=10_000)
    runner.submit_actions(due)
    return scores, len(due)


@signals.worker_ready.connect
def _on_ready(**_: Any) -> None:
    from .runner import CeleryRunner

    settings = get_settings()
    stop = threading.Event()

    def loop() -> None:
        runner = CeleryRunner(settings=settings)
        periodic = False
        while True:
            try:
                scores, actions = sweep(settings, runner=runner, periodic=periodic)
                if scores or actions:
                    logger.info("sweep re-enqueued %d pending results and %d due actions", scores, actions)
                periodic = True
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
