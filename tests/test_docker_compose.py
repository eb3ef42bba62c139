"""The Docker Compose setup stays in step with the settings and the CLI."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from evalsvc.settings import Settings

ROOT = Path(__file__).parents[1]
COMPOSE_FILE = ROOT / "docker" / "compose.yaml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
PREFIX = "EVALSVC_"
PACKAGES = ("evalsvc", "scorers", "connectors")


def _compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _services() -> dict[str, dict[str, Any]]:
    services = _compose()["services"]
    assert isinstance(services, dict)
    return services


def _environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a mapping (compose also allows a ``KEY=value`` list)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    assert isinstance(env, dict)
    return {str(key): str(value) for key, value in env.items()}


def _app_env() -> dict[str, str]:
    return _environment(_services()["api"])


def _unknown_settings_keys(env: dict[str, str]) -> list[str]:
    """``EVALSVC_*`` keys that name no field of ``Settings``."""
    fields = set(Settings.model_fields)
    return sorted(key for key in env if key.startswith(PREFIX) and key[len(PREFIX) :].lower() not in fields)


def _command_words(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(word) for word in command]


def _dockerfile_lines() -> list[str]:
    """Instructions of the Dockerfile, continuation lines joined, comments dropped."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    text = re.sub(r"\\\n", " ", text)
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _dockerfile_instructions(name: str) -> list[str]:
    prefix = name.upper() + " "
    return [line[len(prefix) :].strip() for line in _dockerfile_lines() if line.upper().startswith(prefix)]


def test_services_are_exactly_the_four() -> None:
    assert set(_services()) == {"api", "worker", "redis", "postgres"}


def test_api_and_worker_share_one_environment() -> None:
    services = _services()
    api_env = _environment(services["api"])
    assert api_env, "api has no environment"
    assert api_env == _environment(services["worker"])
    # The shared block is the extension field, not two copies that could drift.
    assert _compose()["x-evalsvc-env"] == api_env


def test_every_evalsvc_variable_is_a_setting() -> None:
    env = _app_env()
    assert [key for key in env if key.startswith(PREFIX)], "no EVALSVC_ variables"
    assert _unknown_settings_keys(env) == []


def test_misspelled_variable_is_caught() -> None:
    env = {**_app_env(), "EVALSVC_DATABSE_URL": "sqlite://"}
    assert _unknown_settings_keys(env) == ["EVALSVC_DATABSE_URL"]


def test_database_url_is_postgres_psycopg_on_the_postgres_service() -> None:
    url = _app_env()["EVALSVC_DATABASE_URL"]
    settings = Settings(database_url=url)
    assert settings.database_url == url
    assert settings.resolved_database_url() == url
    parts = urlsplit(url)
    assert parts.scheme == "postgresql+psycopg"
    assert parts.hostname == "postgres"

    pg_env = _environment(_services()["postgres"])
    assert parts.username == pg_env["POSTGRES_USER"]
    assert parts.password == pg_env["POSTGRES_PASSWORD"]
    assert parts.path.lstrip("/") == pg_env["POSTGRES_DB"]


def test_broker_url_points_at_the_redis_service() -> None:
    url = _app_env()["EVALSVC_BROKER_URL"]
    settings = Settings(broker_url=url)
    assert settings.runner == "celery"
    parts = urlsplit(url)
    assert parts.scheme == "redis"
    assert parts.hostname == "redis"
    assert _services()["redis"]["image"].startswith("redis:")


def test_webhook_secret_is_required_from_the_host() -> None:
    value = _app_env()["EVALSVC_WEBHOOK_SECRET"]
    assert re.fullmatch(r"\$\{EVALSVC_WEBHOOK_SECRET:\?[^}]*\}", value), value


@pytest.mark.parametrize("name", ["api", "worker"])
def test_app_services_wait_for_their_backends(name: str) -> None:
    service = _services()[name]
    assert service["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "redis": {"condition": "service_started"},
    }
    assert service["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}
    assert (COMPOSE_FILE.parent / service["build"]["context"] / service["build"]["dockerfile"]).resolve() == (
        DOCKERFILE.resolve()
    )


def test_postgres_has_a_healthcheck_and_a_named_volume() -> None:
    compose = _compose()
    postgres = compose["services"]["postgres"]
    assert "pg_isready" in " ".join(_command_words(postgres["healthcheck"]["test"]))
    volume_names = {str(volume).split(":", 1)[0] for volume in postgres["volumes"]}
    assert volume_names & set(compose["volumes"])


def test_commands_use_the_console_script_subcommands() -> None:
    services = _services()
    api = _command_words(services["api"]["command"])
    worker = _command_words(services["worker"]["command"])
    assert api[:2] == ["evalsvc", "serve"]
    assert "0.0.0.0" in api
    assert worker[:2] == ["evalsvc", "worker"]

    cmds = _dockerfile_instructions("CMD")
    assert len(cmds) == 1
    assert json.loads(cmds[0])[:2] == ["evalsvc", "serve"]


def test_dockerfile_copies_the_project() -> None:
    copied: set[str] = set()
    for args in _dockerfile_instructions("COPY"):
        words = [word for word in shlex.split(args) if not word.startswith("--")]
        copied.update(word.strip("./") for word in words[:-1])
    for package in PACKAGES:
        assert package in copied, f"Dockerfile does not copy {package}/"
        assert (ROOT / package).is_dir()
    # the files the build reads besides the packages (pip install /app fails without them)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    needed = {"pyproject.toml", project["readme"], *project.get("license-files", [])}
    assert needed <= copied, f"Dockerfile does not copy {sorted(needed - copied)}"
    assert any("pip install" in run and "/app" in run for run in _dockerfile_instructions("RUN"))


def test_dockerfile_runs_as_non_root_with_local_cost_map() -> None:
    users = _dockerfile_instructions("USER")
    assert users and users[-1] not in {"root", "0"}
    env = " ".join(_dockerfile_instructions("ENV"))
    assert "LITELLM_LOCAL_MODEL_COST_MAP=True" in env
    assert any("/healthz" in check for check in _dockerfile_instructions("HEALTHCHECK"))
    assert "8000" in _dockerfile_instructions("EXPOSE")
