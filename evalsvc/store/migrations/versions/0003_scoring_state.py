"""scoring state (judge verdict cache, budget counters, sampling counters)

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import evalsvc.store.models

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "verdict_cache",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=256), nullable=False),
        sa.Column("template_version", sa.String(length=64), nullable=False),
        sa.Column("verdict", sa.JSON(), nullable=True),
        sa.Column("cost_usd", sa.Float(), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("created_at", evalsvc.store.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["project.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("project_id", "key", name="uq_verdict_cache"),
    )
    with op.batch_alter_table("verdict_cache", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_verdict_cache_project_id"), ["project_id"], unique=False)
    op.create_table(
        "budget_usage",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("evaluator", sa.String(length=128), nullable=False),
        sa.Column("day", sa.String(length=10), nullable=False),
        sa.Column("calls", sa.Integer(), nullable=False),
        sa.Column("dollars", sa.Float(), nullable=False),
        sa.Column("over_budget", sa.Integer(), nullable=False),
        sa.Column("updated_at", evalsvc.store.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["project.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("project_id", "evaluator", "day", name="uq_budget_usage"),
    )
    with op.batch_alter_table("budget_usage", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_budget_usage_project_id"), ["project_id"], unique=False)
    op.create_table(
        "sample_counter",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("evaluator_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=512), nullable=False),
        sa.Column("day", sa.String(length=10), nullable=False),
        sa.Column("seen", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["evaluator_id"], ["evaluator.id"]),
        sa.ForeignKeyConstraint(["project_id"], ["project.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("project_id", "evaluator_id", "key", "day", name="uq_sample_counter"),
    )
    with op.batch_alter_table("sample_counter", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_sample_counter_project_id"), ["project_id"], unique=False)


def downgrade() -> None:
    for name in ("sample_counter", "budget_usage", "verdict_cache"):
        with op.batch_alter_table(name, schema=None) as batch_op:
            batch_op.drop_index(batch_op.f(f"ix_{name}_project_id"))
        op.drop_table(name)
