"""derived ids without foreign keys: step.project_id, eval_result.project_id/run_id/evaluator_id

A step keeps its foreign key to its run, a result its key to its step; the copies of the
grandparents' ids lose theirs (checked on every insert, they were most of PostgreSQL's work per
row: evalsvc/store/models.py::_derived_id).

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# (table, column, referred table)
_DROPPED = (
    ("step", "project_id", "project"),
    ("eval_result", "project_id", "project"),
    ("eval_result", "run_id", "run"),
    ("eval_result", "evaluator_id", "evaluator"),
)
# SQLite's foreign keys have no names: batch mode names them by this convention, to drop them
_NAMING = {"fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s"}


def _fk_name(table: str, column: str) -> str | None:
    for fk in sa.inspect(op.get_bind()).get_foreign_keys(table):
        if fk["constrained_columns"] == [column]:
            return fk["name"] or f"fk_{table}_{column}_{fk['referred_table']}"
    return None


def upgrade() -> None:
    for table in ("step", "eval_result"):
        names = [n for t, c, _ in _DROPPED if t == table and (n := _fk_name(t, c))]
        if not names:
            continue
        with op.batch_alter_table(table, naming_convention=_NAMING) as batch_op:
            for name in names:
                batch_op.drop_constraint(name, type_="foreignkey")


def downgrade() -> None:
    for table in ("step", "eval_result"):
        with op.batch_alter_table(table, naming_convention=_NAMING) as batch_op:
            for t, column, referred in _DROPPED:
                if t == table:
                    batch_op.create_foreign_key(f"fk_{t}_{column}_{referred}", referred, [column], ["id"])
