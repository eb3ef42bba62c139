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

import hashlib
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

__all__ = [
    "DispatchOutcome",
    "FailedEval",
    "action_context",
    "dispatch_action",
    "due_action_ids",
    "idempotency_key",
    "plan_actions",
    "step_key",
]

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
    """Key of a follow-up action of one eval result (a review decision's resume or cancel)."""
    return f"evalsvc-{result_id}-{kind}"


def step_key(step_id: int, kind: str, url: str | None = None) -> str:
    """Key of the one remediation of ``kind`` for a step attempt (webhooks: one per receiver URL)."""
    suffix = "" if not url else "-" + hashlib.sha256(url.encode()).hexdigest()[:10]
    return f"evalsvc-s{step_id}-{kind}{suffix}"


@dataclass(slots=True)
class _Planned:
    """One remediation of a step attempt, gathered from the evaluators that call for it."""

    kind: str
    first: FailedEval
    evaluators: list[str]
    url: str | None = None
    attempt: int = 1
    delay: float = 0.0
    limit: int | None = None
    notes: list[str] | None = None

    def reason(self) -> str:
        text = f"failed: {', '.join(self.evaluators)}"
        return "; ".join([text, *(self.notes or [])])


def _failure_counts(session: Session, keys: set[tuple[int, str, str | None, float]]) -> dict[Any, int]:
    """Failed verdicts of each (project, evaluator, workflow) within the last ``minutes`` (pause_after)."""
    e, r = table(EvalResult), table(Run)
    out: dict[Any, int] = {}
    for project_id, evaluator, workflow, minutes in keys:
        since = utcnow() - timedelta(minutes=minutes)
        q = (
            sa.select(sa.func.count())
            .select_from(e.join(r, r.c.id == e.c.run_id))
            .where(
                e.c.project_id == project_id,
                e.c.evaluator == evaluator,
                e.c.status == "completed",
                e.c.passed == sa.false(),
                e.c.ended_at >= since,
                r.c.workflow.is_(None) if workflow is None else r.c.workflow == workflow,
            )
        )
        out[(project_id, evaluator, workflow, minutes)] = int(session.connection().execute(q).scalar_one())
    return out


def _gather(session: Session, failures: list[FailedEval]) -> list[_Planned]:
    """Group the failed evals of a batch into one remediation per (step attempt, kind)."""
    s, r = table(Step), table(Run)
    step_ids = sorted({f.step_id for f in failures})
    info = {
        row.id: (row.attempt, row.workflow)
        for row in session.connection().execute(
            sa.select(s.c.id, s.c.attempt, r.c.workflow).join(r, r.c.id == s.c.run_id).where(s.c.id.in_(step_ids))
        )
    }
    keys = {
        (f.project_id, f.evaluator, info[f.step_id][1], f.on_fail.pause_after.minutes)
        for f in failures
        if f.on_fail.pause_after
    }
    counts = _failure_counts(session, keys) if keys else {}
    planned: dict[tuple[int, str, str | None], _Planned] = {}

    def add(f: FailedEval, kind: str, url: str | None = None, note: str | None = None) -> _Planned:
        item = planned.get((f.step_id, kind, url))
        if item is None:
            item = planned[(f.step_id, kind, url)] = _Planned(
                kind, f, [], url=url, attempt=info[f.step_id][0], notes=[]
            )
        if f.evaluator not in item.evaluators:
            item.evaluators.append(f.evaluator)
        if note and item.notes is not None:
            item.notes.append(note)
        return item

    for f in failures:
        attempt, workflow = info[f.step_id]
        policy = f.on_fail
        widened = False
        if policy.pause_after:
            n = counts[(f.project_id, f.evaluator, workflow, policy.pause_after.minutes)]
            if n >= policy.pause_after.failures:
                widened = True
                add(f, ActionKind.pause.value, note=(
                    f"pause_after: {f.evaluator} failed {n} steps of workflow {workflow or '(none)'} "
                    f"within {policy.pause_after.minutes:g} min"))  # fmt: skip
        if policy.action == ActionKind.pause and policy.pause_after and not widened:
            continue  # pause only once the failures add up
        if policy.action == ActionKind.retry:
            item = add(f, ActionKind.retry.value)
            item.delay = max(item.delay, policy.retry_delay(attempt))
            limit = policy.retry_limit()
            if limit is not None:
                item.limit = limit if item.limit is None else min(item.limit, limit)
        elif policy.action == ActionKind.webhook:
            add(f, ActionKind.webhook.value, url=policy.url)
        elif policy.action != "none":
            add(f, policy.action)
    return list(planned.values())


def plan_actions(*, session: Session, failures: list[FailedEval]) -> list[int]:
    """Write the actions (and review items) of failed evals; return ids of actions to dispatch.

    Only results that the store holds as failed count (a concurrent duplicate scoring may have
    lost the race). Several evaluators failing one step attempt give one action per kind (per
    receiver URL for webhooks), keyed by the step attempt; the reason names every evaluator. A
    second plan of the same step and kind is a no-op that adds the newly failed evaluators to the
    reason, so an LLM judge failing later than a rule does not remediate twice.
    """
    e = table(EvalResult)
    ids = [f.result_id for f in failures]
    confirmed = {
        r[0]
        for r in session.connection().execute(
            sa.select(e.c.id).where(e.c.id.in_(ids), e.c.status == "completed", e.c.passed == sa.false())
        )
    }
    failures = [f for f in failures if f.result_id in confirmed]
    if not failures:
        return []
    conn = session.connection()
    a = table(Action)
    now = utcnow()
    due: list[int] = []
    for item in _gather(session, failures):
        f = item.first
        key = step_key(f.step_id, item.kind, item.url)
        row: dict[str, Any] = {
            "project_id": f.project_id,
            "eval_result_id": f.result_id,
            "run_id": f.run_id,
            "step_id": f.step_id,
            "kind": item.kind,
            "idempotency_key": key,
            "attempts": 0,
            "reason": item.reason(),
            "created_at": now,
            "updated_at": now,
            "target": item.url,
            "status": ActionStatus.pending.value,
            "next_attempt_at": now,
            "completed_at": None,
            "last_error": None,
        }
        step_attempt = item.attempt
        if item.kind == ActionKind.review:
            row.update(
                status=ActionStatus.succeeded.value,
                target=f.on_fail.assignee or (f"queue {f.on_fail.queue}" if f.on_fail.queue else "review queue"),
                completed_at=now,
                next_attempt_at=None,
            )
        elif item.kind == ActionKind.retry and item.limit is not None and step_attempt >= item.limit:
            row.update(
                status=ActionStatus.skipped.value,
                next_attempt_at=None,
                completed_at=now,
                last_error=f"retry limit reached: attempt {step_attempt} of at most {item.limit}",
            )
        elif item.kind not in (ActionKind.webhook, ActionKind.review) and item.kind not in kinds_for(f.source):
            row.update(
                status=ActionStatus.failed.value,
                next_attempt_at=None,
                completed_at=now,
                last_error=f"no orchestrator adapter performs {item.kind!r} for source {f.source!r} yet",
            )
        elif item.delay > 0:
            row.update(next_attempt_at=now + timedelta(seconds=item.delay))
        new_id = conn.execute(dialect_insert(session, a).on_conflict_do_nothing().returning(a.c.id), row).scalar()
        if new_id is None:
            _add_evaluators(session, key, item.evaluators)
            continue
        if item.kind == ActionKind.review:
            review = {
                "project_id": f.project_id,
                "eval_result_id": f.result_id,
                "run_id": f.run_id,
                "step_id": f.step_id,
                "status": "open",
                "assignee": f.on_fail.assignee,
                "queue": f.on_fail.queue,
                "created_at": now,
            }
            conn.execute(dialect_insert(session, table(ReviewItem)).on_conflict_do_nothing(), review)
        if row["status"] == ActionStatus.pending.value:
            due.append(int(new_id))
    return due


def _add_evaluators(session: Session, key: str, evaluators: list[str]) -> None:
    """Name evaluators that failed a step after its remediation was planned in the action's reason."""
    a = table(Action)
    conn = session.connection()
    found = conn.execute(sa.select(a.c.id, a.c.reason).where(a.c.idempotency_key == key)).first()
    if found is None:
        return
    head, sep, tail = (found.reason or "failed: ").partition("; ")
    names = [n for n in head.removeprefix("failed: ").split(", ") if n]
    missing = [n for n in evaluators if n not in names]
    if missing:
        reason = "failed: " + ", ".join(names + missing) + sep + tail
        conn.execute(sa.update(a).where(a.c.id == found.id).values(reason=reason))


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
        return _not_claimed(engine, action_id)
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


def _not_claimed(engine: Engine, action_id: int) -> DispatchOutcome:
    """Someone else holds the action, it is done, or it waits for its delay (then: when to come back)."""
    a = table(Action)
    with engine.connect() as conn:
        row = conn.execute(sa.select(a.c.status, a.c.next_attempt_at).where(a.c.id == action_id)).first()
    if row is not None and row.status == ActionStatus.pending.value and row.next_attempt_at is not None:
        return DispatchOutcome("retry", retry_at=row.next_attempt_at)
    return DispatchOutcome("skipped")


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
