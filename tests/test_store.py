"""The store on both backends: migrations match the models, unique keys hold, timestamps are UTC."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

from evalsvc.pipeline.ingest import ingest_batch
from evalsvc.pipeline.projects import ensure_project
from evalsvc.settings import Settings
from evalsvc.store.db import session_scope
from evalsvc.store.models import Project, Run, Step, table

from .conftest import PG_ADMIN_URL
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


def _step_row(pid: int, run_id: int, step_key: str) -> dict[str, object]:
    now = datetime.now(UTC)
    return {"project_id": pid, "run_id": run_id, "step_key": step_key, "attempt": 1, "name": step_key,
            "kind": "llm", "status": "completed", "created_at": now, "updated_at": now}  # fmt: skip


def test_a_step_must_name_a_stored_run(engine: sa.Engine) -> None:
    # step.run_id has no foreign key (migration 0008): triggers keep its promise, for one row and
    # for a many-row statement in which one row is wrong (PostgreSQL checks per statement)
    with session_scope(engine) as session:
        pid = ensure_project(session=session, name="p").id or 0
    ingest_batch(engine=engine, project_id=pid, items=[record("r1", "a")], max_batch_records=10,
                 max_record_bytes=10_000)  # fmt: skip
    with engine.connect() as conn:
        run_id = conn.execute(sa.select(table(Run).c.id)).scalar_one()
    for rows in ([_step_row(pid, run_id + 1000, "b")], [_step_row(pid, run_id, "c"), _step_row(pid, -5, "d")]):
        with pytest.raises(sa.exc.IntegrityError, match=r"step\.run_id names no stored run"), engine.begin() as conn:
            conn.execute(sa.insert(table(Step)), rows)
    with engine.begin() as conn:  # a good row goes in
        conn.execute(sa.insert(table(Step)), [_step_row(pid, run_id, "e")])
        keys = sorted(conn.execute(sa.select(table(Step).c.step_key)).scalars())
    assert keys == ["a", "e"]


def test_deleting_a_run_takes_its_steps_and_their_results(engine: sa.Engine, settings: Settings) -> None:
    from evalsvc.pipeline.evaluators import apply_evaluators, parse_config
    from evalsvc.store.models import EvalResult

    with session_scope(engine) as session:
        pid = ensure_project(session=session, name="p").id or 0
        specs = parse_config("evaluators:\n  - {name: nb, scorer: not_empty}\n")
        apply_evaluators(session=session, project_id=pid, specs=specs, settings=settings)
    ingest_batch(engine=engine, project_id=pid, items=[record("r1", "a"), record("r1", "b"), record("r2", "a")],
                 max_batch_records=10, max_record_bytes=10_000)  # fmt: skip
    r, s, e = table(Run), table(Step), table(EvalResult)
    with engine.begin() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(e)).scalar_one() == 3
        conn.execute(sa.delete(r).where(r.c.run_key == "r1"))
    with engine.connect() as conn:
        left = conn.execute(sa.select(r.c.run_key, s.c.step_key).join(r, r.c.id == s.c.run_id)).all()
        assert [tuple(x) for x in left] == [("r2", "a")]
        assert conn.execute(sa.select(sa.func.count()).select_from(s)).scalar_one() == 1
        assert conn.execute(sa.select(sa.func.count()).select_from(e)).scalar_one() == 1


def test_migration_0008_goes_down_and_up(tmp_path: Any, pg_url: str) -> None:
    # a store of its own for each backend: the session's PostgreSQL database stays at head
    from alembic import command

    from evalsvc.store.db import _alembic_config

    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"evalsvc_mig_{secrets.token_hex(3)}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    urls = [f"sqlite:///{tmp_path / 'mig.db'}", pg_url.rsplit("/", 1)[0] + f"/{name}"]
    try:
        for url in urls:
            engine = sa.create_engine(url)
            cfg = _alembic_config(engine)
            command.upgrade(cfg, "head")
            command.downgrade(cfg, "0007")
            fks = {
                (f["constrained_columns"][0], f["referred_table"]) for f in sa.inspect(engine).get_foreign_keys("step")
            }
            assert fks == {("project_id", "project"), ("run_id", "run")}, url
            command.upgrade(cfg, "head")
            assert sa.inspect(engine).get_foreign_keys("step") == [], url
            with engine.connect() as conn:
                diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
            assert diff == [], url
            engine.dispose()
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
