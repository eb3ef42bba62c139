"""Ingest and scoring throughput of evalsvc, next to raw inserts of the same rows in the same run.

For each store (SQLite file, PostgreSQL database) this measures:

- ``raw insert``: the DBAPI driver alone (``sqlite3`` / ``psycopg`` ``executemany``) inserting the
  same rows, in the same batches, into a table with the step table's columns and its
  ``UNIQUE (run_id, step_key, attempt)`` key; one commit per batch. Rows are built outside the clock.
- ``API ingest``: ``evalsvc serve`` started as a real subprocess (uvicorn, one process), a key from
  ``evalsvc keys create``, and ``POST /v1/ingest/json`` of the same records in batches, one httpx
  client; bodies are JSON-encoded before the clock starts, the clock covers the request round trips
  (send, server-side decode/validate/merge/store, response). No evaluators are active.
- ``in-process ingest+schedule``: ``ingest_batch`` of the scoring set with 4 rule evaluators active,
  which leaves their eval results pending.
- ``rule scoring``: ``pending_id_chunks`` + ``score_stream`` (what the worker's drain does),
  in this one process, from pending row to stored verdict; verdicts per second of wall time and per
  CPU second of this process.
- ``idle serve RSS``: VmRSS of the ``serve`` process after start-up and one health check.

    $ .venv/bin/python bench/ingest.py                      # 1,000,000 records, both stores
    $ .venv/bin/python bench/ingest.py --records 100000     # a quick run
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson

DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
RAW_TARGET = 0.5  # the API reaches at least half of the raw insert rate
SCORE_TARGET = 20_000  # verdicts per second per core
RSS_TARGET_MB = 150

STEPS = (
    ("classify_email", "llm"),
    ("extract_invoice", "llm"),
    ("lookup_vendor", "tool"),
    ("post_to_ledger", "tool"),
    ("draft_reply", "llm"),
)
VENDORS = ("Acme Industrial Supply", "Northwind Traders", "Globex Logistics", "Initech Software", "Hooli Cloud")
BASE = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)

EVALUATORS_YAML = r"""
evaluators:
  - name: extraction_schema
    scorer: json_schema
    target: {workflow: bench-agent, step: extract_invoice, status: completed}
    params:
      schema:
        type: object
        required: [vendor, invoice_number, total, currency]
        properties:
          vendor: {type: string, minLength: 1}
          invoice_number: {type: string, minLength: 1}
          total: {type: number, minimum: 0}
          currency: {type: string, pattern: "^[A-Z]{3}$"}
  - name: reply_no_email
    scorer: regex
    target: {step: draft_reply}
    params:
      pattern: '[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}'
      must_match: false
      field: output.text
  - name: reply_not_empty
    scorer: not_empty
    target: {step: draft_reply}
    params: {field: output.text}
  - name: step_latency
    scorer: max_latency_ms
    params: {max_ms: 3000}
"""


# ---- records ----------------------------------------------------------------------------------


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def make_records(start: int, count: int) -> list[dict[str, Any]]:
    """Records ``start .. start+count`` of a deterministic stream: 5 steps per run, in run order,
    every 10th run's extraction on attempt 2, a few failures, slow steps, bad outputs and leaks."""
    out: list[dict[str, Any]] = []
    for i in range(start, start + count):
        run, k = divmod(i, 5)
        step_key, kind = STEPS[k]
        vendor = VENDORS[run % len(VENDORS)]
        attempt = 2 if k == 1 and run % 10 == 0 else 1
        started = BASE + timedelta(seconds=run * 9 + k * 1.5, milliseconds=(i * 37) % 1000)
        latency = 0.12 + ((i * 7919) % 900) / 1000 + (4.0 if k == 3 and run % 20 == 7 else 0.0)
        rec: dict[str, Any] = {
            "source": "json",
            "workflow": "bench-agent",
            "run_key": f"run-{run:07d}",
            "step_key": step_key,
            "attempt": attempt,
            "name": step_key,
            "kind": kind,
            "status": "completed",
            "started_at": _iso(started),
            "ended_at": _iso(started + timedelta(seconds=latency)),
            "input": {"doc": f"mail-{run:07d}", "step": k},
            "attributes": {"tenant": f"t{run % 7}"},
        }
        if k == 0:
            rec["output"] = {"label": "invoice" if run % 9 else "receipt", "confidence": round(0.6 + (i % 40) / 100, 2)}
        elif k == 1:
            total: Any = round(45 + (i * 131) % 12_000 + 0.25, 2)
            if run % 25 == 3:
                total = f"{total:,.2f}"  # fails the schema
            rec["output"] = {"vendor": vendor, "invoice_number": f"INV-{run:07d}", "total": total, "currency": "EUR"}
        elif k == 2:
            if run % 33 == 5:
                rec["status"] = "failed"
                rec["error"] = {"type": "Timeout", "message": "vendor lookup timed out after 30 s"}
            else:
                rec["output"] = {"vendor_id": f"V-{10_000 + run % 5000}", "found": True}
        elif k == 3:
            rec["output"] = {"ledger_id": f"L-{run:08d}", "posted": True}
        else:
            text = f"Dear {vendor}, invoice INV-{run:07d} is booked and will be paid on time."
            if run % 27 == 4:
                text += " Questions: ap-escalations@contoso-finance.com"
            elif run % 101 == 9:
                text = " "
            rec["output"] = {"text": text}
        if kind == "llm":
            tin, tout = 300 + i % 700, 40 + i % 200
            rec.update(model="gpt-4o-mini", input_tokens=tin, output_tokens=tout, cost_usd=(tin * 15 + tout * 60) / 1e8)
        out.append(rec)
    return out


def batches(total: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, total, size):
        yield start, min(size, total - start)


# ---- raw baselines ----------------------------------------------------------------------------

RAW_COLUMNS = (
    "project_id, run_id, step_key, attempt, name, kind, status, started_at, ended_at, latency_ms, input, output, "
    "expected, error, parent_step_key, model, input_tokens, output_tokens, cost_usd, attributes, created_at, updated_at"
)


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value)


def raw_rows(records: list[dict[str, Any]], *, sqlite_text: bool) -> list[tuple[Any, ...]]:
    """The rows evalsvc stores for these records (one run per 5 records, JSON as text)."""
    now: Any = datetime.now(UTC)
    if sqlite_text:  # the batch's one "now", formatted once
        now = now.replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")
    rows = []
    for r in records:
        start, end = _ts(r["started_at"]), _ts(r["ended_at"])
        latency = (end - start).total_seconds() * 1000
        err = orjson.dumps(r["error"]).decode() if "error" in r else None
        out = orjson.dumps(r["output"]).decode() if "output" in r else None
        stamps: tuple[Any, ...] = (start, end, now, now)
        if sqlite_text:
            stamps = (
                *(s.replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds") for s in stamps[:2]),
                now,
                now,
            )
        rows.append(
            (
                1,
                int(r["run_key"][4:]) + 1,
                r["step_key"],
                r["attempt"],
                r["name"],
                r["kind"],
                r["status"],
                stamps[0],
                stamps[1],
                latency,
                orjson.dumps(r["input"]).decode(),
                out,
                None,
                err,
                None,
                r.get("model"),
                r.get("input_tokens"),
                r.get("output_tokens"),
                r.get("cost_usd"),
                orjson.dumps(r["attributes"]).decode(),
                stamps[2],
                stamps[3],
            )
        )
    return rows


SQLITE_RAW_DDL = """
CREATE TABLE step (
    id INTEGER NOT NULL PRIMARY KEY, project_id INTEGER NOT NULL, run_id INTEGER NOT NULL,
    step_key VARCHAR(256) NOT NULL, attempt INTEGER NOT NULL, name VARCHAR(256) NOT NULL,
    kind VARCHAR(64) NOT NULL, status VARCHAR(16) NOT NULL, started_at DATETIME, ended_at DATETIME,
    latency_ms FLOAT, input JSON, output JSON, expected JSON, error JSON, parent_step_key VARCHAR(256),
    model VARCHAR(256), input_tokens INTEGER, output_tokens INTEGER, cost_usd FLOAT, attributes JSON,
    created_at DATETIME NOT NULL, updated_at DATETIME NOT NULL,
    CONSTRAINT uq_step_key UNIQUE (run_id, step_key, attempt)
)
"""


def bench_raw_sqlite(path: Path, n: int, batch: int) -> tuple[float, float]:
    """Seconds of ``executemany`` + commit, and seconds of building the rows from the records."""
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")
    con.execute(SQLITE_RAW_DDL)
    con.commit()
    sql = f"INSERT INTO step ({RAW_COLUMNS}) VALUES ({', '.join('?' * 22)})"
    elapsed = build = 0.0
    for start, count in batches(n, batch):
        records = make_records(start, count)
        t0 = time.perf_counter()
        rows = raw_rows(records, sqlite_text=True)
        t1 = time.perf_counter()
        con.executemany(sql, rows)
        con.commit()
        elapsed += time.perf_counter() - t1
        build += t1 - t0
    stored = con.execute("SELECT count(*) FROM step").fetchone()[0]
    con.close()
    assert stored == n, (stored, n)
    return elapsed, build


PG_RAW_DDL = """
CREATE TABLE step (
    id BIGSERIAL PRIMARY KEY, project_id INTEGER NOT NULL, run_id BIGINT NOT NULL,
    step_key VARCHAR(256) NOT NULL, attempt INTEGER NOT NULL, name VARCHAR(256) NOT NULL,
    kind VARCHAR(64) NOT NULL, status VARCHAR(16) NOT NULL, started_at TIMESTAMPTZ, ended_at TIMESTAMPTZ,
    latency_ms FLOAT, input JSON, output JSON, expected JSON, error JSON, parent_step_key VARCHAR(256),
    model VARCHAR(256), input_tokens INTEGER, output_tokens INTEGER, cost_usd FLOAT, attributes JSON,
    created_at TIMESTAMPTZ NOT NULL, updated_at TIMESTAMPTZ NOT NULL,
    CONSTRAINT uq_step_key UNIQUE (run_id, step_key, attempt)
)
"""


def bench_raw_postgres(dsn: str, n: int, batch: int) -> tuple[float, float]:
    import psycopg

    placeholders = ", ".join("%s::json" if c in (10, 11, 12, 13, 19) else "%s" for c in range(22))
    sql = f"INSERT INTO step ({RAW_COLUMNS}) VALUES ({placeholders})"
    elapsed = build = 0.0
    with psycopg.connect(dsn) as con:
        con.execute(PG_RAW_DDL)
        con.commit()
        for start, count in batches(n, batch):
            records = make_records(start, count)
            t0 = time.perf_counter()
            rows = raw_rows(records, sqlite_text=False)
            t1 = time.perf_counter()
            with con.cursor() as cur:
                cur.executemany(sql, rows)
            con.commit()
            elapsed += time.perf_counter() - t1
            build += t1 - t0
        stored = con.execute("SELECT count(*) FROM step").fetchone()
    assert stored is not None and stored[0] == n, (stored, n)
    return elapsed, build


# ---- the service as a subprocess -------------------------------------------------------------


def _evalsvc_exe() -> str:
    beside = Path(sys.executable).parent / "evalsvc"
    return str(beside) if beside.exists() else (shutil.which("evalsvc") or "evalsvc")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def service_env(home: Path, database_url: str | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVALSVC_")}
    env.update(EVALSVC_HOME=str(home), EVALSVC_LOG_LEVEL="WARNING", **extra)
    if database_url:
        env["EVALSVC_DATABASE_URL"] = database_url
    return env


def cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([_evalsvc_exe(), *args], env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"evalsvc {' '.join(args)} failed: {done.stderr}")
    return done.stdout


def _status_kb(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    return 0


def _tree(pid: int) -> list[int]:
    """The process and its descendants (``serve --workers N`` runs N worker processes under it)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            todo.extend(int(c) for c in task.read_text().split())
    return out


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) and its child processes so far."""
    total = 0
    for p in _tree(pid):
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int, name: str) -> float:
    """``name`` (VmRSS, VmHWM) of the process and its worker processes, summed, in MB."""
    return sum(_status_kb(p, name) for p in _tree(pid)) / 1024


def _post_records(client: httpx.Client, body: bytes, count: int, headers: dict[str, str]) -> None:
    resp = client.post("/v1/ingest/json", content=body, headers=headers)
    if resp.status_code != 200:
        raise RuntimeError(f"ingest answered {resp.status_code}: {resp.text[:500]}")
    answer = orjson.loads(resp.content)
    if answer["accepted"] != count:
        raise RuntimeError(f"ingest accepted {answer['accepted']} of {count}")


def _post_records_all(base: str, bodies: list[bytes], counts: list[int], headers: dict[str, str]) -> None:
    with httpx.Client(base_url=base, timeout=600) as client:
        for body, count in zip(bodies, counts, strict=True):
            _post_records(client, body, count, headers)


@dataclass
class ApiFigures:
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    idle_rss_mb: float = 0.0
    peak_rss_mb: float = 0.0
    stored: int = 0


def bench_api(
    home: Path, database_url: str | None, n: int, batch: int, count_steps: Any, workers: int = 1, clients: int = 1
) -> ApiFigures:
    env = service_env(home, database_url)
    key = cli(env, "keys", "create", "--name", "bench").strip().splitlines()[-1]
    port = _free_port()
    bodies = [orjson.dumps(make_records(start, count)) for start, count in batches(n, batch)]
    figures = ApiFigures()
    server = subprocess.Popen(
        [_evalsvc_exe(), "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=600, headers={"authorization": f"Bearer {key}"}) as client:
            deadline = time.monotonic() + 60
            while True:
                if server.poll() is not None:
                    raise RuntimeError(f"serve exited: {server.stderr.read().decode() if server.stderr else ''}")
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("serve did not answer /healthz within 60 s")
                time.sleep(0.1)
            time.sleep(1.0 + workers)  # every worker process up
            figures.idle_rss_mb = _rss_mb(server.pid, "VmRSS")
            headers = {"content-type": "application/json", "authorization": f"Bearer {key}"}
            counts = [count for _, count in batches(n, batch)]
            cpu0 = _cpu_seconds(server.pid)
            if clients == 1:
                for body, count in zip(bodies, counts, strict=True):
                    t0 = time.perf_counter()
                    _post_records(client, body, count, headers)
                    figures.seconds += time.perf_counter() - t0
            else:  # the batches dealt round-robin to concurrent clients; the clock is the whole span
                t0 = time.perf_counter()
                with ThreadPoolExecutor(clients) as pool:
                    list(pool.map(_post_records_all, [base] * clients, [bodies[c::clients] for c in range(clients)],
                                  [counts[c::clients] for c in range(clients)], [headers] * clients))  # fmt: skip
                figures.seconds = time.perf_counter() - t0
            figures.cpu_seconds = _cpu_seconds(server.pid) - cpu0
            figures.peak_rss_mb = _rss_mb(server.pid, "VmHWM")
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    figures.stored = count_steps()
    return figures


# ---- scoring ----------------------------------------------------------------------------------


@dataclass
class ScoreFigures:
    records: int = 0
    ingest_seconds: float = 0.0
    verdicts: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)


def bench_scoring(home: Path, database_url: str | None, n: int, batch: int, chunk: int) -> ScoreFigures:
    from evalsvc.pipeline.ingest import ingest_batch
    from evalsvc.pipeline.projects import ensure_project
    from evalsvc.pipeline.schedule import load_active_evaluators
    from evalsvc.pipeline.score import ScoreReport, pending_id_chunks, score_stream
    from evalsvc.settings import Settings
    from evalsvc.store.db import dispose_engines, get_engine, session_scope

    env = service_env(home, database_url)
    home.mkdir(parents=True, exist_ok=True)
    (home / "evalsvc.yaml").write_text(EVALUATORS_YAML)
    cli(env, "evaluators", "apply", str(home / "evalsvc.yaml"))

    settings = Settings(home=home, database_url=database_url)
    engine = get_engine(settings.resolved_database_url())
    with session_scope(engine) as session:
        project_id = ensure_project(session=session, name="default").id or 0
        evaluators = load_active_evaluators(session=session, project_id=project_id)
    assert len(evaluators) == 4, evaluators
    figures = ScoreFigures(records=n)
    pending = 0
    for start, count in batches(n, batch):
        items = make_records(start, count)
        t0 = time.perf_counter()
        report = ingest_batch(
            engine=engine,
            project_id=project_id,
            items=items,
            max_batch_records=settings.max_batch_records,
            max_record_bytes=settings.max_record_bytes,
            evaluators=evaluators,
        )
        figures.ingest_seconds += time.perf_counter() - t0
        pending += len(report.pending_eval_ids)
    if engine.dialect.name == "postgresql":
        # the statistics autovacuum gathers within a minute of a bulk load: without them the
        # planner's generic plans for the look-ups by id scan (scoring runs ~40% slower)
        with engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")

    total = ScoreReport()
    t0, c0 = time.perf_counter(), time.process_time()
    for part in score_stream(
        engine=engine, id_chunks=pending_id_chunks(engine=engine, limit=chunk), settings=settings
    ):  # what drain() does
        total.add(part)
    figures.seconds = time.perf_counter() - t0
    figures.cpu_seconds = time.process_time() - c0
    figures.verdicts = total.scored + total.errors + total.skipped
    figures.counts = {"passed": total.passed, "failed": total.failed, "errors": total.errors, "skipped": total.skipped}
    assert figures.verdicts == pending, (figures.verdicts, pending)
    dispose_engines()
    return figures


# ---- stores -----------------------------------------------------------------------------------


@dataclass
class StoreResult:
    store: str
    records: int
    raw_seconds: float
    build_seconds: float  # building the raw rows from the records (not in raw_seconds)
    api: ApiFigures
    scoring: ScoreFigures

    @property
    def raw_rate(self) -> float:
        return self.records / self.raw_seconds

    @property
    def api_rate(self) -> float:
        return self.records / self.api.seconds


def run_sqlite(args: argparse.Namespace, workdir: Path) -> StoreResult:
    print(f"[sqlite] raw executemany of {args.records:,} rows ...", flush=True)
    raw, build = bench_raw_sqlite(workdir / "raw.db", args.records, args.batch)
    print(f"[sqlite] API ingest of {args.records:,} records ...", flush=True)
    home = workdir / "api-home"

    def count_steps() -> int:
        with sqlite3.connect(home / "evalsvc.db") as con:
            stored: int = con.execute("SELECT count(*) FROM step").fetchone()[0]
            return stored

    api = bench_api(home, None, args.records, args.batch, count_steps, args.workers, args.clients)
    print(f"[sqlite] scoring {args.score_records:,} records ...", flush=True)
    scoring = bench_scoring(workdir / "score-home", None, args.score_records, args.batch, args.score_chunk)
    return StoreResult("sqlite", args.records, raw, build, api, scoring)


def run_postgres(args: argparse.Namespace, workdir: Path) -> StoreResult:
    import sqlalchemy as sa

    admin = sa.create_engine(args.pg_url, isolation_level="AUTOCOMMIT")
    names = {part: f"evalsvc_bench_{part}_{secrets.token_hex(3)}" for part in ("raw", "api", "score")}
    base = args.pg_url.rsplit("/", 1)[0]
    urls = {part: f"{base}/{name}" for part, name in names.items()}

    def drop(*parts: str) -> None:
        # a line's database goes when the line is done: autovacuum would otherwise work through its
        # million rows on the machine's other core while the next line is measured
        with admin.connect() as conn:
            for part in parts:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{names[part]}" WITH (FORCE)'))

    try:
        with admin.connect() as conn:
            for name in names.values():
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        dsn = sa.engine.make_url(urls["raw"]).set(drivername="postgresql").render_as_string(hide_password=False)
        print(f"[postgres] raw executemany of {args.records:,} rows ...", flush=True)
        raw, build = bench_raw_postgres(dsn, args.records, args.batch)
        drop("raw")
        print(f"[postgres] API ingest of {args.records:,} records ...", flush=True)

        def count_steps() -> int:
            import psycopg

            api_dsn = sa.engine.make_url(urls["api"]).set(drivername="postgresql").render_as_string(False)
            with psycopg.connect(api_dsn) as con:
                row = con.execute("SELECT count(*) FROM step").fetchone()
            return int(row[0]) if row else 0

        api = bench_api(workdir / "pg-api-home", urls["api"], args.records, args.batch, count_steps, args.workers,
                        args.clients)  # fmt: skip
        drop("api")
        print(f"[postgres] scoring {args.score_records:,} records ...", flush=True)
        scoring = bench_scoring(
            workdir / "pg-score-home", urls["score"], args.score_records, args.batch, args.score_chunk
        )
        return StoreResult("postgres", args.records, raw, build, api, scoring)
    finally:
        drop(*names)
        admin.dispose()


# ---- report -----------------------------------------------------------------------------------


def _ok(good: bool) -> str:
    return "yes" if good else "NO"


def print_table(results: list[StoreResult], args: argparse.Namespace) -> None:
    rows: list[tuple[str, str, str, str, str, str]] = []
    for r in results:
        s = r.scoring
        ratio = r.api_rate / r.raw_rate
        built_rate = r.records / (r.raw_seconds + r.build_seconds)
        rows += [
            (
                r.store,
                "raw executemany",
                f"{r.records:,} rows",
                f"{r.raw_seconds:.1f}",
                f"{r.raw_rate:,.0f} rows/s",
                "",
            ),
            (
                r.store,
                "raw, rows built + executemany",
                f"{r.records:,} rows",
                f"{r.raw_seconds + r.build_seconds:.1f}",
                f"{built_rate:,.0f} rows/s (the API is {r.api_rate / built_rate:.2f}x this)",
                "",
            ),
            (
                r.store,
                "API ingest (HTTP)",
                f"{r.records:,} records",
                f"{r.api.seconds:.1f}",
                f"{r.api_rate:,.0f} rec/s = {ratio:.2f}x raw "
                f"({r.records / r.api.cpu_seconds if r.api.cpu_seconds else 0:,.0f} per CPU second of serve, "
                f"--workers {args.workers}, {args.clients} client(s))",
                f">= {RAW_TARGET:.2f}x raw: {_ok(ratio >= RAW_TARGET)}",
            ),
            (
                r.store,
                "in-process ingest+schedule",
                f"{s.records:,} records",
                f"{s.ingest_seconds:.1f}",
                f"{s.records / s.ingest_seconds:,.0f} rec/s",
                "",
            ),
            (
                r.store,
                "rule scoring, 1 process",
                f"{s.verdicts:,} verdicts",
                f"{s.seconds:.1f} (cpu {s.cpu_seconds:.1f})",
                f"{s.verdicts / s.seconds:,.0f}/s wall, {s.verdicts / s.cpu_seconds:,.0f}/cpu-s",
                f">= {SCORE_TARGET:,}/s/core: {_ok(s.verdicts / s.seconds >= SCORE_TARGET)}",
            ),
            (
                r.store,
                "serve RSS",
                "idle / after ingest",
                "",
                f"{r.api.idle_rss_mb:.0f} MB / {r.api.peak_rss_mb:.0f} MB peak",
                f"idle < {RSS_TARGET_MB} MB: {_ok(r.api.idle_rss_mb < RSS_TARGET_MB)}",
            ),
        ]
    header = ("store", "measure", "size", "seconds", "rate", "target")
    widths = [max(len(x[i]) for x in [header, *rows]) for i in range(len(header))]
    line = "  ".join("{:<%d}" % w for w in widths)  # noqa: UP031
    print()
    print(f"records={args.records:,} batch={args.batch:,} score_records={args.score_records:,} cores={os.cpu_count()}")
    print(line.format(*header))
    print(line.format(*("-" * w for w in widths)))
    for row in rows:
        print(line.format(*row))
    for r in results:
        print(f"{r.store}: verdicts {r.scoring.counts}; steps stored by the API: {r.api.stored:,}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000, help="records per store (default 1,000,000)")
    parser.add_argument("--batch", type=int, default=10_000, help="records per request / executemany")
    parser.add_argument("--store", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL, help="admin URL; the bench creates and drops its databases")
    parser.add_argument(
        "--score-records",
        type=int,
        default=None,
        help="records ingested for the scoring test (default min(records, 200,000))",
    )
    parser.add_argument("--score-chunk", type=int, default=1000, help="pending ids per score_pending call")
    parser.add_argument("--workers", type=int, default=1, help="`serve --workers N` for the API ingest (default 1)")
    parser.add_argument("--clients", type=int, default=1, help="concurrent clients of the API ingest (default 1)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary SQLite files")
    args = parser.parse_args(argv)
    if args.score_records is None:
        args.score_records = min(args.records, 200_000)

    workdir = Path(tempfile.mkdtemp(prefix="evalsvc-bench-"))
    results: list[StoreResult] = []
    started = time.perf_counter()
    try:
        if args.store in ("sqlite", "both"):
            results.append(run_sqlite(args, workdir))
        if args.store in ("postgres", "both"):
            results.append(run_postgres(args, workdir))
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print_table(results, args)
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
