"""Celery tasks: thin wrappers over the pipeline. Ids in, rows re-read, results written once."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.exc import OperationalError

from evalsvc.errors import RetryableError
from evalsvc.pipeline.remediate import dispatch_action
from evalsvc.pipeline.run_evals import schedule_final_runs
from evalsvc.pipeline.score import score_pending
from evalsvc.settings import get_settings
from evalsvc.store.db import get_engine, migrate
from evalsvc.store.sql import chunks

from .celery_app import app

__all__ = ["dispatch_action_task", "final_runs", "score_results"]

logger = logging.getLogger(__name__)

# acknowledged when done (a worker that dies mid-task leaves it to another), retried with backoff
_DURABLE: dict[str, Any] = {
    "acks_late": True,
    "reject_on_worker_lost": True,
    "retry_backoff": True,
    "retry_jitter": True,
    "max_retries": 8,
}


def _engine() -> Any:
    engine = get_engine(get_settings().resolved_database_url())
    migrate(engine)
    return engine


@app.task(name="evalsvc.score_results", autoretry_for=(RetryableError, OperationalError), **_DURABLE)
def score_results(ids: list[int]) -> dict[str, int]:
    report = score_pending(engine=_engine(), ids=ids, settings=get_settings())
    for aid in report.action_ids:
        dispatch_action_task.delay(aid)
    return {"scored": report.scored, "failed": report.failed, "errors": report.errors}


@app.task(name="evalsvc.dispatch_action", autoretry_for=(OperationalError,), **_DURABLE)
def dispatch_action_task(action_id: int) -> str:
    outcome = dispatch_action(engine=_engine(), settings=get_settings(), action_id=action_id)
    if outcome.status == "retry" and outcome.retry_at is not None:
        dispatch_action_task.apply_async(args=[action_id], eta=outcome.retry_at)
    return outcome.status


@app.task(name="evalsvc.final_runs", autoretry_for=(OperationalError,), **_DURABLE)
def final_runs() -> int:
    """Store the run steps of runs that became final and send their run-level evaluations to be
    scored (ingest sends this when steps finished in a project with run-level evaluators)."""
    ids = schedule_final_runs(engine=_engine())
    for part in chunks(ids, get_settings().score_batch_size):
        score_results.delay(list(part))
    return len(ids)
