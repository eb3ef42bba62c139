"""Runs with their steps, attempts and verdicts; the actions taken (the audit trail)."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Query

from evalsvc.store.queries import (
    ActionPublic,
    RunDetail,
    RunPublic,
    get_run,
    list_actions,
    list_runs,
    resolve_run,
)

from ..deps import ProjectDep, SessionDep

router = APIRouter(prefix="/v1", tags=["runs"])


@router.get("/runs", response_model=list[RunPublic])
def runs(
    project: ProjectDep,
    session: SessionDep,
    status: str | None = None,
    workflow: str | None = None,
    failed_evaluator: str | None = Query(default=None, description="Only runs this evaluator failed."),
    since: datetime | None = Query(default=None, description="Only runs last changed at or after this time."),
    until: datetime | None = Query(default=None, description="Only runs last changed before this time."),
    limit: int = Query(default=50, ge=1, le=1000),
    offset: int = Query(default=0, ge=0),
) -> list[RunPublic]:
    return list_runs(
        session=session,
        project_id=project.id or 0,
        status=status,
        workflow=workflow,
        failed_evaluator=failed_evaluator,
        since=since,
        until=until,
        limit=limit,
        offset=offset,
    )


@router.get("/runs/{run_key}", response_model=RunDetail, summary="A run with its steps (all attempts) and verdicts")
def run(run_key: str, project: ProjectDep, session: SessionDep, source: str | None = None) -> RunDetail:
    return get_run(session=session, project_id=project.id or 0, run_key=run_key, source=source)


@router.get("/actions", response_model=list[ActionPublic], tags=["actions"])
def actions(
    project: ProjectDep,
    session: SessionDep,
    kind: str | None = None,
    status: str | None = None,
    run_key: str | None = Query(default=None, description="Only actions on this run."),
    source: str | None = Query(default=None, description="The run's source, where its key is ambiguous."),
    limit: int = Query(default=100, ge=1, le=1000),
) -> list[ActionPublic]:
    run_id = None
    if run_key is not None:
        run_id = resolve_run(session=session, project_id=project.id or 0, run_key=run_key, source=source).id
    return list_actions(
        session=session, project_id=project.id or 0, kind=kind, status=status, run_id=run_id, limit=limit
    )
