"""The FastAPI application: routes, the one error mapping, and the in-process worker's lifecycle.

>>> from evalsvc.api.main import create_app
>>> from evalsvc.settings import Settings
>>> app = create_app(Settings(home="/tmp/evalsvc-doc-api"))
"""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from evalsvc.errors import EvalServiceError
from evalsvc.settings import Settings, get_settings
from evalsvc.store.db import get_engine, migrate
from evalsvc.worker import get_runner
from evalsvc.worker.inprocess import InProcessWorker

from .responses import JSONBytes
from .routes import evals, health, ingest, metrics, otlp, query, reviews, runs, ui, verdicts, webhooks

__all__ = ["create_app"]

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, *, start_worker: bool = True) -> FastAPI:
    settings = settings or get_settings()
    engine = get_engine(settings.resolved_database_url())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        migrate(engine)
        worker = app.state.worker
        if worker is not None:
            worker.start()
        yield
        if worker is not None:
            worker.stop()
        if "evalsvc.analytics.query" in sys.modules:  # a query started its background refresh
            sys.modules["evalsvc.analytics.query"].stop_background_refresh()

    app = FastAPI(
        title="evalsvc",
        version="0.1.0",
        summary="Production evals beside the workflow orchestrator.",
        default_response_class=JSONBytes,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = engine
    if settings.runner == "inprocess":
        worker = InProcessWorker(engine=engine, settings=settings) if start_worker else None
        app.state.worker = worker
        app.state.runner = worker or get_runner(engine=engine, settings=settings)
    else:
        app.state.worker = None
        app.state.runner = get_runner(engine=engine, settings=settings)

    @app.exception_handler(EvalServiceError)
    async def _service_error(_: Request, exc: EvalServiceError) -> JSONBytes:
        headers = {"Retry-After": "1"} if exc.http_status in (429, 503) else None
        return JSONBytes(exc.as_dict(), status_code=exc.http_status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONBytes:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONBytes({"error": code, "message": str(exc.detail), "field": None}, status_code=exc.status_code,
                         headers=getattr(exc, "headers", None))  # fmt: skip

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONBytes:
        err: dict[str, Any] = exc.errors()[0]
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path")]
        field = ".".join(loc) or None
        message = f"{field}: {err.get('msg')}" if field else str(err.get("msg"))
        return JSONBytes({"error": "invalid_input", "message": message, "field": field}, status_code=422)

    for module in (health, ingest, otlp, webhooks, runs, verdicts, evals, reviews, query, ui, metrics):
        app.include_router(module.router)
    return app
