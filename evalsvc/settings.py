"""Settings, read from the environment with the ``EVALSVC_`` prefix.

Every field has a description; ``docs/configuration.md`` is generated from them
(``python -m evalsvc.settings > docs/configuration.md``)::

    >>> from evalsvc.settings import Settings
    >>> s = Settings(home="/tmp/evalsvc-example")
    >>> s.resolved_database_url()
    'sqlite:////tmp/evalsvc-example/evalsvc.db'
    >>> s.runner
    'inprocess'
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "get_settings", "settings_markdown"]

# litellm fetches a remote price map at import unless told not to; evalsvc never reaches out.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EVALSVC_", extra="ignore")

    home: Path = Field(
        default=Path(".evalsvc"),
        description="Folder of the embedded store (SQLite file, DuckDB replica). Relative paths are "
        "taken from the working directory.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the store, e.g. `postgresql+psycopg://user@host:5432/db`. "
        "Unset: a SQLite file `evalsvc.db` under `EVALSVC_HOME`.",
    )
    broker_url: str | None = Field(
        default=None,
        description="Celery broker, e.g. `redis://127.0.0.1:6379/0`. Unset: scoring and actions run "
        "in-process, in a background thread of `serve` (or inline in CLI commands).",
    )
    queue: str = Field(
        default="evalsvc",
        min_length=1,
        max_length=200,
        pattern=r"^[A-Za-z0-9._:-]+$",
        description="Celery queue that the API and CLI send scoring and action tasks to and that "
        "`evalsvc worker` consumes; give deployments that share one broker different queues.",
    )
    max_batch_records: int = Field(
        default=10_000, ge=1, description="Most records one ingest request or CLI chunk may carry."
    )
    max_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024, description="Largest ingest request body, in bytes.")
    max_record_bytes: int = Field(
        default=1024 * 1024,
        ge=256,
        description="Largest single step record (its JSON encoding), in bytes; larger ones are "
        "rejected on their own, the rest of the batch is kept.",
    )
    webhook_secret: SecretStr | None = Field(
        default=None,
        description="Secret that signs outgoing webhooks (Standard Webhooks, HMAC-SHA256), in the "
        "`whsec_<base64>` form. Required when an evaluator has `on_fail: webhook`.",
    )
    webhook_allow_private: bool = Field(
        default=False,
        description="Allow webhook targets on private, loopback or link-local addresses (tests, "
        "single-host setups). Off by default: such targets are refused.",
    )
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, description="Timeout of one webhook delivery attempt.")
    action_max_attempts: int = Field(
        default=6, ge=1, description="Delivery attempts of one action before it is marked failed."
    )
    action_backoff_seconds: float = Field(
        default=1.0,
        ge=0,
        description="First retry delay of a failed action; it doubles each attempt, with jitter.",
    )
    action_backoff_max_seconds: float = Field(
        default=300.0, ge=0, description="Upper bound of the retry delay of an action."
    )
    lease_seconds: float = Field(
        default=300.0,
        gt=0,
        description="An action claimed by a worker that died is claimed again after this long; "
        "its idempotency key stays the same, so the target can drop the repeat.",
    )
    score_batch_size: int = Field(
        default=1000, ge=1, description="Pending eval results one scoring task takes at a time."
    )
    host: str = Field(default="127.0.0.1", description="Address `evalsvc serve` listens on.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port `evalsvc serve` listens on.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Log level of the service and workers."
    )
    log_format: Literal["json", "text"] = Field(
        default="json", description="Log format of `serve` and `worker` (the CLI always logs text)."
    )

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("sqlite", "postgresql")):
            raise ValueError("must be a sqlite:// or postgresql+psycopg:// URL")
        if value.startswith("postgresql://") or value.startswith("postgres://"):
            value = "postgresql+psycopg://" + value.split("://", 1)[1]
        return value

    @field_validator("webhook_secret", mode="before")
    @classmethod
    def _empty_secret_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("broker_url")
    @classmethod
    def _check_broker_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("redis://", "rediss://", "amqp://", "memory://")):
            raise ValueError("must be a redis:// (or amqp://) URL")
        return value

    @property
    def runner(self) -> Literal["inprocess", "celery"]:
        return "celery" if self.broker_url else "inprocess"

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.home.expanduser().resolve()}/evalsvc.db"


@lru_cache
def get_settings() -> Settings:
    return Settings()


def settings_markdown() -> str:
    """The settings reference, as Markdown (the source of ``docs/configuration.md``)."""
    lines = [
        "# Configuration",
        "",
        "evalsvc reads its settings from environment variables with the `EVALSVC_` prefix. "
        "Which scorers run on which steps is not a setting: it lives in `evalsvc.yaml` "
        "(see [concepts](concepts.md)).",
        "",
        "This page is generated from `evalsvc/settings.py` by `python -m evalsvc.settings`.",
        "",
        "| variable | default | description |",
        "| --- | --- | --- |",
    ]
    for name, field in Settings.model_fields.items():
        default = field.default
        shown = "unset" if default is None else f"`{default}`"
        lines.append(f"| `EVALSVC_{name.upper()}` | {shown} | {field.description} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover
    import sys

    sys.stdout.write(settings_markdown())
