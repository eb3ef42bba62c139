"""Act on failed evals: plan an Action per (eval result, kind), then dispatch it exactly once.

Planning happens in the transaction that stores the verdict, so an accepted failure always has its
action row before any side effect. Dispatch claims the row (``pending`` → ``dispatched``), performs
the side effect, and records the outcome; a failure is retried with exponential backoff and jitter
until ``EVALSVC_ACTION_MAX_ATTEMPTS``. A worker that dies mid-flight leaves the row ``dispatched``;
after ``EVALSVC_LEASE_SECONDS`` another worker claims it again and re-sends it with the same
idempotency key (the webhook's ``webhook-id``), so the receiver can drop the repeat.

``on_fail: review`` opens a ReviewItem (the action records that it did); ``on_fail: webhook`` posts
a signed JSON payload. ``retry``, ``pause``, ``resume`` and ``cancel`` go through the orchestrator
adapter of the step's source (:mod:`evalsvc.adapters`); where none performs the kind, the action is
recorded as failed with that reason, never silently dropped.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session

from evalsvc.adapters import ActionContext, ActionFailed, kinds_for
from evalsvc.adapters import get as get_adapter
from evalsvc.schemas import ActionKind, ActionStatus, OnFail
from evalsvc.settings import Settings
from evalsvc.store.db import session_scope
from evalsvc.store.models import Action, EvalResult, Evaluator, Project, ReviewItem, Run, Step, table, utcnow
from evalsvc.store.sql import dialect_insert

from .webhooks import WebhookError, build_payload, send_webhook

__all__ = ["DispatchOutcome", "FailedEval", "action_context", "dispatch_action", "due_action_ids", "plan_actions"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FailedEval:
    result_id: int
    project_id: int
    run_id: int
    step_id: int
    source: str
    evaluator: str
    on_fail: OnFail


def idempotency_key(result_id: int, kind: str) -> str:
    return f"evalsvc-{result_id}-{kind}"


def plan_actions(*, session: Session, failures: list[FailedEval]) -> list[int]:
    """Write the actions (and review items) of failed evals; return ids of actions to dispatch.

    Only results that the store holds as failed count (a concurrent duplicate scoring may have
    lost the race); the unique (eval result, kind) key makes a second plan a no-op.
    """
    e = table(EvalResult)
    ids = [f.result_id for f in failures]
    confirmed = {
        r[0]
        for r in session.connection().execute(
            sa.select(e.c.id).where(e.c.id.in_(ids), e.c.status == "completed", e.c.passed == sa.false())
        )
    }
    now = utcnow()
    actions: list[dict[str, Any]] = []
    reviews: list[dict[str, Any]] = []
    for f in failures:
        if f.result_id not in confirmed:
            continue
        kind = f.on_fail.action
        base = {
            "project_id": f.project_id,
            "eval_result_id": f.result_id,
            "run_id": f.run_id,
            "step_id": f.step_id,
            "kind": kind,
            "idempotency_key": idempotency_key(f.result_id, kind),
            "attempts": 0,
            "reason": f"evaluator {f.evaluator} failed",
            "created_at": now,
            "updated_at": now,
            "target": None,
            "status": ActionStatus.pending.value,
            "next_attempt_at": now,
            "completed_at": None,
            "last_error": None,
        }
        if kind == ActionKind.review:
            reviews.append(
                {
                    "project_id": f.project_id,
                    "eval_result_id": f.result_id,
                    "run_id": f.run_id,
                    "step_id": f.step_id,
                    "status": "open",
                    "assignee": f.on_fail.assignee,
                    "created_at": now,
                }
            )
            base.update(
                status=ActionStatus.succeeded.value,
                target=f.on_fail.assignee or "review queue",
                completed_at=now,
                next_attempt_at=None,
            )
        elif kind == ActionKind.webhook:
            base.update(target=f.on_fail.url)
        elif kind not in kinds_for(f.source):
            base.update(
                status=ActionStatus.failed.value,
                next_attempt_at=None,
                completed_at=now,
                last_error=f"no orchestrator adapter performs {kind!r} for source {f.source!r} yet",
            )
        actions.append(base)
    conn = session.connection()
    if reviews:
        r = table(ReviewItem)
        conn.execute(dialect_insert(session, r).on_conflict_do_nothing(index_elements=["eval_result_id"]), reviews)
    if not actions:
        return []
    a = table(Action)
    stmt = dialect_insert(session, a).on_conflict_do_nothing(index_elements=["eval_result_id", "kind"])
    conn.execute(stmt, actions)
    keys = [x["idempotency_key"] for x in actions if x["status"] == ActionStatus.pending.value]
    if not keys:
        return []
    return [
        row[0] for row in conn.execute(sa.select(a.c.id).where(a.c.idempotency_key.in_(keys), a.c.status == "pending"))
    ]


def due_action_ids(*, engine: Engine, settings: Settings, limit: int = 500) -> list[int]:
    """Actions ready to dispatch: pending and due, or dispatched by a worker whose lease ran out."""
    a = table(Action)
    now = utcnow()
    stale = now - timedelta(seconds=settings.lease_seconds)
    q = (
        sa.select(a.c.id)
        .where(
            sa.or_(
                sa.and_(a.c.status == "pending", sa.or_(a.c.next_attempt_at.is_(None), a.c.next_attempt_at <= now)),
                sa.and_(a.c.status == "dispatched", a.c.claimed_at < stale),
            )
        )
        .order_by(a.c.id)
        .limit(limit)
    )
    with engine.connect() as conn:
        return [r[0] for r in conn.execute(q)]


@dataclass(frozen=True, slots=True)
class DispatchOutcome:
    status: str  # succeeded | retry | failed | skipped
    retry_at: datetime | None = None
    error: str | None = None


def _claim(engine: Engine, action_id: int, settings: Settings) -> bool:
    a = table(Action)
    now = utcnow()
    stale = now - timedelta(seconds=settings.lease_seconds)
    stmt = (
        sa.update(a)
        .where(
            a.c.id == action_id,
            sa.or_(
                sa.and_(a.c.status == "pending", sa.or_(a.c.next_attempt_at.is_(None), a.c.next_attempt_at <= now)),
                sa.and_(a.c.status == "dispatched", a.c.claimed_at < stale),
            ),
        )
        .values(status="dispatched", attempts=a.c.attempts + 1, claimed_at=now, updated_at=now)
    )
    with engine.begin() as conn:
        return conn.execute(stmt).rowcount == 1


def backoff_seconds(attempt: int, settings: Settings, rng: random.Random | None = None) -> float:
    """Exponential backoff with jitter: base * 2^(attempt-1), capped, times a factor in [0.5, 1.5)."""
    base = min(settings.action_backoff_max_seconds, settings.action_backoff_seconds * 2.0 ** (attempt - 1))
    factor: float = 0.5 + (rng or random).random()
    return base * factor


def dispatch_action(*, engine: Engine, settings: Settings, action_id: int) -> DispatchOutcome:
    """Perform one action's side effect if this worker wins the claim; record what happened."""
    if not _claim(engine, action_id, settings):
        return DispatchOutcome("skipped")
    with session_scope(engine) as session:
        action = session.get(Action, action_id)
        assert action is not None
        payload = build_payload(session=session, action=action) if action.kind == ActionKind.webhook else None
        context = None if action.kind == ActionKind.webhook else action_context(session, action, settings)
    try:
        if action.kind == ActionKind.webhook:
            assert payload is not None and action.target
            response = send_webhook(
                url=action.target, payload=payload, msg_id=action.idempotency_key, settings=settings
            )
        else:
            assert context is not None
            adapter = get_adapter(context.run["source"])
            if adapter is None or action.kind not in adapter.kinds:
                raise ActionFailed(
                    f"no orchestrator adapter performs {action.kind!r} for source {context.run['source']!r}",
                    retryable=False,
                )
            response = adapter.perform(context)
    except (WebhookError, ActionFailed) as exc:
        return _record_failure(engine, action, settings, str(exc), retryable=exc.retryable)
    except Exception as exc:  # an adapter's bug or an unexpected client error: retried, then failed
        logger.exception("action %s: adapter raised", action.idempotency_key)
        return _record_failure(engine, action, settings, f"{type(exc).__name__}: {exc}", retryable=True)
    now = utcnow()
    with session_scope(engine) as session:
        row = session.get(Action, action_id)
        assert row is not None
        row.status, row.response, row.completed_at, row.updated_at, row.last_error = (
            ActionStatus.succeeded.value,
            response,
            now,
            now,
            None,
        )
        session.add(row)
    logger.info("action %s %s succeeded", action.kind, action.idempotency_key, extra={"action_id": action_id})
    return DispatchOutcome("succeeded")


def action_context(session: Session, action: Action, settings: Settings) -> ActionContext:
    """Everything an adapter needs about one action, read in one session."""
    run = session.get(Run, action.run_id)
    step = session.get(Step, action.step_id)
    result = session.get(EvalResult, action.eval_result_id)
    project = session.get(Project, action.project_id)
    assert run is not None and step is not None and project is not None
    evaluator = session.get(Evaluator, result.evaluator_id) if result is not None else None
    on_fail = dict((evaluator.definition or {}).get("on_fail") or {}) if evaluator is not None else {}
    verdict: dict[str, Any] = {}
    if result is not None:
        verdict = {
            "id": result.id,
            "evaluator": result.evaluator,
            "evaluator_version": result.evaluator_version,
            "value": result.value,
            "passed": result.passed,
            "label": result.label,
            "explanation": result.explanation,
        }
    return ActionContext(
        action_id=action.id or 0,
        kind=action.kind,
        idempotency_key=action.idempotency_key,
        reason=action.reason,
        project=project.name,
        run={
            "id": run.id,
            "source": run.source,
            "run_key": run.run_key,
            "workflow": run.workflow,
            "status": run.status,
            "attributes": run.attributes or {},
        },
        step={
            "id": step.id,
            "step_key": step.step_key,
            "attempt": step.attempt,
            "name": step.name,
            "kind": step.kind,
            "status": step.status,
            "input": step.input,
            "output": step.output,
            "error": step.error,
            "attributes": step.attributes or {},
        },
        verdict=verdict,
        on_fail=on_fail,
        settings=settings,
    )


def _record_failure(
    engine: Engine, action: Action, settings: Settings, error: str, *, retryable: bool
) -> DispatchOutcome:
    now = utcnow()
    attempts = action.attempts  # read after the claim, which counted this attempt
    give_up = not retryable or attempts >= settings.action_max_attempts
    retry_at = None if give_up else now + timedelta(seconds=backoff_seconds(attempts, settings))
    with session_scope(engine) as session:
        row = session.get(Action, action.id)
        assert row is not None
        row.status = ActionStatus.failed.value if give_up else ActionStatus.pending.value
        row.next_attempt_at, row.last_error, row.updated_at = retry_at, error, now
        if give_up:
            row.completed_at = now
        session.add(row)
    logger.warning("action %s attempt %d failed: %s", action.idempotency_key, attempts, error)
    return DispatchOutcome("failed" if give_up else "retry", retry_at=retry_at, error=error)
