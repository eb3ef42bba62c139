"""The store's tables (SQLModel), DESIGN.md section 3.

Runs, steps and verdicts live together: every :class:`EvalResult` links to its run, its step and,
through the step, the attempt that produced the output it judged. Schema changes go through the
Alembic migrations in ``evalsvc/store/migrations``; ``create_all`` is for tests only.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel

__all__ = [
    "Action",
    "ApiKey",
    "EvalResult",
    "Evaluator",
    "Project",
    "ReviewItem",
    "Run",
    "Step",
    "table",
    "utcnow",
]


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps on every backend (SQLite keeps no zone of its own)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _ts(*, nullable: bool = True, index: bool = False) -> Any:
    return Field(default=None, sa_column=sa.Column(UTCDateTime(), nullable=nullable, index=index))


def _created() -> Any:
    return Field(default_factory=utcnow, sa_column=sa.Column(UTCDateTime(), nullable=False))


def _json(*, name: str | None = None, nullable: bool = True) -> Any:
    column = (
        sa.Column(name, sa.JSON(none_as_null=True), nullable=nullable)
        if name
        else sa.Column(sa.JSON(none_as_null=True), nullable=nullable)
    )
    return Field(default=None, sa_column=column)


def _fk(target: str, *, index: bool = True) -> Any:
    return Field(sa_column=sa.Column(BigId, sa.ForeignKey(target, ondelete="CASCADE"), nullable=False, index=index))


def _unkeyed_id(*, big: bool = False, index: bool = False) -> Any:
    """An id column of the two tables every ingest fills, step and eval_result, without a
    foreign key: PostgreSQL checked each key on every insert, a look-up and a row lock per key and
    row (3.3-3.7 us of its time per key and step row; two keys were two thirds of a step row's cost).

    - the ids a row copies from its parent, for filters without a join (a step's project, a
      result's run, project and evaluator version), are set by the code that inserts the row
      from the parent it has just written or read;
    - a step's own parent, its run, is checked by triggers with a key's effect (a step must name a
      stored run; a deleted run takes its steps, and they their results, with it): on PostgreSQL
      once per statement, over the statement's rows, about 1 us a row (migration 0008).
    """
    return Field(sa_column=sa.Column(BigId if big else sa.Integer(), nullable=False, index=index))


class Project(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(sa_column=sa.Column(sa.String(128), nullable=False, unique=True))
    created_at: datetime = _created()


class ApiKey(SQLModel, table=True):
    __tablename__ = "api_key"
    id: int | None = Field(default=None, primary_key=True)
    project_id: int = Field(foreign_key="project.id", index=True)
    prefix: str = Field(max_length=16)
    key_hash: str = Field(sa_column=sa.Column(sa.String(64), nullable=False, unique=True))
    name: str | None = Field(default=None, max_length=128)
    created_at: datetime = _created()
    revoked_at: datetime | None = _ts()


class Run(SQLModel, table=True):
    __table_args__ = (
        sa.UniqueConstraint("project_id", "source", "run_key", name="uq_run_key"),
        sa.Index("ix_run_project_updated", "project_id", "updated_at"),
    )
    id: int | None = Field(default=None, sa_column=sa.Column(BigId, primary_key=True, autoincrement=True))
    project_id: int = Field(foreign_key="project.id")
    source: str = Field(max_length=64)
    run_key: str = Field(max_length=256)
    workflow: str | None = Field(default=None, max_length=256, index=True)
    status: str = Field(default="running", max_length=16, index=True)
    status_from_source: bool = Field(default=False)
    started_at: datetime | None = _ts()
    ended_at: datetime | None = _ts()
    attributes: dict[str, Any] | None = _json()
    created_at: datetime = _created()
    updated_at: datetime = _created()


class Step(SQLModel, table=True):
    __table_args__ = (
        sa.UniqueConstraint("run_id", "step_key", "attempt", name="uq_step_key"),
        sa.Index("ix_step_project_name", "project_id", "name"),
    )
    id: int | None = Field(default=None, sa_column=sa.Column(BigId, primary_key=True, autoincrement=True))
    project_id: int = _unkeyed_id()  # the run's project
    run_id: int = _unkeyed_id(big=True)  # the step's run, checked by triggers (migration 0008)
    step_key: str = Field(max_length=256)
    attempt: int = Field(default=1)
    name: str = Field(max_length=256)
    kind: str = Field(max_length=64)
    status: str = Field(max_length=16)
    started_at: datetime | None = _ts()
    ended_at: datetime | None = _ts()
    latency_ms: float | None = None
    input: Any = _json()
    output: Any = _json()
    expected: Any = _json()
    error: dict[str, Any] | None = _json()
    parent_step_key: str | None = Field(default=None, max_length=256)
    model: str | None = Field(default=None, max_length=256)
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float | None = None
    attributes: dict[str, Any] | None = _json()
    created_at: datetime = _created()
    updated_at: datetime = _created()


class Evaluator(SQLModel, table=True):
    __table_args__ = (sa.UniqueConstraint("project_id", "name", "version", name="uq_evaluator_version"),)
    id: int | None = Field(default=None, primary_key=True)
    project_id: int = Field(foreign_key="project.id", index=True)
    name: str = Field(max_length=128)
    version: str = Field(max_length=32)
    scorer: str = Field(max_length=128)
    definition: dict[str, Any] = Field(sa_column=sa.Column(sa.JSON(), nullable=False))
    active: bool = Field(default=True)
    created_at: datetime = _created()


class EvalResult(SQLModel, table=True):
    __tablename__ = "eval_result"
    __table_args__ = (
        sa.UniqueConstraint("step_id", "evaluator", "evaluator_version", name="uq_eval_result"),
        sa.Index("ix_eval_result_status", "status", "id"),
        sa.Index("ix_eval_result_project_passed", "project_id", "passed"),
    )
    id: int | None = Field(default=None, sa_column=sa.Column(BigId, primary_key=True, autoincrement=True))
    project_id: int = _unkeyed_id()  # the step's project
    run_id: int = _unkeyed_id(big=True, index=True)  # the step's run
    step_id: int = _fk("step.id", index=False)
    evaluator_id: int = _unkeyed_id()  # the evaluator version named by (evaluator, evaluator_version)
    evaluator: str = Field(max_length=128)
    evaluator_version: str = Field(max_length=32)
    status: str = Field(default="pending", max_length=16)
    skip_reason: str | None = Field(default=None, max_length=64)
    value: float | None = None
    passed: bool | None = None
    label: str | None = Field(default=None, max_length=256)
    explanation: str | None = None
    meta: dict[str, Any] | None = _json(name="metadata")
    error: str | None = None
    judge_model: str | None = Field(default=None, max_length=256)
    judge_trace_id: str | None = Field(default=None, max_length=128)
    cost_usd: float | None = None
    latency_ms: float | None = None
    cache_hit: bool = Field(default=False)
    created_at: datetime = _created()
    started_at: datetime | None = _ts()
    ended_at: datetime | None = _ts()


class Action(SQLModel, table=True):
    __table_args__ = (
        sa.UniqueConstraint("eval_result_id", "kind", name="uq_action_kind"),
        sa.Index("ix_action_due", "status", "next_attempt_at"),
    )
    id: int | None = Field(default=None, sa_column=sa.Column(BigId, primary_key=True, autoincrement=True))
    project_id: int = Field(foreign_key="project.id", index=True)
    eval_result_id: int = _fk("eval_result.id", index=False)
    run_id: int = _fk("run.id")
    step_id: int = _fk("step.id")
    kind: str = Field(max_length=16)
    status: str = Field(default="pending", max_length=16)
    idempotency_key: str = Field(sa_column=sa.Column(sa.String(64), nullable=False, unique=True))
    target: str | None = None
    reason: str | None = None
    attempts: int = Field(default=0)
    next_attempt_at: datetime | None = _ts()
    claimed_at: datetime | None = _ts()
    response: dict[str, Any] | None = _json()
    last_error: str | None = None
    created_at: datetime = _created()
    updated_at: datetime = _created()
    completed_at: datetime | None = _ts()


class ReviewItem(SQLModel, table=True):
    __tablename__ = "review_item"
    id: int | None = Field(default=None, sa_column=sa.Column(BigId, primary_key=True, autoincrement=True))
    project_id: int = Field(foreign_key="project.id", index=True)
    eval_result_id: int = Field(
        sa_column=sa.Column(BigId, sa.ForeignKey("eval_result.id", ondelete="CASCADE"), nullable=False, unique=True)
    )
    run_id: int = _fk("run.id")
    step_id: int = _fk("step.id")
    status: str = Field(default="open", max_length=16, index=True)
    assignee: str | None = Field(default=None, max_length=128)
    queue: str | None = Field(default=None, max_length=128)  # on_fail.queue (migration 0007)
    reviewer: str | None = Field(default=None, max_length=128)
    comment: str | None = None
    human_passed: bool | None = None
    created_at: datetime = _created()
    decided_at: datetime | None = _ts()


def table(model: type[SQLModel]) -> sa.Table:
    """The Core table of a model, typed, for bulk statements."""
    t: sa.Table = model.__table__  # type: ignore[attr-defined]
    return t


# tables of later capabilities, each in its own module; imported here so that the metadata (and
# the migrations' comparison with it) sees every table
from . import models_analytics, models_connectors, models_gate, models_scoring, models_stats  # noqa: E402, F401
