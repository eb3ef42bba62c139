"""Human review: approve or reject an open review item, with a comment.

A decision is final (deciding twice is a conflict). The reviewer may also override the verdict:
the human label is kept beside the scorer's, for calibrating judges later. Where the step's
orchestrator has an adapter, the decision dispatches its follow-up action (approve: resume,
reject: cancel) through the same Action machinery; otherwise the answer says that none was sent.
"""

from __future__ import annotations

from typing import Literal

from sqlmodel import Session

from evalsvc.adapters import kinds_for
from evalsvc.errors import Conflict
from evalsvc.schemas import ActionKind, ActionStatus
from evalsvc.store.models import Action, Run, utcnow
from evalsvc.store.queries import ReviewPublic, get_review, list_reviews

from .remediate import idempotency_key

__all__ = ["decide_review"]


def decide_review(
    *,
    session: Session,
    project_id: int,
    review_id: int,
    decision: Literal["approved", "rejected"],
    reviewer: str | None = None,
    comment: str | None = None,
    human_passed: bool | None = None,
) -> tuple[ReviewPublic, int | None]:
    """Record the decision; return the item and the id of the follow-up action, if one was planned."""
    item = get_review(session=session, project_id=project_id, review_id=review_id)
    if item.status != "open":
        raise Conflict(f"review item {review_id} is already {item.status}", field="review_id")
    item.status = decision
    item.reviewer = reviewer
    item.comment = comment
    item.human_passed = human_passed
    item.decided_at = utcnow()
    session.add(item)
    follow_up: int | None = None
    run = session.get(Run, item.run_id)
    kind = ActionKind.resume if decision == "approved" else ActionKind.cancel
    if run is not None and kind in kinds_for(run.source):
        now = utcnow()
        action = Action(
            project_id=project_id,
            eval_result_id=item.eval_result_id,
            run_id=item.run_id,
            step_id=item.step_id,
            kind=kind.value,
            status=ActionStatus.pending.value,
            idempotency_key=idempotency_key(item.eval_result_id, kind),
            reason=f"review {review_id} {decision}",
            next_attempt_at=now,
        )
        session.add(action)
        session.flush()
        follow_up = action.id
    session.flush()
    (pub,) = list_reviews(session=session, project_id=project_id, status=None, review_id=review_id)
    return pub, follow_up
