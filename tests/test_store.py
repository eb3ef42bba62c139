"""The store on both backends: migrations match the models, unique keys hold, timestamps are UTC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

from evalsvc.pipeline.ingest import ingest_batch
from evalsvc.pipeline.projects import ensure_project
from evalsvc.store.db import session_scope
from evalsvc.store.models import Project, Run, Step, table

from .factories import record


def test_migrations_match_the_models(engine: sa.Engine) -> None:
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    assert diff == []
    tables = set(sa.inspect(engine).get_table_names())
    assert {"project", "api_key", "run", "step", "evaluator", "eval_result", "action", "review_item"} <= tables


@pytest.mark.parametrize(
    ("model", "row"),
    [
        (Run, {"source": "json", "run_key": "r1", "status": "running"}),
        (Step, {"run_id": 1, "step_key": "a", "attempt": 1, "name": "a", "kind": "llm", "status": "completed"}),
    ],
)
def test_natural_keys_are_unique(engine: sa.Engine, model: type[SQLModel], row: dict[str, object]) -> None:
    with session_scope(engine) as session:
        pid = ensure_project(session=session, name="p").id
    ingest_batch(engine=engine, project_id=pid or 0, items=[record("r1", "a")], max_batch_records=10,
                 max_record_bytes=10_000)  # fmt: skip
    now = datetime.now(UTC)
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.execute(sa.insert(table(model)).values(project_id=pid, created_at=now, updated_at=now, **row))


def test_timestamps_come_back_as_utc(engine: sa.Engine) -> None:
    with session_scope(engine) as session:
        pid = ensure_project(session=session, name="p").id or 0
    plus2 = timezone(timedelta(hours=2))
    ingest_batch(engine=engine, project_id=pid,
                 items=[record("r1", "a", started_at="2026-11-01T12:00:00+02:00", ended_at="2026-11-01T10:00:03Z")],
                 max_batch_records=10, max_record_bytes=10_000)  # fmt: skip
    with session_scope(engine) as session:
        step = session.exec(sa.select(Step)).scalar_one()  # type: ignore[call-overload]
        assert step.started_at == datetime(2026, 11, 1, 12, 0, tzinfo=plus2)
        assert step.started_at.utcoffset() == timedelta(0)
        assert step.latency_ms == 3000.0
        project = session.get(Project, pid)
        assert project is not None and project.created_at.tzinfo is not None
