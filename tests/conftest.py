"""Shared fixtures: real stores (a SQLite file, the machine's PostgreSQL), the HTTP API through
TestClient, and API keys. Nothing of ours is patched; services that are down fail the tests
(``.ci/run`` starts them first)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from evalsvc.api.main import create_app
from evalsvc.pipeline.projects import create_key, ensure_project
from evalsvc.settings import Settings
from evalsvc.store.db import dispose_engines, get_engine, migrate, session_scope

PG_ADMIN_URL = os.environ.get("EVALSVC_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("EVALSVC_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")
WEBHOOK_SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped at the end."""
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"evalsvc_test_{secrets.token_hex(4)}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    yield url
    dispose_engines()
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _truncate(url: str) -> None:
    engine = get_engine(url)
    migrate(engine)
    with engine.begin() as conn:
        conn.execute(sa.text(
            "TRUNCATE action, review_item, eval_result, step, run, evaluator, api_key, project RESTART IDENTITY CASCADE"
        ))  # fmt: skip


@pytest.fixture(params=["sqlite", "postgres"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Settings on each store: a new SQLite file, or the session's PostgreSQL database emptied."""
    common: dict[str, Any] = {"home": tmp_path / "home", "webhook_secret": WEBHOOK_SECRET,
                              "webhook_allow_private": True, "action_backoff_seconds": 0.05}  # fmt: skip
    if request.param == "postgres":
        url = request.getfixturevalue("pg_url")
        _truncate(url)
        return Settings(database_url=url, **common)
    return Settings(**common)


@pytest.fixture
def sqlite_settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", webhook_secret=WEBHOOK_SECRET, webhook_allow_private=True,
                    action_backoff_seconds=0.05)  # fmt: skip


@pytest.fixture
def engine(settings: Settings) -> sa.Engine:
    e = get_engine(settings.resolved_database_url())
    migrate(e)
    return e


def make_key(settings: Settings, project: str) -> str:
    engine = get_engine(settings.resolved_database_url())
    migrate(engine)
    with session_scope(engine) as session:
        proj = ensure_project(session=session, name=project)
        _, key = create_key(session=session, project=proj)
    return key


class Api:
    """The HTTP API as a client sees it, with one project's key."""

    def __init__(self, client: TestClient, key: str) -> None:
        self.client, self.key = client, key
        self.headers = {"authorization": f"Bearer {key}"}

    def get(self, path: str, **kw: Any) -> Any:
        return self.client.get(path, headers=self.headers, **kw)

    def post(self, path: str, **kw: Any) -> Any:
        headers = {**self.headers, **kw.pop("headers", {})}
        return self.client.post(path, headers=headers, **kw)

    def wait_idle(self) -> None:
        worker = self.client.app.state.worker  # type: ignore[attr-defined]
        if worker is not None:
            assert worker.wait_idle(30), "in-process worker did not go idle"

    def apply(self, yaml_text: str) -> Any:
        r = self.post("/v1/evaluators", content=yaml_text, headers={"content-type": "application/yaml"})
        assert r.status_code == 200, r.text
        return r.json()

    def ingest(self, records: Any, *, expect: int = 200) -> Any:
        r = self.post("/v1/ingest/json", json=records)
        assert r.status_code == expect, r.text
        self.wait_idle()
        return r.json()


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def api(client: TestClient, settings: Settings) -> Api:
    return Api(client, make_key(settings, "default"))


@pytest.fixture
def other_api(client: TestClient, settings: Settings) -> Api:
    return Api(client, make_key(settings, "other"))
