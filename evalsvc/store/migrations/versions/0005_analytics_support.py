"""analytics replica support: indexes for the replica's "changed since" reads

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_step_project_updated", "step", ["project_id", "updated_at"], unique=False)
    op.create_index("ix_action_project_updated", "action", ["project_id", "updated_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_action_project_updated", table_name="action")
    op.drop_index("ix_step_project_updated", table_name="step")
