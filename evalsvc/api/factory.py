"""The application factory of ``evalsvc serve --workers N``: uvicorn starts each worker process
from an import string, so the process configures its logging and builds its app from the
environment here (the parent has migrated the store already).

    $ evalsvc serve --workers 2      # uvicorn runs evalsvc.api.factory:worker_app in each process
"""

from __future__ import annotations

from fastapi import FastAPI

__all__ = ["migrate_store", "worker_app"]


def worker_app() -> FastAPI:
    """One worker process's app, with its own in-process worker (claims in the store keep the
    workers of several processes from scoring a result twice)."""
    from evalsvc.api.main import create_app
    from evalsvc.logging import configure_logging
    from evalsvc.settings import Settings

    settings = Settings()
    configure_logging(settings, service=True)
    return create_app(settings)


def migrate_store() -> None:
    """Bring the configured store's schema to the latest migration (run once by ``serve --workers``)."""
    from evalsvc.settings import Settings
    from evalsvc.store.db import get_engine, migrate

    migrate(get_engine(Settings().resolved_database_url()))
