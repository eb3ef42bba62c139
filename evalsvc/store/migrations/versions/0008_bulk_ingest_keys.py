"""bulk ingest keys: the derived ids lose their foreign keys, step.run_id is checked per statement

- step.project_id and eval_result.project_id/run_id/evaluator_id copy their parent's ids: no
  foreign key (evalsvc/store/models.py::_unkeyed_id).
- step.run_id: its foreign key becomes two triggers with the same effect, a step must name a stored
  run and a deleted run takes its steps with it. On PostgreSQL they run once per statement, over
  the statement's rows (a key checked each row with a lookup and a row lock cost 3.5 us of server
  time per step; the statement's check about 1 us); SQLite checks each row, as its key did.

On SQLite, dropping a foreign key copies the table anew (Alembic's batch mode): 1.8 s for a store of
200,000 steps (measured), so about 10 s a million, once. On PostgreSQL it is quick.

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

# (table, column, referred table, on delete)
_DROPPED = (
    ("step", "project_id", "project", None),
    ("step", "run_id", "run", "CASCADE"),
    ("eval_result", "project_id", "project", None),
    ("eval_result", "run_id", "run", "CASCADE"),
    ("eval_result", "evaluator_id", "evaluator", None),
)
# SQLite's foreign keys have no names: batch mode names them by this convention, to drop them
_NAMING = {"fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s"}

# the message names the column, as the API's errors do
_NO_RUN = "step.run_id names no stored run"

_PG_UP = (
    # each run once (a run has several steps), then a plain nested loop over the run key: with no
    # statistics on the statement's rows the planner may hash the whole run table for a few steps
    f"""
    CREATE FUNCTION evalsvc_step_run_exists() RETURNS trigger LANGUAGE plpgsql
    SET enable_hashjoin = off SET enable_mergejoin = off AS $$
    BEGIN
        IF EXISTS (SELECT 1 FROM (SELECT DISTINCT run_id FROM new_steps) n
                   WHERE NOT EXISTS (SELECT 1 FROM run r WHERE r.id = n.run_id)) THEN
            RAISE foreign_key_violation USING MESSAGE = '{_NO_RUN}';
        END IF;
        RETURN NULL;
    END $$
    """,
    "CREATE TRIGGER step_run_exists AFTER INSERT ON step REFERENCING NEW TABLE AS new_steps "
    "FOR EACH STATEMENT EXECUTE FUNCTION evalsvc_step_run_exists()",
    """
    CREATE FUNCTION evalsvc_run_delete_steps() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        DELETE FROM step WHERE run_id IN (SELECT id FROM old_runs);
        RETURN NULL;
    END $$
    """,
    "CREATE TRIGGER run_delete_steps AFTER DELETE ON run REFERENCING OLD TABLE AS old_runs "
    "FOR EACH STATEMENT EXECUTE FUNCTION evalsvc_run_delete_steps()",
)
_PG_DOWN = (
    "DROP TRIGGER IF EXISTS run_delete_steps ON run",
    "DROP FUNCTION IF EXISTS evalsvc_run_delete_steps()",
    "DROP TRIGGER IF EXISTS step_run_exists ON step",
    "DROP FUNCTION IF EXISTS evalsvc_step_run_exists()",
)
_SQLITE_UP = (
    "CREATE TRIGGER step_run_exists BEFORE INSERT ON step FOR EACH ROW "
    "WHEN NOT EXISTS (SELECT 1 FROM run WHERE id = NEW.run_id) "
    f"BEGIN SELECT RAISE(ABORT, '{_NO_RUN}'); END",
    "CREATE TRIGGER run_delete_steps AFTER DELETE ON run FOR EACH ROW "
    "BEGIN DELETE FROM step WHERE run_id = OLD.id; END",
)
_SQLITE_DOWN = ("DROP TRIGGER IF EXISTS run_delete_steps", "DROP TRIGGER IF EXISTS step_run_exists")


def _fk_name(table: str, column: str) -> str | None:
    for fk in sa.inspect(op.get_bind()).get_foreign_keys(table):
        if fk["constrained_columns"] == [column]:
            return fk["name"] or f"fk_{table}_{column}_{fk['referred_table']}"
    return None


def upgrade() -> None:
    for table in ("step", "eval_result"):
        names = [n for t, c, _, _ in _DROPPED if t == table and (n := _fk_name(t, c))]
        if not names:
            continue
        with op.batch_alter_table(table, naming_convention=_NAMING) as batch_op:
            for name in names:
                batch_op.drop_constraint(name, type_="foreignkey")
    # after the batch, which on SQLite makes the step table anew (and would drop its triggers)
    for statement in _PG_UP if op.get_bind().dialect.name == "postgresql" else _SQLITE_UP:
        op.execute(statement)


def downgrade() -> None:
    for statement in _PG_DOWN if op.get_bind().dialect.name == "postgresql" else _SQLITE_DOWN:
        op.execute(statement)
    for table in ("step", "eval_result"):
        with op.batch_alter_table(table, naming_convention=_NAMING) as batch_op:
            for t, column, referred, ondelete in _DROPPED:
                if t == table:
                    batch_op.create_foreign_key(
                        f"fk_{t}_{column}_{referred}", referred, [column], ["id"], ondelete=ondelete
                    )
