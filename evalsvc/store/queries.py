"""Read-only queries behind the API, the CLI and the UI, scoped to one project.

Each returns pydantic ``*Public`` models, so the HTTP answer and the CLI's print agree.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import Session, col, select

from evalsvc.errors import Conflict, NotFound

from .models import Action, EvalResult, Evaluator, ReviewItem, Run, Step

__all__ = [
    "ActionPublic",
    "EvalPublic",
    "EvaluatorPublic",
    "ReviewDetail",
    "ReviewPublic",
    "RunDetail",
    "RunPublic",
    "StepDetail",
    "get_review_detail",
    "get_run",
    "human_verdicts",
    "list_actions",
    "list_evals",
    "list_reviews",
    "list_runs",
]


class _Public(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class RunPublic(_Public):
    id: int
    source: str
    run_key: str
    workflow: str | None
    status: str
    started_at: datetime | None
    ended_at: datetime | None
    attributes: dict[str, Any] | None = None
    failed_evals: int = 0


class VerdictPublic(_Public):
    id: int
    evaluator: str
    evaluator_version: str
    status: str
    passed: bool | None
    value: float | None
    label: str | None
    explanation: str | None
    error: str | None
    skip_reason: str | None
    human_passed: bool | None = Field(
        default=None, description="A reviewer's own verdict on the failed step, kept beside the scorer's."
    )


class ActionPublic(_Public):
    id: int
    eval_result_id: int
    run_id: int
    step_id: int
    kind: str
    status: str
    target: str | None
    reason: str | None
    attempts: int
    idempotency_key: str
    last_error: str | None
    response: dict[str, Any] | None
    created_at: datetime
    completed_at: datetime | None
    next_attempt_at: datetime | None


class StepDetail(_Public):
    id: int
    step_key: str
    attempt: int
    name: str
    kind: str
    status: str
    started_at: datetime | None
    ended_at: datetime | None
    latency_ms: float | None
    input: Any = None
    output: Any = None
    expected: Any = None
    error: dict[str, Any] | None = None
    parent_step_key: str | None = None
    model: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float | None = None
    attributes: dict[str, Any] | None = None
    verdicts: list[VerdictPublic] = Field(default_factory=list)


class RunDetail(RunPublic):
    steps: list[StepDetail] = Field(default_factory=list)
    actions: list[ActionPublic] = Field(default_factory=list)


class EvalPublic(VerdictPublic):
    run_id: int
    step_id: int
    source: str
    run_key: str
    workflow: str | None
    step_key: str
    step_name: str
    attempt: int
    created_at: datetime
    ended_at: datetime | None
    latency_ms: float | None = None
    links: dict[str, str] = Field(default_factory=dict)


class ReviewPublic(_Public):
    id: int
    status: str
    eval_result_id: int
    run_id: int
    step_id: int
    assignee: str | None
    queue: str | None = None
    reviewer: str | None
    comment: str | None
    human_passed: bool | None
    created_at: datetime
    decided_at: datetime | None
    evaluator: str | None = None
    explanation: str | None = None
    run_key: str | None = None
    source: str | None = None
    step_key: str | None = None
    attempt: int | None = None


class EvaluatorPublic(_Public):
    id: int
    name: str
    version: str
    scorer: str
    active: bool
    definition: dict[str, Any]
    created_at: datetime


def _verdict_order(v: VerdictPublic) -> tuple[int, str]:
    # failed first, then errors, then the rest
    rank = 0 if v.passed is False else 1 if v.status == "error" else 2
    return (rank, v.evaluator)


def resolve_run(*, session: Session, project_id: int, run_key: str, source: str | None = None) -> Run:
    q = select(Run).where(Run.project_id == project_id, Run.run_key == run_key)
    if source:
        q = q.where(Run.source == source)
    runs = session.exec(q).all()
    if not runs:
        raise NotFound(f"no run {run_key!r}" + (f" from source {source!r}" if source else ""), field="run_key")
    if len(runs) > 1:
        raise Conflict(
            f"run key {run_key!r} exists in sources {sorted(r.source for r in runs)}; pass source",
            field="source",
        )
    return runs[0]


def get_run(*, session: Session, project_id: int, run_key: str, source: str | None = None) -> RunDetail:
    """A run with every step attempt, each with its verdicts (failed first), and the actions taken."""
    run = resolve_run(session=session, project_id=project_id, run_key=run_key, source=source)
    steps = session.exec(
        select(Step)
        .where(Step.run_id == run.id)
        .order_by(col(Step.started_at).asc().nulls_last(), col(Step.step_key), col(Step.attempt))
    ).all()
    results = session.exec(select(EvalResult).where(EvalResult.run_id == run.id)).all()
    actions = session.exec(select(Action).where(Action.run_id == run.id).order_by(col(Action.id))).all()
    by_step: dict[int, list[VerdictPublic]] = {}
    human = human_verdicts(session=session, step_ids=[s.id or 0 for s in steps])
    for r in results:
        v = VerdictPublic.model_validate(r)
        if r.passed is False and r.step_id in human:
            v.human_passed = human[r.step_id]
        by_step.setdefault(r.step_id, []).append(v)
    detail = RunDetail.model_validate(run)
    detail.steps = [
        StepDetail.model_validate(s).model_copy(
            update={"verdicts": sorted(by_step.get(s.id or 0, []), key=_verdict_order)}
        )
        for s in steps
    ]
    detail.failed_evals = sum(1 for r in results if r.passed is False)
    detail.actions = [ActionPublic.model_validate(a) for a in actions]
    return detail


def list_runs(
    *,
    session: Session,
    project_id: int,
    status: str | None = None,
    workflow: str | None = None,
    failed_evaluator: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 50,
    offset: int = 0,
) -> list[RunPublic]:
    failed = (
        sa.select(col(EvalResult.run_id), sa.func.count().label("n"))
        .where(col(EvalResult.project_id) == project_id, col(EvalResult.passed) == sa.false())
        .group_by(col(EvalResult.run_id))
    )
    if failed_evaluator:
        failed = failed.where(col(EvalResult.evaluator) == failed_evaluator)
    sub = failed.subquery()
    q = (
        sa.select(Run, sa.func.coalesce(sub.c.n, 0))
        .outerjoin(sub, sub.c.run_id == col(Run.id))
        .where(col(Run.project_id) == project_id)
    )
    if failed_evaluator:
        q = q.where(sub.c.n > 0)
    if status:
        q = q.where(col(Run.status) == status)
    if workflow:
        q = q.where(col(Run.workflow) == workflow)
    if since:
        q = q.where(col(Run.updated_at) >= since)
    if until:
        q = q.where(col(Run.updated_at) < until)
    q = q.order_by(col(Run.started_at).desc().nullslast(), col(Run.id).desc()).limit(limit).offset(offset)
    out = []
    for run, n in session.execute(q):
        item = RunPublic.model_validate(run)
        item.failed_evals = n
        out.append(item)
    return out


def list_evals(
    *,
    session: Session,
    project_id: int,
    passed: bool | None = None,
    status: str | None = None,
    evaluator: str | None = None,
    run_id: int | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[EvalPublic]:
    q = (
        sa.select(
            EvalResult,
            col(Run.source),
            col(Run.run_key),
            col(Run.workflow),
            col(Step.step_key),
            col(Step.name),
            col(Step.attempt),
        )
        .join(Step, col(Step.id) == col(EvalResult.step_id))
        .join(Run, col(Run.id) == col(EvalResult.run_id))
        .where(col(EvalResult.project_id) == project_id)
    )
    if passed is not None:
        q = q.where(col(EvalResult.passed) == passed)
    if status:
        q = q.where(col(EvalResult.status) == status)
    if evaluator:
        q = q.where(col(EvalResult.evaluator) == evaluator)
    if run_id:
        q = q.where(col(EvalResult.run_id) == run_id)
    q = q.order_by(col(EvalResult.id).desc()).limit(limit).offset(offset)
    out = []
    rows = list(session.execute(q))
    human = human_verdicts(session=session, step_ids=[r[0].step_id for r in rows if r[0].passed is False])
    for res, source, run_key, workflow, step_key, step_name, attempt in rows:
        data = VerdictPublic.model_validate(res).model_dump()
        if res.passed is False and res.step_id in human:
            data["human_passed"] = human[res.step_id]
        out.append(
            EvalPublic(
                **data,
                run_id=res.run_id,
                step_id=res.step_id,
                source=source,
                run_key=run_key,
                workflow=workflow,
                step_key=step_key,
                step_name=step_name,
                attempt=attempt,
                created_at=res.created_at,
                ended_at=res.ended_at,
                latency_ms=res.latency_ms,
                links={"run": f"/v1/runs/{run_key}?source={source}"},
            )
        )
    return out


def human_verdicts(*, session: Session, step_ids: list[int]) -> dict[int, bool]:
    """The reviewers' overrides (``human_passed``) of the failed verdicts of these step attempts."""
    if not step_ids:
        return {}
    q = select(ReviewItem.step_id, ReviewItem.human_passed).where(
        col(ReviewItem.step_id).in_(sorted(set(step_ids))), col(ReviewItem.human_passed).is_not(None)
    )
    return {step_id: bool(h) for step_id, h in session.exec(q).all()}


def list_actions(
    *,
    session: Session,
    project_id: int,
    kind: str | None = None,
    status: str | None = None,
    run_id: int | None = None,
    limit: int = 100,
) -> list[ActionPublic]:
    q = select(Action).where(Action.project_id == project_id)
    if run_id is not None:
        q = q.where(Action.run_id == run_id)
    if kind:
        q = q.where(Action.kind == kind)
    if status:
        q = q.where(Action.status == status)
    rows = session.exec(q.order_by(col(Action.id).desc()).limit(limit)).all()
    return [ActionPublic.model_validate(a) for a in rows]


def list_reviews(
    *,
    session: Session,
    project_id: int,
    status: str | None = "open",
    review_id: int | None = None,
    queue: str | None = None,
    assignee: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[ReviewPublic]:
    """Review items, oldest first (the order a queue is worked in), filtered in the query."""
    q = (
        sa.select(
            ReviewItem,
            col(EvalResult.evaluator),
            col(EvalResult.explanation),
            col(Run.run_key),
            col(Run.source),
            col(Step.step_key),
            col(Step.attempt),
        )
        .join(EvalResult, col(EvalResult.id) == col(ReviewItem.eval_result_id))
        .join(Run, col(Run.id) == col(ReviewItem.run_id))
        .join(Step, col(Step.id) == col(ReviewItem.step_id))
        .where(col(ReviewItem.project_id) == project_id)
    )
    if status:
        q = q.where(col(ReviewItem.status) == status)
    if review_id is not None:
        q = q.where(col(ReviewItem.id) == review_id)
    if queue is not None:
        q = q.where(col(ReviewItem.queue) == queue)
    if assignee is not None:
        q = q.where(col(ReviewItem.assignee) == assignee)
    q = q.order_by(col(ReviewItem.id)).limit(limit).offset(offset)
    out = []
    for item, evaluator, explanation, run_key, source, step_key, attempt in session.execute(q):
        pub = ReviewPublic.model_validate(item)
        out.append(
            pub.model_copy(
                update={
                    "evaluator": evaluator,
                    "explanation": explanation,
                    "run_key": run_key,
                    "source": source,
                    "step_key": step_key,
                    "attempt": attempt,
                }
            )
        )
    return out


class ReviewDetail(ReviewPublic):
    """A review item with what a reviewer needs: the failed evals of the step attempt, the step's
    input and output, and the run with its other steps and their verdicts."""

    failed: list[VerdictPublic] = Field(default_factory=list)
    reasons: list[str] = Field(default_factory=list)
    step: StepDetail | None = None
    run: RunDetail | None = None


def get_review_detail(*, session: Session, project_id: int, review_id: int) -> ReviewDetail:
    found = list_reviews(session=session, project_id=project_id, status=None, review_id=review_id)
    if not found:
        raise NotFound(f"no review item {review_id}", field="review_id")
    pub = found[0]
    run = session.get(Run, pub.run_id)
    assert run is not None
    detail = get_run(session=session, project_id=project_id, run_key=run.run_key, source=run.source)
    step = next((s for s in detail.steps if s.id == pub.step_id), None)
    actions = [a for a in detail.actions if a.step_id == pub.step_id and a.kind == "review"]
    return ReviewDetail(
        **pub.model_dump(),
        failed=[v for v in (step.verdicts if step else []) if v.passed is False],
        reasons=[a.reason for a in actions if a.reason],
        step=step,
        run=detail,
    )


def get_review(*, session: Session, project_id: int, review_id: int) -> ReviewItem:
    item = session.get(ReviewItem, review_id)
    if item is None or item.project_id != project_id:
        raise NotFound(f"no review item {review_id}", field="review_id")
    return item


def list_evaluator_rows(*, session: Session, project_id: int, include_inactive: bool = False) -> list[EvaluatorPublic]:
    q = select(Evaluator).where(Evaluator.project_id == project_id)
    if not include_inactive:
        q = q.where(Evaluator.active == sa.true())
    return [
        EvaluatorPublic.model_validate(e)
        for e in session.exec(q.order_by(col(Evaluator.name), col(Evaluator.id))).all()
    ]


def review_queues(*, session: Session, project_id: int) -> list[str]:
    """The names of the project's review queues (``on_fail.queue``) that hold items."""
    q = (
        sa.select(col(ReviewItem.queue))
        .where(col(ReviewItem.project_id) == project_id, col(ReviewItem.queue).is_not(None))
        .distinct()
        .order_by(col(ReviewItem.queue))
    )
    return [name for (name,) in session.execute(q)]
