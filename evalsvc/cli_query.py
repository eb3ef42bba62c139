"""``evalsvc query``: read-only SQL over a project's eval history (DuckDB replica).

    $ evalsvc query "SELECT evaluator, avg(passed::int) AS pass_rate FROM evals GROUP BY 1" --project demo
    $ evalsvc query "SELECT * FROM evals WHERE NOT passed" --format csv --output failed.csv

The rows go to stdout (or ``--output``); how fresh the replica is goes to stderr.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from evalsvc.errors import InvalidInput

from .cli import Ctx, ProjectOpt, app, console, err


@app.command("query")
def query(
    sql: Annotated[
        str, typer.Argument(help="One SELECT over runs, steps, evals, actions, reviews (docs/querying.md).")
    ],
    project: ProjectOpt = "default",
    fmt: Annotated[str, typer.Option("--format", "-f", help="table, csv, json or parquet.")] = "table",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the rows to this file.")] = None,
    limit: Annotated[int | None, typer.Option(help="Most rows to return (default EVALSVC_QUERY_MAX_ROWS).")] = None,
    timeout: Annotated[float | None, typer.Option(help="Seconds before the query is stopped.")] = None,
    max_lag: Annotated[
        float | None, typer.Option("--max-lag", help="Refresh the replica first when it is older than this (s).")
    ] = None,
) -> None:
    """Run one read-only SQL query over the project's runs, steps, evals, actions and reviews.

    Example: `evalsvc query "SELECT evaluator, count(*) FROM evals WHERE NOT passed GROUP BY 1" -p demo`
    """
    from evalsvc.analytics.query import FORMATS, run_query

    if fmt not in FORMATS:
        raise InvalidInput(f"must be one of {', '.join(FORMATS)}, not {fmt!r}", field="--format")
    if fmt == "parquet" and output is None:
        raise InvalidInput("Parquet is binary: name a file with --output", field="--output")
    ctx = Ctx(project)
    res = run_query(
        settings=ctx.settings,
        project_id=ctx.project_id,
        sql=sql,
        limit=limit,
        timeout_seconds=timeout,
        max_lag_seconds=max_lag,
    )
    cut = f"; first {len(res.rows)} rows (--limit)" if res.truncated else ""
    err.print(f"{len(res.rows)} rows in {res.elapsed_ms:.0f} ms; {res.freshness.describe()}{cut}", highlight=False)
    if fmt == "parquet":
        assert output is not None
        output.write_bytes(res.to_parquet())
        return
    if fmt == "table":
        table = Table(*res.columns)
        for row in res.rows:
            table.add_row(*("" if v is None else str(v) for v in row))
        if output is None:
            console.print(table)
            return
        from rich.console import Console

        with output.open("w", encoding="utf-8") as f:
            Console(file=f, width=200).print(table)
        return
    text = res.to_csv() if fmt == "csv" else res.to_json().decode() + "\n"
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text, encoding="utf-8")
