"""The runner seam between the pipeline and whoever executes scoring and actions."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy.engine import Engine

from evalsvc.pipeline.remediate import DispatchOutcome, dispatch_action, due_action_ids
from evalsvc.pipeline.run_evals import schedule_final_runs
from evalsvc.pipeline.score import ScoreReport, pending_id_chunks, score_pending, score_stream
from evalsvc.settings import Settings
from evalsvc.store.sql import chunks

__all__ = ["CeleryRunner", "DrainReport", "InlineRunner", "Runner", "drain", "get_runner"]

logger = logging.getLogger(__name__)


class Runner(Protocol):
    def submit_scores(self, ids: Sequence[int]) -> None: ...
    def submit_actions(self, ids: Sequence[int]) -> None: ...
    def submit_final_runs(self) -> None:
        """Runs may have become final: schedule (and score) their run-level evaluations."""


@dataclass
class DrainReport:
    score: ScoreReport = field(default_factory=ScoreReport)
    actions: dict[str, int] = field(default_factory=dict)
    run_evals: int = 0  # run-level results scheduled on final runs by this drain


def dispatch_many(*, engine: Engine, settings: Settings, ids: Sequence[int]) -> list[DispatchOutcome]:
    out = []
    for aid in ids:
        try:
            out.append(dispatch_action(engine=engine, settings=settings, action_id=aid))
        except Exception:  # never let one action stop the others; it stays claimable after its lease
            logger.exception("dispatch of action %s crashed", aid)
    return out


def drain(
    *,
    engine: Engine,
    settings: Settings,
    progress: Callable[[int], None] | None = None,
    dispatch: bool = True,
) -> DrainReport:
    """Score every pending result and dispatch every due action, until none is left.

    This is also the crash recovery: pending rows left by a dead process are picked up here.
    """
    report = DrainReport()
    # final runs first: their run-level results join the pending ones scored below
    report.run_evals = len(schedule_final_runs(engine=engine))
    chunked = pending_id_chunks(engine=engine, limit=settings.score_batch_size)
    for part in score_stream(engine=engine, id_chunks=chunked, settings=settings):
        report.score.add(part)
        if progress:
            progress(part.scored + part.errors + part.skipped)
    if dispatch:
        while True:
            due = due_action_ids(engine=engine, settings=settings)
            if not due:
                break
            outcomes = dispatch_many(engine=engine, settings=settings, ids=due)
            for o in outcomes:
                report.actions[o.status] = report.actions.get(o.status, 0) + 1
            if all(o.status != "succeeded" for o in outcomes):
                break  # what is left waits for its backoff
    return report


class InlineRunner:
    """Runs the work at once, in the caller's thread (CLI commands, tests)."""

    def __init__(self, *, engine: Engine, settings: Settings) -> None:
        self.engine, self.settings = engine, settings

    def submit_scores(self, ids: Sequence[int]) -> None:
        for part in chunks(list(ids), self.settings.score_batch_size):
            report = score_pending(engine=self.engine, ids=part, settings=self.settings)
            self.submit_actions(report.action_ids)

    def submit_actions(self, ids: Sequence[int]) -> None:
        dispatch_many(engine=self.engine, settings=self.settings, ids=ids)

    def submit_final_runs(self) -> None:
        self.submit_scores(schedule_final_runs(engine=self.engine))


class CeleryRunner:
    """Sends ids to the Celery workers (``evalsvc worker``) through the broker."""

    def __init__(self, *, settings: Settings) -> None:
        from .celery_app import make_celery

        self.settings = settings
        self.app = make_celery(settings)

    def submit_scores(self, ids: Sequence[int]) -> None:
        for part in chunks(list(ids), self.settings.score_batch_size):
            # argsrepr: Celery would otherwise build a safe repr of the whole id list per message
            self.app.send_task("evalsvc.score_results", args=[list(part)], argsrepr=f"[<{len(part)} result ids>]")

    def submit_actions(self, ids: Sequence[int]) -> None:
        for aid in ids:
            self.app.send_task("evalsvc.dispatch_action", args=[aid])

    def submit_final_runs(self) -> None:
        # a worker looks for final runs at once, rather than at its next sweep (every 30 s)
        self.app.send_task("evalsvc.final_runs")


def get_runner(*, engine: Engine, settings: Settings) -> Runner:
    """Celery when a broker is configured; otherwise inline (``serve`` wraps it in a thread)."""
    if settings.runner == "celery":
        return CeleryRunner(settings=settings)
    return InlineRunner(engine=engine, settings=settings)
