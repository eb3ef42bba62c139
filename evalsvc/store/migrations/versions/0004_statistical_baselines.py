"""statistical baselines and drift reports

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import evalsvc.store.models

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "stat_baseline",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("target", sa.JSON(), nullable=False),
        sa.Column("window", sa.JSON(), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("state", sa.JSON(), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("n_steps", sa.Integer(), nullable=False),
        sa.Column("pinned", sa.Boolean(), nullable=False),
        sa.Column("created_at", evalsvc.store.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["project.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("project_id", "name", "version", name="uq_stat_baseline_version"),
    )
    with op.batch_alter_table("stat_baseline", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_stat_baseline_project_id"), ["project_id"], unique=False)

    op.create_table(
        "drift_report",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("check_id", sa.String(length=32), nullable=False),
        sa.Column("baseline_id", sa.Integer(), nullable=False),
        sa.Column("baseline", sa.String(length=128), nullable=False),
        sa.Column("baseline_version", sa.Integer(), nullable=False),
        sa.Column("target", sa.JSON(), nullable=False),
        sa.Column("window_start", evalsvc.store.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("window_end", evalsvc.store.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("feature", sa.String(length=256), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("statistic", sa.String(length=32), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("p_value", sa.Float(), nullable=True),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("drifted", sa.Boolean(), nullable=False),
        sa.Column("n_baseline", sa.Integer(), nullable=False),
        sa.Column("n_window", sa.Integer(), nullable=False),
        sa.Column("example_runs", sa.JSON(), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.Column("created_at", evalsvc.store.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["baseline_id"], ["stat_baseline.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["project_id"], ["project.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("drift_report", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_drift_report_check_id"), ["check_id"], unique=False)
        batch_op.create_index("ix_drift_report_project_created", ["project_id", "created_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("drift_report", schema=None) as batch_op:
        batch_op.drop_index("ix_drift_report_project_created")
        batch_op.drop_index(batch_op.f("ix_drift_report_check_id"))
    op.drop_table("drift_report")
    with op.batch_alter_table("stat_baseline", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_stat_baseline_project_id"))
    op.drop_table("stat_baseline")
