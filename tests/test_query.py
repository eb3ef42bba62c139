"""Read-only SQL over the eval history: POST /v1/query and `evalsvc query`, on both stores.

Through the front doors (TestClient, typer's CliRunner); the attacks are real DuckDB statements run
against the sandbox, and must fail without reaching another project's rows or writing anything.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import duckdb
from typer.testing import CliRunner

from evalsvc.analytics.replica import replica_path
from evalsvc.cli import app
from evalsvc.settings import Settings
from tests.conftest import Api
from tests.factories import record

YAML = """
evaluators:
  - {name: not_blank, scorer: not_empty, on_fail: review}
  - {name: is_obj, scorer: json_schema, params: {schema: {type: object}}, on_fail: {action: retry, max_attempts: 3}}
"""


def q(api: Api, sql: str, **kw: Any) -> Any:
    return api.post("/v1/query", json={"sql": sql, "max_lag_seconds": 0, **kw})


def _fill(api: Api, other_api: Api) -> None:
    api.apply(YAML)
    other_api.apply(YAML)
    api.ingest([
        record("r1", "reply", output=""),
        record("r1", "reply", attempt=2, output={"ok": True}),
        record("r2", "reply", output={"fine": 1}),
    ])  # fmt: skip
    other_api.ingest([record("secret-run", "reply", output="")])


def test_sql_answers_the_question_and_sees_only_its_project(api: Api, other_api: Api) -> None:
    _fill(api, other_api)
    # which runs failed evaluator is_obj, what did evalsvc do, and did it work?
    r = q(
        api,
        """
        SELECT r.run_key, s.attempt, a.kind, a.status AS action_status,
               (SELECT bool_or(e2.passed) FROM steps s2 JOIN evals e2 ON e2.step_id = s2.id
                 WHERE s2.run_id = s.run_id AND s2.step_key = s.step_key AND s2.attempt > s.attempt
                   AND e2.evaluator = e.evaluator) AS retry_passed
        FROM evals e JOIN steps s ON s.id = e.step_id JOIN runs r ON r.id = e.run_id
        LEFT JOIN actions a ON a.eval_result_id = e.id
        WHERE e.evaluator = 'is_obj' AND NOT e.passed ORDER BY 1""",
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["columns"] == ["run_key", "attempt", "kind", "action_status", "retry_passed"]
    assert body["rows"] == [["r1", 1, "retry", "failed", True]]
    assert body["freshness"]["lag_seconds"] >= 0 and body["freshness"]["refreshed_at"].endswith("Z")
    assert r.headers["x-evalsvc-replica-refreshed-at"] == body["freshness"]["refreshed_at"]
    # the other project's rows are not there, whatever the view
    views = ("runs", "steps", "evals", "actions", "reviews")
    mine = {v: q(api, f"SELECT count(*) FROM {v}").json()["rows"][0][0] for v in views}
    theirs = {v: q(other_api, f"SELECT count(*) FROM {v}").json()["rows"][0][0] for v in views}
    assert mine == {"runs": 2, "steps": 3, "evals": 6, "actions": 2, "reviews": 1}
    assert theirs == {"runs": 1, "steps": 1, "evals": 2, "actions": 2, "reviews": 1}
    assert q(api, "SELECT count(*) FROM runs WHERE run_key = 'secret-run'").json()["rows"] == [[0]]


def test_replica_follows_the_store_incrementally(api: Api) -> None:
    api.apply(YAML)
    api.ingest([record("r1", "reply", output="")])
    first = q(api, "SELECT count(*), count(*) FILTER (WHERE passed) FROM evals").json()
    assert first["rows"] == [[2, 0]]
    # a correction of the finished step re-scores its results in place (same rows, new verdicts)
    api.ingest([record("r1", "reply", output={"now": "fine"})])
    again = q(api, "SELECT count(*), count(*) FILTER (WHERE passed) FROM evals").json()
    assert again["rows"] == [[2, 2]]
    assert again["freshness"]["refreshed_at"] >= first["freshness"]["refreshed_at"]
    # a review decided after the first copy shows up too
    (item,) = api.get("/v1/reviews").json()
    assert api.post(f"/v1/reviews/{item['id']}/approve", json={"reviewer": "ana"}).status_code == 200
    got = q(api, "SELECT status, reviewer FROM reviews").json()["rows"]
    assert got == [["approved", "ana"]]


ATTACKS = [
    # another database or file: external access is off
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_parquet('{replica}')",
    "SELECT * FROM read_blob('{replica}')",
    "SELECT * FROM sqlite_scan('{store}', 'eval_result')",
    "SELECT * FROM glob('/*')",
    # anything that is not one SELECT
    "ATTACH '{store}' AS s (TYPE sqlite)",
    "ATTACH '{other}' AS o",
    "COPY evals TO '/tmp/evalsvc-leak.csv'",
    "INSTALL httpfs",
    "LOAD sqlite_scanner",
    "PRAGMA enable_profiling",
    "SET enable_external_access = true",
    "SELECT 1; SELECT 2",
    "DELETE FROM evals",
    "UPDATE runs SET status = 'x'",
    "CREATE TABLE x AS SELECT 1",
    "DROP TABLE evals",
    "DETACH replica",
    "USE memory",
]


def test_crafted_sql_cannot_leave_the_project_or_write(api: Api, other_api: Api, settings: Settings) -> None:
    _fill(api, other_api)
    store = settings.resolved_database_url().removeprefix("sqlite:///")
    replica = replica_path(settings=settings, project_id=1)
    other = replica_path(settings=settings, project_id=2)
    before = q(api, "SELECT count(*) FROM evals").json()["rows"]
    for attack in ATTACKS:
        sql = attack.format(store=store, replica=replica, other=other)
        r = q(api, sql)
        assert r.status_code == 400, (sql, r.text)
        assert r.json()["error"] == "bad_query" and r.json()["field"] == "sql", r.text
    # duckdb_* functions see this sandbox only: no other project's database, no store
    dbs = q(api, "SELECT database_name, path FROM duckdb_databases() WHERE NOT internal").json()["rows"]
    assert all(str(other) != p and store != p for _, p in dbs), dbs
    tables = q(api, "SELECT DISTINCT table_name FROM duckdb_tables()").json()["rows"]
    assert {"evals", "runs"} <= {t for (t,) in tables} and all(t != "eval_result" for (t,) in tables)
    assert q(api, "SELECT count(*) FROM evals").json()["rows"] == before
    assert not Path("/tmp/evalsvc-leak.csv").exists()


def test_limits_formats_and_errors(api: Api) -> None:
    api.apply(YAML)
    api.ingest([record(f"r{i}", "reply", output={"i": i}) for i in range(5)])
    r = q(api, "SELECT run_key FROM runs ORDER BY run_key", limit=2)
    assert r.json()["rows"] == [["r0"], ["r1"]] and r.json()["truncated"] is True
    assert r.headers["x-evalsvc-truncated"] == "true"
    csv_r = q(api, "SELECT run_key, status FROM runs ORDER BY run_key", format="csv")
    assert csv_r.headers["content-type"].startswith("text/csv")
    assert csv_r.text.splitlines()[:2] == ["run_key,status", "r0,completed"]
    pq = q(api, "SELECT run_key FROM runs ORDER BY 1", format="parquet")
    assert pq.content[:4] == b"PAR1"
    path = Path(api.client.app.state.settings.home) / "x.parquet"  # type: ignore[attr-defined]
    path.write_bytes(pq.content)
    assert duckdb.sql(f"SELECT count(*) FROM '{path}'").fetchall() == [(5,)]
    bad = q(api, "SELEC 1")
    assert bad.status_code == 400 and "Parser Error" in bad.json()["message"]
    missing = q(api, "SELECT nope FROM runs")
    assert missing.status_code == 400 and "nope" in missing.json()["message"]
    slow = q(api, "SELECT count(*) FROM range(100000000000) a", timeout=0.3)
    assert slow.status_code == 400 and slow.json()["error"] == "query_timeout", slow.text
    assert q(api, "SELECT 1", limit=10**9).status_code == 422
    assert api.client.post("/v1/query", json={"sql": "SELECT 1"}).status_code == 401


def test_cli_query_formats_and_exit_codes(settings: Settings, api: Api, tmp_path: Path) -> None:
    api.apply(YAML)
    api.ingest([record("r1", "reply", output=""), record("r2", "reply", output={"a": 1})])
    env = {"EVALSVC_HOME": str(settings.home), "EVALSVC_DATABASE_URL": settings.database_url or ""}
    runner = CliRunner()

    def run(*args: str) -> Any:
        return runner.invoke(app, ["query", *args, "--max-lag", "0"], env=env)

    res = run("SELECT evaluator, count(*) AS failed FROM evals WHERE NOT passed GROUP BY 1 ORDER BY 1", "-f", "json")
    assert res.exit_code == 0, res.output
    body = json.loads(res.stdout)
    assert body["rows"] == [["is_obj", 1], ["not_blank", 1]]
    assert "replica refreshed" in res.stderr
    res = run("SELECT run_key FROM runs ORDER BY 1", "--format", "csv", "--limit", "1")
    assert res.exit_code == 0 and res.stdout == "run_key\nr1\n" and "first 1 rows" in res.stderr
    out = tmp_path / "runs.parquet"
    res = run("SELECT * FROM runs", "--format", "parquet", "--output", str(out))
    assert res.exit_code == 0, res.output
    assert duckdb.sql(f"SELECT count(*) FROM '{out}'").fetchall() == [(2,)]
    res = run("SELECT run_key, status FROM runs ORDER BY 1")
    assert res.exit_code == 0 and "r2" in res.stdout and "completed" in res.stdout
    res = run("DROP TABLE runs")
    assert res.exit_code == 4 and "only a SELECT" in res.stderr
    res = run("SELECT * FROM nowhere")
    assert res.exit_code == 4 and "nowhere" in res.stderr
    res = run("SELECT 1", "--format", "xml")
    assert res.exit_code == 4 and "--format" in res.stderr
    assert io.StringIO(res.stderr).readline().startswith("error")
