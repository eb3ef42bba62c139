"""Read-only SQL over the caller's project's eval history (DuckDB): ``POST /v1/query``.

    curl -s -X POST http://127.0.0.1:8000/v1/query -H "Authorization: Bearer $KEY" \\
      -d '{"sql": "SELECT evaluator, avg(passed::int) AS pass_rate FROM evals GROUP BY 1"}'

Answers JSON (columns, rows, truncated, freshness) or, with ``"format": "csv"`` / ``"parquet"``,
the file, with the replica's freshness in the ``X-Evalsvc-Replica-*`` headers.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field

from ..deps import ProjectDep, SettingsDep

router = APIRouter(prefix="/v1", tags=["query"])


class QueryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sql: str = Field(
        min_length=1, max_length=100_000, description="One SELECT over runs, steps, evals, actions, reviews."
    )
    format: Literal["json", "csv", "parquet"] = "json"
    limit: int | None = Field(default=None, ge=1, description="Most rows to return (capped by EVALSVC_QUERY_MAX_ROWS).")
    timeout: float | None = Field(default=None, gt=0, description="Seconds before the query is stopped.")
    max_lag_seconds: float | None = Field(
        default=None, ge=0, description="Refresh the replica first when it is older than this."
    )


@router.post("/query", summary="Run one read-only SQL query over the project's eval history")
def query(body: QueryRequest, project: ProjectDep, settings: SettingsDep) -> Response:
    # DuckDB loads with the first query, not with the service (idle memory); from then on the
    # replicas of the projects queried lately are kept fresh in the background
    from evalsvc.analytics.query import run_query, start_background_refresh

    start_background_refresh(settings)

    res = run_query(
        settings=settings,
        project_id=project.id or 0,
        sql=body.sql,
        limit=body.limit,
        timeout_seconds=body.timeout,
        max_lag_seconds=body.max_lag_seconds,
    )
    fresh = res.freshness.as_dict()
    headers = {
        "X-Evalsvc-Replica-Refreshed-At": str(fresh["refreshed_at"]),
        "X-Evalsvc-Replica-Lag-Seconds": str(fresh["lag_seconds"]),
        "X-Evalsvc-Truncated": "true" if res.truncated else "false",
    }
    if body.format == "csv":
        return Response(res.to_csv(), media_type="text/csv", headers=headers)
    if body.format == "parquet":
        return Response(res.to_parquet(), media_type="application/vnd.apache.parquet", headers=headers)
    return Response(res.to_json(), media_type="application/json", headers=headers)
