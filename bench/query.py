"""Benchmark of the analytics replica: pass rate by evaluator and day over N eval results.

Generates N results straight into a SQLite store with bulk SQL (a recursive CTE), copies them
into the project's DuckDB replica, then times the aggregate on the replica, an incremental
refresh after 10,000 more results, and the replica's lag::

    .venv/bin/python bench/query.py --rows 1000000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

from evalsvc.analytics.query import run_query
from evalsvc.analytics.replica import refresh
from evalsvc.settings import Settings
from evalsvc.store.db import get_engine, migrate

SQL = """SELECT evaluator, CAST(date_trunc('day', coalesce(ended_at, created_at)) AS DATE) AS day,
                avg(CAST(passed AS INTEGER)) AS pass_rate, count(*) AS n
         FROM evals GROUP BY ALL ORDER BY 1, 2"""


def generate(engine: sa.Engine, *, rows: int, start: int = 0) -> None:
    """``rows`` results over 8 evaluators and 30 days, one run and step per 4 results."""
    with engine.begin() as conn:
        if start == 0:
            conn.execute(
                sa.text("INSERT INTO project (id, name, created_at) VALUES (1, 'bench', '2026-11-01 00:00:00')")
            )
            conn.execute(sa.text(
                "INSERT INTO evaluator (id, project_id, name, version, scorer, definition, active, created_at) "
                "VALUES (1, 1, 'e', 'v', 'not_empty', '{}', 1, '2026-11-01 00:00:00')"))  # fmt: skip
        steps = rows // 4
        s0 = start // 4
        conn.execute(sa.text(f"""
            INSERT INTO run (id, project_id, source, run_key, workflow, status, status_from_source, created_at, updated_at)
            WITH RECURSIVE n(i) AS (SELECT {s0 + 1} UNION ALL SELECT i + 1 FROM n WHERE i < {s0 + steps})
            SELECT i, 1, 'bench', 'run-' || i, 'wf', 'completed', 0, datetime('now'), datetime('now')
            FROM n"""))  # fmt: skip
        conn.execute(sa.text(f"""
            INSERT INTO step (id, project_id, run_id, step_key, attempt, name, kind, status, created_at, updated_at)
            WITH RECURSIVE n(i) AS (SELECT {s0 + 1} UNION ALL SELECT i + 1 FROM n WHERE i < {s0 + steps})
            SELECT i, 1, i, 'extract', 1, 'extract', 'llm', 'completed', datetime('now'), datetime('now')
            FROM n"""))  # fmt: skip
        conn.execute(sa.text(f"""
            INSERT INTO eval_result (id, project_id, run_id, step_id, evaluator_id, evaluator, evaluator_version,
                                     status, passed, value, cache_hit, created_at, ended_at)
            WITH RECURSIVE n(i) AS (SELECT {start + 1} UNION ALL SELECT i + 1 FROM n WHERE i < {start + rows})
            SELECT i, 1, (i - 1) / 4 + 1, (i - 1) / 4 + 1, 1, 'evaluator_' || (i % 8), 'v', 'completed',
                   (i * 2654435761) % 100 < 93, 1.0, 0,
                   datetime('2026-10-01', '+' || (i % 30) || ' days'), datetime('2026-10-01', '+' || (i % 30) || ' days')
            FROM n"""))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="evalsvc-bench-query-"))
    settings = Settings(home=home, analytics_max_lag_seconds=3600)
    engine = get_engine(settings.resolved_database_url())
    migrate(engine)
    t = time.perf_counter()
    generate(engine, rows=args.rows)
    out = sys.stdout.write
    out(f"generated {args.rows:,} results in SQLite: {time.perf_counter() - t:.1f} s\n")
    fresh = refresh(settings=settings, project_id=1, full=True)
    out(f"full copy into the DuckDB replica: {fresh.refresh_ms or 0:.0f} ms ({fresh.copied_rows:,} rows)\n")
    times = []
    for _ in range(args.repeat):
        res = run_query(settings=settings, project_id=1, sql=SQL)
        times.append(res.elapsed_ms)
    assert sum(r[3] for r in res.rows) == args.rows
    out(f"pass rate by evaluator and day, {len(res.rows)} groups: median {statistics.median(times):.1f} ms, "
        f"min {min(times):.1f} ms (attach, query, detach; {args.repeat} runs)\n")  # fmt: skip
    generate(engine, rows=10_000, start=args.rows)
    fresh = refresh(settings=settings, project_id=1, max_lag_seconds=0)
    out(f"incremental refresh after 10,000 new results: {fresh.refresh_ms or 0:.0f} ms ({fresh.copied_rows:,} rows)\n")
    fresh = refresh(settings=settings, project_id=1, max_lag_seconds=0)
    out(f"refresh with nothing new: {fresh.refresh_ms or 0:.0f} ms\n")
    t = time.perf_counter()
    res = run_query(settings=settings, project_id=1, sql=SQL, max_lag_seconds=0)
    out(f"refresh + query end to end: {(time.perf_counter() - t) * 1000:.0f} ms; "
        f"{res.freshness.describe()}\n")  # fmt: skip


if __name__ == "__main__":
    main()
