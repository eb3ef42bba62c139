"""Read-only SQL over one project's eval history (DuckDB), as ``evalsvc query`` and ``POST /v1/query``.

The SQL sees the tables ``runs``, ``steps``, ``evals``, ``actions``, ``reviews`` (and ``drift``)
of the caller's project and nothing else: it runs on that project's own replica file
(:mod:`.replica`), opened read-only, in a DuckDB locked down with DuckDB's own settings:
``enable_external_access=false`` (no ATTACH, no file or network reads or writes, no COPY, no
INSTALL/LOAD), ``lock_configuration=true`` (no SET/PRAGMA changing them back), autoinstall and
autoload of extensions off. Exactly one ``SELECT`` statement is accepted (DuckDB's parser says
which), with a row limit and a timeout (``interrupt()``)::

    >>> from evalsvc.settings import Settings
    >>> from evalsvc.analytics.query import run_query
    >>> res = run_query(settings=Settings(), project_id=1,
    ...                 sql="SELECT evaluator, avg(passed::int) FROM evals GROUP BY 1")  # doctest: +SKIP
    >>> res.columns, res.freshness.describe()  # doctest: +SKIP
    (['evaluator', 'avg(CAST(passed AS INTEGER))'], 'replica refreshed 2026-11-22T04:06:07Z (0.0 s ago)')
"""

from __future__ import annotations

import atexit
import csv
import io
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import duckdb
import orjson

from evalsvc.errors import EvalServiceError, InvalidInput
from evalsvc.settings import Settings

from .replica import Freshness, close_all, open_project, refresh

if TYPE_CHECKING:
    import pandas as pd  # type: ignore[import-untyped,unused-ignore]

__all__ = [
    "FORMATS",
    "BadQuery",
    "QueryResult",
    "QueryTimeout",
    "run_query",
    "sandbox_config",
    "start_background_refresh",
    "stop_background_refresh",
]

logger = logging.getLogger(__name__)

FORMATS = ("table", "csv", "json", "parquet")
Format = Literal["table", "csv", "json", "parquet"]


class BadQuery(InvalidInput):
    """The SQL is not one read-only SELECT, or DuckDB refused it (the message is DuckDB's)."""

    code: ClassVar[str] = "bad_query"
    http_status: ClassVar[int] = 400


class QueryTimeout(EvalServiceError):
    code: ClassVar[str] = "query_timeout"
    http_status: ClassVar[int] = 400


@dataclass
class QueryResult:
    """Rows of one query, at most ``limit``; ``truncated`` says whether more were left out."""

    columns: list[str]
    types: list[str]
    rows: list[tuple[Any, ...]]
    truncated: bool
    freshness: Freshness
    elapsed_ms: float

    def to_frame(self) -> pd.DataFrame:
        import pandas as pd  # type: ignore[import-untyped,unused-ignore]

        return pd.DataFrame.from_records(self.rows, columns=self.columns)

    def as_dict(self) -> dict[str, Any]:
        return {
            "columns": self.columns,
            "types": self.types,
            "rows": [list(r) for r in self.rows],
            "row_count": len(self.rows),
            "truncated": self.truncated,
            "elapsed_ms": round(self.elapsed_ms, 1),
            "freshness": self.freshness.as_dict(),
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.as_dict(), default=_json_default, option=orjson.OPT_NAIVE_UTC)

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(self.columns)
        for row in self.rows:
            w.writerow(["" if v is None else _csv_value(v) for v in row])
        return buf.getvalue()

    def to_parquet(self) -> bytes:
        """The rows as a Parquet file (written by a separate, unrestricted in-memory DuckDB)."""
        frame = self.to_frame()  # noqa: F841 - read by DuckDB below by its name
        fd, name = tempfile.mkstemp(suffix=".parquet")
        os.close(fd)
        try:
            with duckdb.connect() as con:
                con.execute(f"COPY (SELECT * FROM frame) TO '{name}' (FORMAT parquet)")
            with open(name, "rb") as f:
                return f.read()
        finally:
            os.unlink(name)


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    return str(value)


def _csv_value(value: Any) -> Any:
    if isinstance(value, list | dict):
        return orjson.dumps(value, default=_json_default).decode()
    return value


def sandbox_config(settings: Settings) -> dict[str, Any]:
    """The DuckDB settings of a user query's connection (see the module docstring)."""
    return {
        "enable_external_access": False,
        "lock_configuration": True,
        "memory_limit": settings.query_memory_limit,
        "threads": max(1, min(4, os.cpu_count() or 1)),
    }


def run_query(
    *,
    settings: Settings,
    project_id: int,
    sql: str,
    limit: int | None = None,
    timeout_seconds: float | None = None,
    max_lag_seconds: float | None = None,
) -> QueryResult:
    """Refresh the project's replica if it is older than ``max_lag_seconds``, then run ``sql`` on it."""
    limit = settings.query_max_rows if limit is None else limit
    if limit < 1 or limit > settings.query_max_rows:
        raise InvalidInput(f"must be between 1 and {settings.query_max_rows}", field="limit")
    timeout = settings.query_timeout_seconds if timeout_seconds is None else timeout_seconds
    if timeout <= 0 or timeout > settings.query_timeout_seconds:
        raise InvalidInput(f"must be more than 0 and at most {settings.query_timeout_seconds:g}", field="timeout")
    if not sql.strip():
        raise BadQuery("is empty", field="sql")
    fresh = refresh(settings=settings, project_id=project_id, max_lag_seconds=max_lag_seconds)
    _note_queried(settings, project_id)
    t0 = time.perf_counter()
    with open_project(settings=settings, project_id=project_id, config=sandbox_config(settings)) as con:
        try:
            statements = con.extract_statements(sql)
        except duckdb.Error as exc:
            raise BadQuery(_message(exc), field="sql") from None
        if len(statements) != 1:
            raise BadQuery(f"must be exactly one statement, got {len(statements)}", field="sql")
        if statements[0].type.name != "SELECT":
            kind = statements[0].type.name
            raise BadQuery(f"only a SELECT is allowed here, not {kind}", field="sql")
        timer = threading.Timer(timeout, con.interrupt)
        timer.start()
        try:
            cur = con.execute(sql)
            desc = cur.description or []
            rows = cur.fetchmany(limit + 1)
        except duckdb.InterruptException:
            raise QueryTimeout(f"the query ran longer than {timeout:g} s and was stopped") from None
        except duckdb.Error as exc:
            raise BadQuery(_message(exc), field="sql") from None
        finally:
            timer.cancel()
    return QueryResult(
        columns=[d[0] for d in desc],
        types=[str(d[1]) for d in desc],
        rows=rows[:limit],
        truncated=len(rows) > limit,
        freshness=fresh,
        elapsed_ms=(time.perf_counter() - t0) * 1000,
    )


def _message(exc: duckdb.Error) -> str:
    return " ".join(str(exc).split())


# ---- background refresh (evalsvc serve) ---------------------------------------------------------

_recent: dict[tuple[str, str], tuple[Settings, dict[int, float]]] = {}
_recent_lock = threading.Lock()
_thread: threading.Thread | None = None
_stop = threading.Event()
_KEEP_SECONDS = 600.0


def _note_queried(settings: Settings, project_id: int) -> None:
    key = (settings.resolved_database_url(), str(settings.home))
    with _recent_lock:
        _, projects = _recent.setdefault(key, (settings, {}))
        projects[project_id] = time.monotonic()


def start_background_refresh(settings: Settings) -> None:
    """Keep the replicas of the projects queried in the last 10 minutes fresh, every
    ``analytics_refresh_seconds``, in a daemon thread (started once per process)."""
    global _thread
    if settings.analytics_refresh_seconds <= 0:
        return
    with _recent_lock:
        if _thread is not None and _thread.is_alive():
            return
        _thread = threading.Thread(
            target=_refresh_loop, args=(settings.analytics_refresh_seconds,), name="evalsvc-replica", daemon=True
        )
        _thread.start()
        atexit.register(stop_background_refresh)


def stop_background_refresh() -> None:
    """Stop the background refresh and close the process's DuckDBs (registered at exit)."""
    global _thread
    _stop.set()
    if _thread is not None:
        _thread.join(30)
        _thread = None
    _stop.clear()
    with _recent_lock:
        _recent.clear()
    close_all()


def _refresh_loop(every: float) -> None:
    while not _stop.wait(every):
        now = time.monotonic()
        with _recent_lock:
            work = [
                (s, pid) for s, projects in _recent.values() for pid, at in projects.items() if now - at < _KEEP_SECONDS
            ]
        for s, pid in work:
            try:
                refresh(settings=s, project_id=pid, max_lag_seconds=every / 2)
            except Exception:  # the next query refreshes (and reports) it again; until then, forget it
                logger.warning("background refresh of project %s failed", pid, exc_info=True)
                with _recent_lock:
                    _recent.get((s.resolved_database_url(), str(s.home)), (s, {}))[1].pop(pid, None)
