"""The in-band verdict of a step, long-polled by workflow code (GET /v1/runs/{run_key}/steps/{step_key}/verdict).

Workflow code that must not go on before a step is judged asks for the step's verdict and waits up
to ``wait`` seconds for it (``evalsvc.client.Client.wait_for_verdict`` does this)::

    GET /v1/runs/6f1c.../steps/activity:5/verdict?wait=30
    -> {"state": "failed", "attempt": 1, "verdicts": [...], "actions": [{"kind": "retry", ...}], ...}

``state`` is ``pending`` (the step is not finished, or a verdict is still being scored), ``failed``
(a completed verdict failed the step: answered at once, even while other evaluators still score it)
or ``passed`` (every verdict is in and none failed; skipped and errored verdicts do not fail a step;
a step that no evaluator targets passes with no verdicts). Each answer lists the step's verdicts,
the actions evalsvc planned for it (retry, pause, review, ... with their status and idempotency key)
and its review items. A step that is not in the store when the wait ends is a 404; one that is
still pending then is answered as ``pending``.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import anyio
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from evalsvc.errors import Conflict, NotFound
from evalsvc.schemas import TERMINAL_STEP_STATUSES
from evalsvc.store.models import Action, EvalResult, ReviewItem, Run, Step
from evalsvc.store.queries import ActionPublic, VerdictPublic

from ..deps import EngineDep, ProjectDep, SettingsDep

__all__ = ["ReviewState", "StepVerdict", "router", "step_verdict"]

router = APIRouter(prefix="/v1", tags=["verdicts"])


class ReviewState(BaseModel):
    id: int
    status: str
    reviewer: str | None = None
    comment: str | None = None


class StepVerdict(BaseModel):
    """What workflow code needs to decide whether to go on after a step."""

    state: Literal["pending", "passed", "failed"]
    source: str
    run_key: str
    step_key: str
    attempt: int
    step_id: int
    step_status: str
    verdicts: list[VerdictPublic] = Field(default_factory=list)
    actions: list[ActionPublic] = Field(default_factory=list)
    reviews: list[ReviewState] = Field(default_factory=list)


def _state(step: Step, results: list[EvalResult]) -> Literal["pending", "passed", "failed"]:
    if any(r.status == "completed" and r.passed is False for r in results):
        return "failed"
    if step.status not in TERMINAL_STEP_STATUSES or any(r.status == "pending" for r in results):
        return "pending"
    return "passed"


def step_verdict(
    *, session: Session, project_id: int, run_key: str, step_key: str, source: str | None, attempt: int | None
) -> StepVerdict | None:
    """The verdict of one step attempt (the latest attempt unless given); None when it is not stored."""
    q = select(Run).where(Run.project_id == project_id, Run.run_key == run_key)
    if source:
        q = q.where(Run.source == source)
    runs = session.exec(q).all()
    if len(runs) > 1:
        raise Conflict(f"run key {run_key!r} exists in sources {sorted(r.source for r in runs)}; pass source",
                       field="source")  # fmt: skip
    if not runs:
        return None
    run = runs[0]
    sq = select(Step).where(Step.run_id == run.id, Step.step_key == step_key)
    sq = sq.where(Step.attempt == attempt) if attempt is not None else sq.order_by(col(Step.attempt).desc()).limit(1)
    step = session.exec(sq).first()
    if step is None:
        return None
    results = list(session.exec(select(EvalResult).where(EvalResult.step_id == step.id)).all())
    actions = session.exec(select(Action).where(Action.step_id == step.id).order_by(col(Action.id))).all()
    reviews = session.exec(select(ReviewItem).where(ReviewItem.step_id == step.id).order_by(col(ReviewItem.id))).all()
    return StepVerdict(
        state=_state(step, results),
        source=run.source,
        run_key=run.run_key,
        step_key=step.step_key,
        attempt=step.attempt,
        step_id=step.id or 0,
        step_status=step.status,
        verdicts=[VerdictPublic.model_validate(r) for r in sorted(results, key=lambda r: r.evaluator)],
        actions=[ActionPublic.model_validate(a) for a in actions],
        reviews=[ReviewState(id=r.id or 0, status=r.status, reviewer=r.reviewer, comment=r.comment) for r in reviews],
    )


def _read(engine: Engine, **kw: Any) -> StepVerdict | None:
    with Session(engine, expire_on_commit=False) as session:  # a short read per look: no transaction held open
        return step_verdict(session=session, **kw)


@router.get(
    "/runs/{run_key}/steps/{step_key}/verdict",
    response_model=StepVerdict,
    summary="A step's verdict; with wait, hold the request until it is judged (long-poll)",
)
async def verdict(
    run_key: str,
    step_key: str,
    request: Request,
    project: ProjectDep,
    engine: EngineDep,
    settings: SettingsDep,
    wait: float = Query(
        default=0, ge=0, description="Seconds to wait for a pending verdict (cut to EVALSVC_VERDICT_MAX_WAIT_SECONDS)."
    ),
    source: str | None = Query(default=None, description="The run's source, when its run key exists in several."),
    attempt: int | None = Query(default=None, ge=1, description="The step attempt (default: the latest)."),
) -> StepVerdict:
    deadline = time.monotonic() + min(wait, settings.verdict_max_wait_seconds)
    kw: dict[str, Any] = dict(project_id=project.id or 0, run_key=run_key, step_key=step_key, source=source,
                              attempt=attempt)  # fmt: skip
    while True:
        answer = await anyio.to_thread.run_sync(lambda: _read(engine, **kw))
        if answer is not None and answer.state != "pending":
            return answer
        if time.monotonic() >= deadline or await request.is_disconnected():
            if answer is None:
                what = f"no step {step_key!r}" + (f" attempt {attempt}" if attempt else "")
                raise NotFound(f"{what} in run {run_key!r}", field="step_key")
            return answer
        await anyio.sleep(min(settings.verdict_poll_seconds, max(0.0, deadline - time.monotonic())))
