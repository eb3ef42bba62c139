"""Engine, sessions and migrations of the store.

SQLite (the embedded default, a file under ``EVALSVC_HOME``) or PostgreSQL
(``EVALSVC_DATABASE_URL``); the schema comes from the Alembic migrations beside this module::

    >>> from evalsvc.settings import Settings
    >>> from evalsvc.store.db import get_engine, migrate
    >>> engine = get_engine(Settings(home="/tmp/evalsvc-doc").resolved_database_url())
    >>> migrate(engine)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import Session

__all__ = ["dispose_engines", "get_engine", "json_dumps", "migrate", "session_scope", "write_session"]

logger = logging.getLogger(__name__)
_HERE = Path(__file__).parent
_migrate_lock = threading.Lock()


def json_dumps(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def json_loads(value: Any) -> Any:
    """Read a JSON column. SQLite gives a column declared ``JSON`` numeric affinity, so a bare JSON
    number comes back as a number, not as its text."""
    if isinstance(value, int | float):
        return value
    return orjson.loads(value)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


_ENGINES: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def get_engine(url: str) -> Engine:
    """One engine per store URL (cached); SQLite gets WAL mode and a busy timeout."""
    with _engines_lock:
        engine = _ENGINES.get(url)
        if engine is None:
            engine = _ENGINES[url] = _make_engine(url)
        return engine


def dispose_engines(*, close: bool = True) -> None:
    """Forget every cached engine; ``close=False`` after a fork (the parent owns the sockets)."""
    with _engines_lock:
        for engine in _ENGINES.values():
            engine.dispose(close=close)
        _ENGINES.clear()


def _make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = sa.engine.make_url(url).database
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(
            url,
            json_serializer=json_dumps,
            json_deserializer=json_loads,
            connect_args={"check_same_thread": False, "timeout": 30},
        )
        event.listen(engine, "connect", _sqlite_pragmas)

        # let SQLAlchemy issue BEGIN itself, so that `BEGIN IMMEDIATE` takes the write lock up front
        @event.listens_for(engine, "connect")
        def _no_autobegin(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None

        @event.listens_for(engine, "begin")
        def _begin(conn: sa.Connection) -> None:
            mode = conn.info.pop("sqlite_begin", "BEGIN")
            conn.exec_driver_sql(mode)

        return engine
    return sa.create_engine(
        url,
        json_serializer=json_dumps,
        json_deserializer=json_loads,
        pool_pre_ping=True,
        pool_size=5,
        max_overflow=10,
        # no server-side prepared statements: their generic plans scan young tables that have no
        # statistics yet (measured: seconds per ingest batch until autovacuum analyses them)
        connect_args={"prepare_threshold": None},
    )


def _alembic_config(engine: Engine) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(_HERE / "migrations"))
    cfg.attributes["engine"] = engine
    return cfg


def migrate(engine: Engine) -> None:
    """Bring the store's schema to the latest migration (idempotent)."""
    from alembic import command

    with _migrate_lock:
        if getattr(engine, "_evalsvc_migrated", False):
            return
        if engine.dialect.name == "postgresql":
            # serialise concurrent starters (API and workers) on one advisory lock
            with engine.begin() as conn:
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(4242001)"))
                command.upgrade(_alembic_config_with_connection(engine, conn), "head")
        else:
            command.upgrade(_alembic_config(engine), "head")
        engine._evalsvc_migrated = True  # type: ignore[attr-defined]


def _alembic_config_with_connection(engine: Engine, conn: sa.Connection) -> Any:
    cfg = _alembic_config(engine)
    cfg.attributes["connection"] = conn
    return cfg


@contextmanager
def write_session(engine: Engine) -> Iterator[Session]:
    """A read-write transaction that holds the store's write lock from its first statement, and
    commits on success.

    On SQLite that is ``BEGIN IMMEDIATE``: a transaction that reads and then writes would otherwise
    fail with "database is locked" when another writer committed in between (WAL snapshots cannot
    be upgraded), and two read-merge-writes of the same rows cannot interleave. PostgreSQL callers
    lock rows or keys themselves.
    """
    with engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            conn.info["sqlite_begin"] = "BEGIN IMMEDIATE"
        with conn.begin(), Session(bind=conn, expire_on_commit=False) as session:
            yield session
            session.flush()


session_scope = write_session
