"""Eval results (each linked to its run, step and attempt) and evaluators as code."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Query, Request

from evalsvc.errors import InvalidInput
from evalsvc.pipeline.drift import DriftReportPublic, list_reports
from evalsvc.pipeline.evaluators import apply_evaluators, parse_config, parse_specs
from evalsvc.store.db import write_session
from evalsvc.store.queries import EvalPublic, EvaluatorPublic, list_evals, list_evaluator_rows

from ..deps import EngineDep, ProjectDep, SessionDep, SettingsDep
from .ingest import read_body

router = APIRouter(prefix="/v1", tags=["evals"])


@router.get("/evals", response_model=list[EvalPublic])
def evals(
    project: ProjectDep,
    session: SessionDep,
    passed: bool | None = None,
    status: str | None = None,
    evaluator: str | None = None,
    limit: int = Query(default=100, ge=1, le=1000),
    offset: int = Query(default=0, ge=0),
) -> list[EvalPublic]:
    return list_evals(
        session=session,
        project_id=project.id or 0,
        passed=passed,
        status=status,
        evaluator=evaluator,
        limit=limit,
        offset=offset,
    )


@router.get("/evaluators", response_model=list[EvaluatorPublic])
def evaluators(project: ProjectDep, session: SessionDep, include_inactive: bool = False) -> list[EvaluatorPublic]:
    return list_evaluator_rows(session=session, project_id=project.id or 0, include_inactive=include_inactive)


@router.post("/evaluators", summary='Apply an evaluator file (YAML, or JSON {"evaluators": [...]})')
async def apply(request: Request, project: ProjectDep, engine: EngineDep, settings: SettingsDep) -> dict[str, Any]:
    body = await read_body(request, 1024 * 1024)
    if "json" in request.headers.get("content-type", ""):
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise InvalidInput(f"not valid JSON: {exc}", field="body") from None
        if not isinstance(data, dict) or not isinstance(data.get("evaluators"), list):
            raise InvalidInput("must hold a list under the key 'evaluators'", field="evaluators")
        specs = parse_specs(data["evaluators"])
    else:
        specs = parse_config(body.decode("utf-8", errors="replace"), source="body")
    with write_session(engine) as session:
        changes = apply_evaluators(session=session, project_id=project.id or 0, specs=specs, settings=settings)
    return {"changes": [c.as_dict() for c in changes]}


# statistical drift (docs/drift.md): the reports that `evalsvc drift check` stored
@router.get("/drift/reports", response_model=list[DriftReportPublic])
def drift_reports(
    project: ProjectDep,
    session: SessionDep,
    baseline: str | None = None,
    check_id: str | None = None,
    drifted: bool | None = None,
    limit: int = Query(default=100, ge=1, le=1000),
) -> list[DriftReportPublic]:
    return list_reports(session=session, project_id=project.id or 0, baseline=baseline, check_id=check_id,
                        drifted=drifted, limit=limit)  # fmt: skip
