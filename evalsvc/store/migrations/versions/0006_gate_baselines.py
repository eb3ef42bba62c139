"""CI gate baselines

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import evalsvc.store.models

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "gate_baseline",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("description", sa.JSON(), nullable=False),
        sa.Column("evaluators", sa.JSON(), nullable=False),
        sa.Column("n_items", sa.Integer(), nullable=False),
        sa.Column("created_at", evalsvc.store.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["project.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("project_id", "name", "version", name="uq_gate_baseline_version"),
    )
    with op.batch_alter_table("gate_baseline", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_gate_baseline_project_id"), ["project_id"], unique=False)

    op.create_table(
        "gate_baseline_item",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("baseline_id", sa.Integer(), nullable=False),
        sa.Column("item_id", sa.String(length=256), nullable=False),
        sa.Column("step_name", sa.String(length=256), nullable=False),
        sa.Column("evaluator", sa.String(length=128), nullable=False),
        sa.Column("evaluator_version", sa.String(length=32), nullable=False),
        sa.Column("passed", sa.Boolean(), nullable=True),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("output_hash", sa.String(length=64), nullable=True),
        sa.Column("run_key", sa.String(length=256), nullable=True),
        sa.Column("step_key", sa.String(length=256), nullable=True),
        sa.Column("step_id", _BIG_ID, nullable=True),
        sa.Column("record", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(["baseline_id"], ["gate_baseline.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("baseline_id", "evaluator", "item_id", "step_name", name="uq_gate_baseline_item"),
    )


def downgrade() -> None:
    op.drop_table("gate_baseline_item")
    with op.batch_alter_table("gate_baseline", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_gate_baseline_project_id"))
    op.drop_table("gate_baseline")
