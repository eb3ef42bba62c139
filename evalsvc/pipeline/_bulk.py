"""Bulk statements through the DBAPI driver, for the hot paths of ingest and scoring.

SQLAlchemy's per-value bind processing costs more than the insert itself on batches of thousands of
rows; here values are converted as the column types would convert them (``UTCDateTime``, ``JSON``
through :func:`evalsvc.store.db.json_dumps`) and sent with ``executemany``, inside the session's or
connection's own transaction.
"""

from __future__ import annotations

import fcntl
import gc
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from evalsvc.store.db import json_dumps

__all__ = [
    "copy_rows",
    "copy_to_scratch",
    "dbapi",
    "driver_cursor",
    "gc_paused",
    "insert_returning",
    "insert_sql",
    "json_text",
    "key_match",
    "pg_ts",
    "sqlite_ts",
    "writer_turn",
]


def dbapi(session: Session) -> tuple[Any, bool]:
    """The DBAPI connection of the session's transaction, and whether it is SQLite."""
    conn = session.connection()
    return conn.connection.driver_connection, conn.dialect.name == "sqlite"


@contextmanager
def driver_cursor(session: Session) -> Iterator[Any]:
    """A cursor on the DBAPI connection of the session's transaction, whose errors are raised as
    SQLAlchemy's (``OperationalError``, ``IntegrityError``, ...), as they would be from statements
    sent through SQLAlchemy: callers such as the Celery tasks retry on those types."""
    conn = session.connection()
    base_error = conn.dialect.loaded_dbapi.Error
    driver: Any = conn.connection.driver_connection
    cur = driver.cursor()
    try:
        yield cur
    except base_error as exc:
        raise sa.exc.DBAPIError.instance(None, None, exc, base_error, dialect=conn.dialect) from exc
    finally:
        cur.close()


def key_match(columns: Sequence[Any], keys: Sequence[tuple[Any, ...]]) -> Any:
    """``(a = ? AND b = ?) OR ...`` over a unique key's columns: SQLite answers it with one index
    search per key, where it scans the whole index for ``(a, b) IN ((?, ?), ...)``. Keep ``keys``
    to a few hundred (SQLite's expression depth)."""
    return sa.or_(*(sa.and_(*(c == v for c, v in zip(columns, key, strict=True))) for key in keys))


_MINUTES: dict[tuple[int, int, int, int, int], str] = {}  # "YYYY-MM-DD HH:MM:" of recent minutes


def sqlite_ts(value: datetime | None) -> str | None:
    """A timestamp as UTCDateTime stores it on SQLite: naive UTC text, microseconds."""
    if value is None:
        return None
    if value.tzinfo is UTC:  # the usual case
        # isoformat() of an aware value costs twice that of the minute's text, kept, and the seconds
        minute = (value.year, value.month, value.day, value.hour, value.minute)
        head = _MINUTES.get(minute)
        if head is None:
            if len(_MINUTES) >= 4096:
                _MINUTES.clear()
            head = _MINUTES[minute] = value.isoformat(" ", "minutes")[:16] + ":"
        return "%s%02d.%06d" % (head, value.second, value.microsecond)  # noqa: UP031 (faster than an f-string)
    # "YYYY-MM-DD HH:MM:SS.ffffff", then the offset of an aware value
    text = value.isoformat(" ", "microseconds")
    if len(text) == 26:
        return text
    if text.endswith("+00:00"):
        return text[:26]
    offset = value.utcoffset()
    return (value - offset if offset else value).isoformat(" ", "microseconds")[:26]


def pg_ts(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def json_text(value: Any) -> str | None:
    return None if value is None else json_dumps(value)


def insert_sql(table_name: str, columns: Sequence[str]) -> str:
    """SQLite's ``INSERT`` of one row, for ``executemany`` (PostgreSQL takes rows by COPY)."""
    return f"INSERT INTO {table_name} ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})"


def insert_returning(
    session: Session,
    table_name: str,
    columns: Sequence[str],
    rows: Iterable[tuple[Any, ...]],
    *,
    returning: Sequence[str] | None,
) -> list[tuple[Any, ...]] | None:
    """executemany the rows; with ``returning``, answer ``(id, *returning)`` of every inserted row,
    or None when they could not be told apart (the caller then looks them up by key).

    ``rows`` may be a generator: on PostgreSQL each row is sent as it is made, and the server
    stores the first rows while the next are made."""
    _, sqlite = dbapi(session)
    sql = insert_sql(table_name, columns)
    with driver_cursor(session) as cur:
        if returning is None:
            if sqlite:
                cur.executemany(sql, rows)
            else:  # COPY: the fastest way in, when no ids are wanted back
                copy_rows(cur, table_name, columns, rows)
            return None
        cols = ", ".join(("id", *returning))
        if not sqlite:
            # COPY into a scratch table shaped like the target, then one INSERT ... SELECT that
            # answers RETURNING: a statement per row costs more than the row
            names = ", ".join(columns)
            scratch = copy_to_scratch(cur, table_name, columns, rows)
            cur.execute(f"INSERT INTO {table_name} ({names}) SELECT {names} FROM {scratch} RETURNING {cols}")
            out: list[tuple[Any, ...]] = cur.fetchall()
            return out
        # SQLite: under BEGIN IMMEDIATE no one else writes; a new rowid is normally max(rowid) + 1,
        # so the rows above the old maximum are ours. If the count differs, SQLite picked rowids
        # another way, and the caller looks the rows up by key instead.
        before = cur.execute(f"SELECT max(id) FROM {table_name}").fetchone()[0] or 0
        rows = list(rows)
        cur.executemany(sql, rows)
        got: list[tuple[Any, ...]] = cur.execute(f"SELECT {cols} FROM {table_name} WHERE id > ?", (before,)).fetchall()
        return got if len(got) == len(rows) else None


def copy_to_scratch(cur: Any, table_name: str, columns: Sequence[str], rows: Iterable[tuple[Any, ...]]) -> str:
    """PostgreSQL: COPY the rows into this transaction's scratch table shaped like ``table_name``
    (emptied first, and at commit); answer its name, for an ``INSERT ... SELECT`` from it."""
    scratch = f"evalsvc_copy_{table_name}"
    cur.execute(
        f"CREATE TEMP TABLE IF NOT EXISTS {scratch} ON COMMIT DELETE ROWS AS "
        f"SELECT {', '.join(columns)} FROM {table_name} WITH NO DATA"
    )
    cur.execute(f"TRUNCATE {scratch}")
    copy_rows(cur, scratch, columns, rows)
    return scratch


_COPY_TYPES: dict[tuple[str, str, tuple[str, ...]], list[str]] = {}


def copy_rows(cur: Any, table_name: str, columns: Sequence[str], rows: Iterable[tuple[Any, ...]]) -> None:
    """PostgreSQL: COPY the rows into the table in the binary format.

    The driver then writes each value as the column's type takes it, with no text escaping: 2.0 us
    a step row where the text format took 5.3. Values come as the service's columns hold them: JSON
    columns as encoded text, timestamps aware, integers in their column's range (the binary format
    would not check an ``integer``: the step record's bounds do, see ``StepRecord.input_tokens``)."""
    types = _copy_types(cur, table_name, tuple(columns))
    with cur.copy(f"COPY {table_name} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)") as c:
        c.set_types(types)
        write = c.write_row
        for row in rows:
            write(row)


def _copy_types(cur: Any, table_name: str, columns: tuple[str, ...]) -> list[str]:
    """The types of the columns, as the binary COPY is told them: JSON columns as ``text``, which
    has the same binary form, so that the driver sends the encoded JSON as it is."""
    key = (cur.connection.info.dbname, table_name, columns)
    types = _COPY_TYPES.get(key)
    if types is None:
        found = dict(
            cur.execute(
                "SELECT attname, format_type(atttypid, NULL) FROM pg_attribute "
                "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
                (table_name,),
            ).fetchall()
        )
        types = _COPY_TYPES[key] = ["text" if found[c] == "json" else found[c] for c in columns]
    return types


@contextmanager
def writer_turn(engine: sa.Engine) -> Iterator[None]:
    """On a SQLite file, wait for this writer's turn on a file lock beside the database
    (``evalsvc.db.ingest-lock``) before ``BEGIN IMMEDIATE``.

    Several ingest writers (threads of one ``serve``, or ``serve --workers N`` processes) then queue
    in the kernel and each starts the moment the previous one is done, where SQLite's own busy
    handler would have them poll with sleeps of up to 100 ms. Other stores: nothing to do."""
    path = engine.url.database if engine.dialect.name == "sqlite" else None
    if not path or path == ":memory:" or path.startswith("file:"):
        yield
        return
    fd = os.open(f"{path}.ingest-lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


_gc_lock = threading.Lock()
_gc_pausers = 0
_gc_paused_by_us = False


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a batch is decoded, validated and stored, or a
    chunk of results is loaded, judged by rule scorers and stored.

    A batch creates a few hundred thousand container objects that all live until it is stored, so
    the collector's allocation counts keep triggering full collections that walk every one of them
    (about a third of the ingest time); reference counting still frees them when the batch ends.
    Nested and concurrent pauses share one count: collection resumes when the last one ends, and
    is left off if it was off before the first."""
    global _gc_pausers, _gc_paused_by_us
    with _gc_lock:
        if _gc_pausers == 0:
            _gc_paused_by_us = gc.isenabled()
            gc.disable()
        _gc_pausers += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pausers -= 1
            if _gc_pausers == 0 and _gc_paused_by_us:
                gc.enable()
