"""A columnar DuckDB replica of one project's slice of the store, refreshed incrementally.

Scanning the row store is slow for aggregates (an aggregate over 1M rows: 270-450 ms through the
SQLite scanner, about 56 ms on a native DuckDB table), so each project gets its own DuckDB file
under ``EVALSVC_HOME/analytics/<store>/project-<id>.duckdb`` holding only that project's rows, in
the tables ``runs``, ``steps``, ``evals``, ``actions``, ``reviews`` (and ``drift`` when the store
has drift reports). One file per project is what makes the scoping of :mod:`.query` physical:
a query opens that file read-only, and other projects' rows are simply not in it.

A refresh reads the store through DuckDB's ``sqlite`` / ``postgres`` scanner extensions, loaded
from the ``duckdb-ext-*`` packages' folder (never downloaded: autoinstall and autoload are off),
with ``sqlite_query`` / ``postgres_query`` so that each read is an indexed range in the store:

- **new rows**: ``id >`` the highest id the replica had ``analytics_commit_slack_seconds`` ago
  (a PostgreSQL transaction may commit ids out of order; re-reading the last seconds covers it);
- **changed rows** of the tables with ``updated_at`` (runs, steps, actions): ``updated_at >=``
  that refresh's time minus the slack;
- **unsettled rows** of the tables without it, read again by id until they settle: eval results
  still ``pending`` in the replica (they become completed, error or skipped in place), review
  items still ``open``; and every eval result of a step that changed in this refresh (a changed
  step resets its results to pending in place);
- **reconcile**: on the first refresh of a process and every ``analytics_reconcile_seconds``, row
  counts are compared with the store and a table whose count differs is copied again whole
  (deleted rows, e.g. the demo's project reset, and anything the watermarks missed).

Every answer carries a :class:`Freshness`: when the replica was last refreshed from the store and
how long ago that was::

    >>> from evalsvc.settings import Settings
    >>> from evalsvc.analytics.replica import refresh
    >>> fresh = refresh(settings=Settings(home="/tmp/evalsvc-doc"), project_id=1)  # doctest: +SKIP
    >>> fresh.describe()  # doctest: +SKIP
    'replica refreshed 2026-11-22T04:06:07Z (0.0 s ago)'
"""

from __future__ import annotations

import atexit
import hashlib
import importlib.metadata
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import sqlalchemy as sa
from sqlalchemy.types import TypeDecorator

from evalsvc.settings import Settings
from evalsvc.store import models

__all__ = [
    "TABLES",
    "Freshness",
    "TableSpec",
    "close_all",
    "extension_path",
    "open_project",
    "refresh",
    "replica_path",
]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
"""Bumped when the replica's layout changes; a file of another layout is rebuilt."""


@dataclass(frozen=True)
class TableSpec:
    """One replicated table: the view name users query, the store table and its columns."""

    view: str
    source: str
    columns: tuple[tuple[str, str], ...]  # (name, DuckDB type)
    updated_at: bool  # the store keeps `updated_at` current on every change
    unsettled: str | None  # replica-side condition of rows read again by id on each refresh

    @property
    def names(self) -> list[str]:
        return [c for c, _ in self.columns]


def _duck_type(column: sa.Column[Any]) -> str:
    t: Any = column.type
    if isinstance(t, TypeDecorator):
        t = t.impl_instance
    if isinstance(t, sa.Boolean):
        return "BOOLEAN"
    if isinstance(t, sa.Integer):
        return "BIGINT"
    if isinstance(t, sa.Float | sa.Numeric):
        return "DOUBLE"
    if isinstance(t, sa.DateTime):
        return "TIMESTAMP"  # UTC, without a zone
    if isinstance(t, sa.JSON):
        return "JSON"
    return "VARCHAR"


def _spec(view: str, model: Any, *, unsettled: str | None = None) -> TableSpec:
    t = models.table(model)
    cols = tuple((c.name, _duck_type(c)) for c in t.columns)
    return TableSpec(view, t.name, cols, "updated_at" in t.c, unsettled)


def _tables() -> tuple[TableSpec, ...]:
    specs = [
        _spec("runs", models.Run),
        _spec("steps", models.Step),
        _spec("evals", models.EvalResult, unsettled="status = 'pending'"),
        _spec("actions", models.Action),
        _spec("reviews", models.ReviewItem, unsettled="status = 'open'"),
    ]
    try:  # drift reports (issue 4): replicated when the store has them
        from evalsvc.store.models_stats import DriftReport
    except ImportError:  # pragma: no cover - an older store
        pass
    else:
        specs.append(_spec("drift", DriftReport))
    return tuple(specs)


TABLES: tuple[TableSpec, ...] = _tables()
"""The replicated tables, in refresh order (steps before evals: a changed step re-reads its results)."""

_LAYOUT = hashlib.sha256(repr((SCHEMA_VERSION, TABLES)).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Freshness:
    """How fresh an answer is: the replica holds the store as of ``refreshed_at`` (UTC)."""

    refreshed_at: datetime
    lag_seconds: float
    refresh_ms: float | None = None  # what the refresh before this answer cost, if one ran
    copied_rows: int = 0
    rebuilt: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "refreshed_at": self.refreshed_at.replace(tzinfo=None).isoformat() + "Z",
            "lag_seconds": round(self.lag_seconds, 3),
            "refresh_ms": None if self.refresh_ms is None else round(self.refresh_ms, 1),
            "copied_rows": self.copied_rows,
        }

    def describe(self) -> str:
        when = self.refreshed_at.strftime("%Y-%m-%dT%H:%M:%SZ")
        return f"replica refreshed {when} ({self.lag_seconds:.1f} s ago)"


# ---- extensions and the loader ------------------------------------------------------------------


def extension_path(name: str) -> Path:
    """The ``<name>_scanner.duckdb_extension`` file that the ``duckdb-ext-<name>`` package installs."""
    dist = importlib.metadata.distribution(f"duckdb-ext-{name}")
    for f in dist.files or ():
        if str(f).endswith(f"{name}_scanner.duckdb_extension"):
            return Path(str(dist.locate_file(f)))
    raise RuntimeError(f"the duckdb-ext-{name} package holds no {name}_scanner extension")  # pragma: no cover


NO_DOWNLOADS: dict[str, Any] = {"autoinstall_known_extensions": False, "autoload_known_extensions": False}


class _Loader:
    """A trusted in-memory DuckDB with the store attached read-only; one per process and store."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.kind = "postgres" if url.startswith("postgresql") else "sqlite"
        self.con = duckdb.connect(config=dict(NO_DOWNLOADS))
        self.con.execute(f"LOAD '{_quote(str(extension_path(self.kind)))}'")
        if self.kind == "sqlite":
            path = sa.engine.make_url(url).database or ""
            self.con.execute(f"ATTACH '{_quote(path)}' AS src (TYPE sqlite, READ_ONLY)")
        else:
            dsn = sa.engine.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
            self.con.execute(f"ATTACH '{_quote(dsn)}' AS src (TYPE postgres, READ_ONLY)")
        self.lock = threading.Lock()
        self.reconciled: dict[str, float] = {}  # replica file -> when its counts were last compared
        self.columns = self._source_columns()
        self.tables = set(self.columns)

    def _source_columns(self) -> dict[str, set[str]]:
        """The store's tables and their columns: the models may be ahead of the store's migrations
        (a column another capability is adding); a column the store lacks is copied as NULL."""
        fn = "sqlite_query" if self.kind == "sqlite" else "postgres_query"
        sql = (
            "SELECT m.name AS t, p.name AS c FROM sqlite_master m, pragma_table_info(m.name) p WHERE m.type = 'table'"
            if self.kind == "sqlite"
            else "SELECT table_name AS t, column_name AS c FROM information_schema.columns "
            "WHERE table_schema = current_schema()"
        )
        out: dict[str, set[str]] = {}
        for t, c in self.con.execute(f"SELECT t, c FROM {fn}('src', '{_quote(sql)}')").fetchall():
            out.setdefault(t, set()).add(c)
        return out

    def _outer(self, spec: TableSpec) -> str:
        have = self.columns.get(spec.source, set())
        return ", ".join(
            f'CAST("{c}" AS {t}) AS "{c}"' if c in have else f'CAST(NULL AS {t}) AS "{c}"' for c, t in spec.columns
        )

    def select(self, spec: TableSpec, where: str) -> str:
        """DuckDB SQL reading ``spec``'s columns of the store rows matching ``where`` (store SQL),
        cast to the replica's types."""
        have = self.columns.get(spec.source, set())
        cols = [(c, t) for c, t in spec.columns if c in have]
        if self.kind == "sqlite":
            inner = ", ".join(f'"{c}"' for c, _ in cols)
            fn = "sqlite_query"
        else:
            inner = ", ".join(
                f'"{c}" AT TIME ZONE \'UTC\' AS "{c}"'
                if t == "TIMESTAMP"
                else f'"{c}"::text AS "{c}"'
                if t == "JSON"
                else f'"{c}"'
                for c, t in cols
            )
            fn = "postgres_query"
        sql = f'SELECT {inner} FROM "{spec.source}" WHERE {where}'
        return f"SELECT {self._outer(spec)} FROM {fn}('src', '{_quote(sql)}')"

    def select_all(self, spec: TableSpec, project_id: int) -> str:
        """DuckDB SQL reading all of a project's rows: the attached table itself (typed, scanned in
        parallel) on SQLite, whose scanner pushes no filter down anyway."""
        if self.kind != "sqlite":
            return self.select(spec, f"project_id = {int(project_id)}")
        return f'SELECT {self._outer(spec)} FROM src."{spec.source}" WHERE project_id = {int(project_id)}'

    def count(self, spec: TableSpec, project_id: int) -> int:
        fn = "sqlite_query" if self.kind == "sqlite" else "postgres_query"
        sql = f'SELECT count(*) AS n FROM "{spec.source}" WHERE project_id = {int(project_id)}'
        row = self.con.execute(f"SELECT CAST(n AS BIGINT) FROM {fn}('src', '{_quote(sql)}')").fetchone()
        return int(row[0]) if row else 0


def _quote(text: str) -> str:
    return text.replace("'", "''")


_loaders: dict[str, _Loader] = {}
_loaders_lock = threading.Lock()
_file_locks: dict[Path, threading.Lock] = {}


def _loader(url: str) -> _Loader:
    with _loaders_lock:
        loader = _loaders.get(url)
        if loader is None:
            if not _loaders:
                atexit.register(close_all)
            loader = _loaders[url] = _Loader(url)
        return loader


def _file_lock(path: Path) -> threading.Lock:
    with _loaders_lock:
        return _file_locks.setdefault(path, threading.Lock())


def replica_path(*, settings: Settings, project_id: int) -> Path:
    """Where the replica of one project of the settings' store lives."""
    url = settings.resolved_database_url()
    store = hashlib.sha256(url.encode()).hexdigest()[:12]
    return settings.home.expanduser().resolve() / "analytics" / store / f"project-{int(project_id)}.duckdb"


# ---- refresh ------------------------------------------------------------------------------------

_STATE_DDL = (
    "CREATE TABLE IF NOT EXISTS replica_layout (layout VARCHAR)",
    "CREATE TABLE IF NOT EXISTS replica_log (tbl VARCHAR, refreshed_at TIMESTAMP, max_id BIGINT, "
    "max_updated_at TIMESTAMP, reconciled BOOLEAN)",
)


def refresh(
    *, settings: Settings, project_id: int, max_lag_seconds: float | None = None, full: bool = False
) -> Freshness:
    """Bring the project's replica up to date with the store (incrementally) and say how fresh it is.

    Nothing is read when the last refresh is younger than ``max_lag_seconds`` (default: the
    setting ``analytics_max_lag_seconds``). ``full=True`` copies every table again.
    """
    path = replica_path(settings=settings, project_id=project_id)
    max_lag = settings.analytics_max_lag_seconds if max_lag_seconds is None else max_lag_seconds
    with _file_lock(path):
        if not full and path.exists():
            last = _last_refresh(path)
            if last is not None and (_now() - last).total_seconds() < max_lag:
                return Freshness(last, (_now() - last).total_seconds())
        return _refresh_locked(settings=settings, project_id=project_id, path=path, full=full)


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _last_refresh(path: Path) -> datetime | None:
    for (p, _), sandbox in _sandboxes.items():
        if p == path and sandbox.attached_at is not None:
            with sandbox.con.cursor() as cur:
                row = cur.execute("SELECT max(refreshed_at) FROM replica.replica_log").fetchone()
            return row[0] if row else None
    try:
        with _retry_lock(lambda: duckdb.connect(str(path), read_only=True, config=dict(NO_DOWNLOADS))) as con:
            row = con.execute("SELECT max(refreshed_at) FROM replica_log").fetchone()
    except duckdb.CatalogException:
        return None
    return row[0] if row else None


@contextmanager
def _retry_lock(opener: Any, *, wait_seconds: float = 30.0) -> Iterator[Any]:
    """Open a DuckDB file, waiting while another process holds its lock (a refresh elsewhere)."""
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            con = opener()
            break
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    try:
        yield con
    finally:
        con.close()


def _refresh_locked(*, settings: Settings, project_id: int, path: Path, full: bool) -> Freshness:
    t0 = time.perf_counter()
    loader = _loader(settings.resolved_database_url())
    path.parent.mkdir(parents=True, exist_ok=True)
    copied, rebuilt = 0, []
    with loader.lock:
        con = loader.con
        _detach_sandboxes(path)  # never write a file this process has open read-only
        _attach(con, path)
        try:
            if _layout(con) != _LAYOUT:
                _reset(con)
                full = True
            now = _now()
            reconcile = full or (time.monotonic() - loader.reconciled.get(str(path), -1e18)) >= (
                settings.analytics_reconcile_seconds
            )
            changed_steps = "SELECT NULL::BIGINT AS id WHERE false"
            con.execute("BEGIN")
            for spec in TABLES:
                if spec.source not in loader.tables:
                    continue  # TODO(drift): the store has no such table yet (older migration)
                n, whole = _refresh_table(
                    con, loader, spec, project_id=project_id, now=now, full=full, reconcile=reconcile,
                    changed_steps=changed_steps, slack=settings.analytics_commit_slack_seconds,
                )  # fmt: skip
                copied += n
                if whole:
                    rebuilt.append(spec.view)
                if spec.view == "steps" and not whole:
                    # steps changed after insert (a new step's results are new rows anyway)
                    con.execute(
                        "CREATE OR REPLACE TEMP TABLE changed_steps AS SELECT id FROM stage WHERE updated_at > created_at"
                    )
                    changed_steps = "SELECT id FROM changed_steps"
            con.execute("DELETE FROM r.replica_log WHERE refreshed_at < ?", [now - timedelta(seconds=600)])
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        finally:
            con.execute("DETACH r")
        if reconcile:
            loader.reconciled[str(path)] = time.monotonic()
    ms = (time.perf_counter() - t0) * 1000
    logger.debug("refreshed replica of project %s", project_id, extra={"rows": copied, "ms": round(ms, 1)})
    return Freshness(now, (_now() - now).total_seconds(), ms, copied, rebuilt)


def _attach(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            con.execute(f"ATTACH '{_quote(str(path))}' AS r")
            return
        except duckdb.IOException as exc:  # another process holds it: a query or a refresh
            if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _layout(con: duckdb.DuckDBPyConnection) -> str | None:
    try:
        row = con.execute("SELECT layout FROM r.replica_layout").fetchone()
    except duckdb.CatalogException:
        return None
    return row[0] if row else None


def _reset(con: duckdb.DuckDBPyConnection) -> None:
    """Drop whatever the file holds and lay out the tables afresh."""
    for (name,) in con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = 'r' AND schema_name = 'main'"
    ).fetchall():
        con.execute(f'DROP TABLE r.main."{name}"')
    for ddl in _STATE_DDL:
        con.execute(ddl.replace("EXISTS ", "EXISTS r."))
    for spec in TABLES:
        cols = ", ".join(f'"{c}" {t}' for c, t in spec.columns)
        con.execute(f'CREATE TABLE r."{spec.view}" ({cols})')
    con.execute("INSERT INTO r.replica_layout VALUES (?)", [_LAYOUT])


def _refresh_table(
    con: duckdb.DuckDBPyConnection,
    loader: _Loader,
    spec: TableSpec,
    *,
    project_id: int,
    now: datetime,
    full: bool,
    reconcile: bool,
    changed_steps: str,
    slack: float,
) -> tuple[int, bool]:
    """Copy what changed in one table into the replica; answers (rows copied, whether whole)."""
    view, p = f'r."{spec.view}"', int(project_id)
    mark = con.execute(
        "SELECT max_id, max_updated_at, refreshed_at FROM r.replica_log WHERE tbl = ? AND refreshed_at <= ? "
        "ORDER BY refreshed_at DESC LIMIT 1",
        [spec.view, now - timedelta(seconds=slack)],
    ).fetchone()
    if mark is None:  # nothing old enough: the oldest refresh we know of
        mark = con.execute(
            "SELECT max_id, max_updated_at, refreshed_at FROM r.replica_log WHERE tbl = ? ORDER BY refreshed_at LIMIT 1",
            [spec.view],
        ).fetchone()
    whole = full or mark is None
    before = loader.count(spec, p) if reconcile and not whole else None
    if not whole:
        assert mark is not None
        max_id, _, refreshed = mark
        # `+project_id`: SQLite then reads the id range, not the whole (project_id, ...) index
        parts = [loader.select(spec, f"+project_id = {p} AND id > {int(max_id or 0)}")]
        if spec.updated_at:
            since = refreshed - timedelta(seconds=slack)  # what that refresh could not see yet
            parts.append(loader.select(spec, f"project_id = {p} AND updated_at >= {_ts_literal(loader, since)}"))
        ids: list[int] = []
        if spec.unsettled:
            ids += [r[0] for r in con.execute(f"SELECT id FROM {view} WHERE {spec.unsettled}").fetchall()]
        if spec.view == "evals":
            sql = f"SELECT e.id FROM {view} e JOIN ({changed_steps}) s ON e.step_id = s.id"
            ids += [r[0] for r in con.execute(sql).fetchall()]
        ids = sorted(set(ids))
        if len(ids) > _MAX_REREAD:
            whole = True  # cheaper to copy the table again than to read this many rows by id
        else:
            parts += [
                loader.select(spec, f"+project_id = {p} AND id IN ({', '.join(map(str, c))})") for c in _chunks(ids)
            ]
            con.execute(f"CREATE OR REPLACE TEMP TABLE stage AS SELECT *, 0 AS _read FROM ({parts[0]})")
            for i, part in enumerate(parts[1:], start=1):
                con.execute(f"INSERT INTO stage SELECT *, {i} FROM ({part})")
            # the same row read twice (new and changed): the later read wins
            con.execute(
                "CREATE OR REPLACE TEMP TABLE stage AS SELECT * EXCLUDE (_read) FROM stage "
                "QUALIFY row_number() OVER (PARTITION BY id ORDER BY _read DESC) = 1"
            )
    if not whole:
        con.execute(f"DELETE FROM {view} WHERE id IN (SELECT id FROM stage)")
        con.execute(f"INSERT INTO {view} SELECT * FROM stage")
        if before is not None:
            # every row committed before the first count was read, and none the store lacks
            row = con.execute(f"SELECT count(*) FROM {view}").fetchone()
            have = int(row[0]) if row else 0
            whole = have < before or have > loader.count(spec, p)
            if whole:
                logger.info("replica of %s differs from the store: copying it again", spec.view)
    if whole:
        con.execute(f"DELETE FROM {view}")
        con.execute(f"INSERT INTO {view} {loader.select_all(spec, p)}")
        row = con.execute(f"SELECT count(*) FROM {view}").fetchone()
    else:
        row = con.execute("SELECT count(*) FROM stage").fetchone()
    n = int(row[0]) if row else 0
    upd = "max(updated_at)" if spec.updated_at else "NULL"
    con.execute(
        f"INSERT INTO r.replica_log SELECT ?, ?, coalesce(max(id), 0), {upd}, ? FROM {view}",
        [spec.view, now, reconcile],
    )
    return n, whole


_MAX_REREAD = 20_000
"""More unsettled rows than this (read again by id) and the table is copied again whole."""


def _ts_literal(loader: _Loader, ts: datetime) -> str:
    text = ts.strftime("%Y-%m-%d %H:%M:%S.%f")
    return f"'{text}'" if loader.kind == "sqlite" else f"TIMESTAMPTZ '{text}+00'"


def _chunks(ids: Sequence[int], size: int = 1000) -> Iterator[list[int]]:
    for i in range(0, len(ids), size):
        yield list(ids[i : i + size])


# ---- reading ------------------------------------------------------------------------------------


class _Sandbox:
    """A locked-down in-memory DuckDB per replica file, kept for the process (creating a DuckDB
    costs tens of milliseconds), with the file attached read-only as ``replica``. The attachment
    is kept for ``HOLD_SECONDS`` (a cold attach re-reads the columns from disk) and dropped before
    a refresh of the file in this process; the gaps let a refresh in another process take the
    file's write lock."""

    def __init__(self, path: Path, config: dict[str, Any]) -> None:
        self.path = path
        self.attached_at: float | None = None
        self.con = duckdb.connect(config=dict(NO_DOWNLOADS))
        self.con.execute("SET allowed_paths = ?", [[str(path), f"{path}.wal"]])
        # order matters: external access off after the allowed paths, the lock last
        for name, value in sorted(config.items(), key=lambda kv: kv[0] == "lock_configuration"):
            self.con.execute(f"SET {name} = ?", [value])

    def attach(self) -> None:
        if self.attached_at is not None:
            return
        deadline = time.monotonic() + 30
        while True:
            try:
                self.con.execute(f"ATTACH '{_quote(str(self.path))}' AS replica (READ_ONLY)")
                break
            except duckdb.IOException as exc:  # a refresh in another process holds it
                if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.attached_at = time.monotonic()

    def detach(self) -> None:
        if self.attached_at is not None:
            self.con.execute("DETACH DATABASE IF EXISTS replica")
            self.attached_at = None


HOLD_SECONDS = 2.0
_sandboxes: dict[tuple[Path, str], _Sandbox] = {}


def _detach_sandboxes(path: Path) -> None:
    for (p, _), sandbox in list(_sandboxes.items()):
        if p == path:
            sandbox.detach()


def close_all() -> None:
    """Close every DuckDB this process opened (at exit; the next use opens them again)."""
    with _loaders_lock:
        for loader in _loaders.values():
            with loader.lock:
                loader.con.close()
        _loaders.clear()
        for sandbox in _sandboxes.values():
            sandbox.con.close()
        _sandboxes.clear()


@contextmanager
def open_project(
    *, settings: Settings, project_id: int, config: dict[str, Any] | None = None
) -> Iterator[duckdb.DuckDBPyConnection]:
    """The project's replica (refresh it first) as the catalog ``replica`` of a DuckDB whose only
    file access is reading that file. ``config`` adds DuckDB settings (:mod:`.query` locks the
    connection down with them)."""
    path = replica_path(settings=settings, project_id=project_id)
    cfg = {"enable_external_access": False, **(config or {})}
    key = (path, repr(sorted(cfg.items())))
    with _file_lock(path):
        sandbox = _sandboxes.get(key)
        if sandbox is None:
            sandbox = _sandboxes[key] = _Sandbox(path, cfg)
        sandbox.attach()
        con = sandbox.con.cursor()
        try:
            con.execute("USE replica")
            yield con
        finally:
            con.close()
            if time.monotonic() - (sandbox.attached_at or 0) > HOLD_SECONDS:
                sandbox.detach()
