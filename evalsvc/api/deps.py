"""Request dependencies: settings, the store's engine, a session, the caller's project, the runner."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.engine import Engine
from sqlmodel import Session

from evalsvc.errors import Unauthorized
from evalsvc.pipeline.projects import project_for_key
from evalsvc.settings import Settings
from evalsvc.store.models import Project
from evalsvc.worker import Runner

__all__ = ["EngineDep", "ProjectDep", "RunnerDep", "SessionDep", "SettingsDep"]


def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_engine_dep(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def get_runner_dep(request: Request) -> Runner:
    runner: Runner = request.app.state.runner
    return runner


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
EngineDep = Annotated[Engine, Depends(get_engine_dep)]
RunnerDep = Annotated[Runner, Depends(get_runner_dep)]


def get_session(engine: EngineDep) -> Iterator[Session]:
    """A read-only session; routes that write open :func:`evalsvc.store.db.write_session` themselves."""
    with Session(engine, expire_on_commit=False) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def get_project(request: Request, engine: EngineDep) -> Project:
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized(
            "send 'Authorization: Bearer <key>' with a project API key (evalsvc keys create)", field="authorization"
        )
    with Session(engine) as session:
        project = project_for_key(session=session, key=key.strip())
    if project is None:
        raise Unauthorized("unknown or revoked API key", field="authorization")
    return project


ProjectDep = Annotated[Project, Depends(get_project)]
