"""The review queue: list open items, show one with its context, approve or reject it with a comment.

``GET /v1/reviews/{id}`` shows the failed evals, the step's input and output and the run's other
steps and verdicts; a decision may carry ``human_passed``, the reviewer's own verdict.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.engine import Engine

from evalsvc.pipeline.reviews import decide_review
from evalsvc.store.db import write_session
from evalsvc.store.models import Project
from evalsvc.store.queries import ReviewDetail, ReviewPublic, get_review_detail, list_reviews
from evalsvc.worker import Runner

from ..deps import EngineDep, ProjectDep, RunnerDep, SessionDep

router = APIRouter(prefix="/v1", tags=["reviews"])


class Decision(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reviewer: str | None = Field(default=None, max_length=128)
    comment: str | None = Field(default=None, max_length=10_000)
    human_passed: bool | None = Field(default=None, description="Override: the person's own verdict.")


@router.get("/reviews", response_model=list[ReviewPublic])
def reviews(
    project: ProjectDep,
    session: SessionDep,
    status: Literal["open", "approved", "rejected", "all"] = "open",
    queue: str | None = Query(default=None, description="Only items of this review queue."),
    assignee: str | None = Query(default=None, description="Only items assigned to this person."),
    limit: int = Query(default=100, ge=1, le=1000),
    offset: int = Query(default=0, ge=0, description="Skip this many items (oldest first): the next page."),
) -> list[ReviewPublic]:
    return list_reviews(session=session, project_id=project.id or 0, status=None if status == "all" else status,
                        queue=queue, assignee=assignee, limit=limit, offset=offset)  # fmt: skip


@router.get("/reviews/{review_id}", response_model=ReviewDetail)
def review(review_id: int, project: ProjectDep, session: SessionDep) -> ReviewDetail:
    return get_review_detail(session=session, project_id=project.id or 0, review_id=review_id)


def _decide(
    review_id: int,
    decision: Literal["approved", "rejected"],
    body: Decision | None,
    project: Project,
    engine: Engine,
    runner: Runner,
) -> dict[str, Any]:
    body = body or Decision()
    with write_session(engine) as session:
        item, follow_up = decide_review(
            session=session,
            project_id=project.id or 0,
            review_id=review_id,
            decision=decision,
            reviewer=body.reviewer,
            comment=body.comment,
            human_passed=body.human_passed,
        )
    if follow_up is not None:
        runner.submit_actions([follow_up])
    return {"review": item.model_dump(mode="json"), "follow_up_action_id": follow_up}


@router.post("/reviews/{review_id}/approve")
def approve(
    review_id: int, project: ProjectDep, engine: EngineDep, runner: RunnerDep, body: Decision | None = None
) -> dict[str, Any]:
    return _decide(review_id, "approved", body, project, engine, runner)


@router.post("/reviews/{review_id}/reject")
def reject(
    review_id: int, project: ProjectDep, engine: EngineDep, runner: RunnerDep, body: Decision | None = None
) -> dict[str, Any]:
    return _decide(review_id, "rejected", body, project, engine, runner)
