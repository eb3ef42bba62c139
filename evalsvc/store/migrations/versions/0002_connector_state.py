"""connector state

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import evalsvc.store.models

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "connector_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("connector", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=512), nullable=False),
        sa.Column("value", sa.JSON(), nullable=True),
        sa.Column("updated_at", evalsvc.store.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["project.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("project_id", "connector", "key", name="uq_connector_state"),
    )
    with op.batch_alter_table("connector_state", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_connector_state_project_id"), ["project_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("connector_state", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_connector_state_project_id"))
    op.drop_table("connector_state")
