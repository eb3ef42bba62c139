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

import ipaddress
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
    # remediation webhooks (issue 5; docs/remediation.md): SSRF checks at connect time
    webhook_allow_networks: list[str] = Field(
        default=[],
        description="Networks (CIDR, e.g. `10.1.2.0/24`) a webhook may reach although they are private; "
        "every other private, loopback or link-local address stays refused. JSON list in the environment.",
    )
    webhook_max_redirects: int = Field(
        default=3, ge=0, le=10, description="Redirects a webhook delivery follows, each hop checked like the URL."
    )

    @field_validator("webhook_allow_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for net in value:
            ipaddress.ip_network(net, strict=False)  # a ValueError names the bad entry
        return value

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
    # LLM judge budgets (issue 4, point 4; docs/judges.md); per-evaluator budgets are in evalsvc.yaml
    judge_project_calls_per_day: int | None = Field(
        default=None, ge=0, description="Most LLM judge calls all evaluators of one project make per UTC day; "
        "past it results are skipped as `over budget`. Unset: no project limit.",
    )  # fmt: skip
    judge_project_usd_per_day: float | None = Field(
        default=None, ge=0, description="Most dollars (litellm's cost, or the judge's configured per-token price) "
        "the LLM judges of one project spend per UTC day; unset: no limit.",
    )  # fmt: skip
    host: str = Field(default="127.0.0.1", description="Address `evalsvc serve` listens on.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port `evalsvc serve` listens on.")
    # ingest throughput: `evalsvc serve --workers` (issue 3, Done when; bench/README.md)
    serve_workers: int = Field(
        default=1, ge=1, le=64, description="HTTP worker processes of `evalsvc serve` (uvicorn workers on one "
        "port); each runs its own in-process worker, whose claims are in the store.",
    )  # fmt: skip
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Log level of the service and workers."
    )
    log_format: Literal["json", "text"] = Field(
        default="json", description="Log format of `serve` and `worker` (the CLI always logs text)."
    )
    # Temporal connector, `evalsvc pull temporal` (issue 3, point 2; docs/connectors/temporal.md)
    temporal_address: str = Field(
        default="127.0.0.1:7233", description="Temporal frontend (HOST:PORT) that `evalsvc pull temporal` lists and "
        "fetches workflow histories from, unless `--address` is given.",
    )  # fmt: skip
    temporal_namespace: str = Field(
        default="default", min_length=1, max_length=255,
        description="Temporal namespace of `evalsvc pull temporal`, unless `--namespace` is given.",
    )  # fmt: skip
    temporal_pull_margin_seconds: float = Field(
        default=300, ge=0, description="How far before the newest close time it has seen a pull lists closed "
        "workflow executions again, to cover the lag of Temporal's visibility store (those already ingested are "
        "skipped, not fetched).",
    )  # fmt: skip
    # Temporal remediation and in-band verdicts (issue 5, points 3 and 8; docs/remediation-temporal.md)
    temporal_rpc_timeout_seconds: float = Field(
        default=10, gt=0, description="Timeout of each call the Temporal adapter makes (signal, reset, cancel, "
        "terminate); a timed-out call is retried with the action's backoff and the same request id.",
    )  # fmt: skip
    verdict_max_wait_seconds: float = Field(
        default=60, ge=0, description="Longest `wait` that `GET /v1/runs/{run_key}/steps/{step_key}/verdict` "
        "holds a request open for a step's verdict (a larger `wait` is cut to this).",
    )  # fmt: skip
    verdict_poll_seconds: float = Field(
        default=0.1, gt=0, le=5, description="How often a waiting verdict request looks at the store again.",
    )  # fmt: skip
    # Celery connector, `evalsvc listen celery` (issue 3, point 4; docs/connectors/celery.md)
    celery_events_broker_url: str | None = Field(
        default=None, description="Broker of the Celery app whose task events `evalsvc listen celery` follows, "
        "e.g. `redis://127.0.0.1:6379/0`, unless `--broker` is given (not evalsvc's own `EVALSVC_BROKER_URL`).",
    )  # fmt: skip
    celery_listen_batch: int = Field(
        default=500, ge=1, le=100_000, description="Most Celery events `evalsvc listen celery` folds and ingests "
        "in one batch, unless `--batch` is given.",
    )  # fmt: skip
    celery_listen_flush_seconds: float = Field(
        default=1.0, gt=0, description="`evalsvc listen celery` ingests what it has at least this often, unless "
        "`--flush-seconds` is given.",
    )  # fmt: skip
    celery_listen_max_tasks: int = Field(
        default=100_000, ge=1, description="Task ids whose run, parent, name and attempts `evalsvc listen celery` "
        "remembers (least recently seen forgotten first; the store is asked about the others).",
    )  # fmt: skip
    # Inngest signed webhook, POST /v1/webhooks/inngest (issue 3, point 3; docs/connectors/inngest.md)
    inngest_signing_key: SecretStr | None = Field(
        default=None,
        description="Inngest signing key (`signkey-<env>-<hex>`) that `X-Inngest-Signature` of "
        "`POST /v1/webhooks/inngest` must verify against. Unset: that endpoint refuses every request.",
    )
    inngest_signing_key_fallback: SecretStr | None = Field(
        default=None,
        description="Second accepted Inngest signing key, for zero-downtime rotation (Inngest's "
        "`INNGEST_SIGNING_KEY_FALLBACK`).",
    )
    inngest_project: str = Field(
        default="default",
        min_length=1,
        max_length=128,
        description="Project that Inngest webhook events are stored in (created on first use). One "
        "signing key is one Inngest environment, so one project.",
    )
    # Celery and Inngest remediation adapters (issue 5, points 4 and 5; docs/remediation-celery.md,
    # docs/remediation-inngest.md)
    celery_actions_broker_url: str | None = Field(
        default=None,
        description="Broker the Celery adapter re-sends, pauses and revokes tasks through. Unset: the broker "
        "recorded on the run by `evalsvc listen celery` (`celery.broker`), unless its password was masked.",
    )
    celery_control_timeout_seconds: float = Field(
        default=5.0, gt=0, le=300, description="How long the Celery adapter waits for workers to confirm a "
        "pause or resume (`cancel_consumer` / `add_consumer`); no reply at all fails the attempt (retried).",
    )  # fmt: skip
    inngest_event_key: SecretStr | None = Field(
        default=None,
        description="Inngest event key the adapter sends `evalsvc/eval.failed` and `evalsvc/review.decided` "
        "with. Unset: Inngest actions fail with that reason. The REST API (cancel) uses `EVALSVC_INNGEST_SIGNING_KEY`.",
    )
    inngest_event_api_url: str = Field(
        default="https://inn.gs", description="Base URL of Inngest's event API (`POST {base}/e/{event key}`); the "
        "Dev Server's is `http://127.0.0.1:8288`.",
    )  # fmt: skip
    inngest_api_url: str = Field(
        default="https://api.inngest.com", description="Base URL of Inngest's REST API (`DELETE {base}/v1/runs/{run "
        "id}` cancels a run); the Dev Server's is `http://127.0.0.1:8288`.",
    )  # fmt: skip
    inngest_timeout_seconds: float = Field(
        default=10.0, gt=0, le=300, description="Timeout of one request to Inngest's event or REST API."
    )
    # OpenTelemetry connector, POST /v1/traces (issue 3, point 1; docs/connectors/otlp.md)
    otlp_group_by: str = Field(
        default="", max_length=2000, description="Comma-separated span or resource attributes whose value is the "
        "run key of a span (the first present wins, span before resource), e.g. `workflow.run_id`; spans "
        "without any of them form one run per trace id.",
    )  # fmt: skip
    otlp_max_attributes: int = Field(
        default=128, ge=1, description="Most span attributes kept in a step's `attributes` (the rest are counted)."
    )
    otlp_max_attribute_chars: int = Field(
        default=4096, ge=16, description="Longer attribute values kept in `attributes` are cut to this many "
        "characters (content attributes become input and output, uncut).",
    )  # fmt: skip
    otlp_max_inflight_requests: int = Field(
        default=8, ge=1, description="`POST /v1/traces` requests in progress at once; one more is answered 503 "
        "with `Retry-After`, which OTLP exporters retry.",
    )  # fmt: skip
    # statistical baselines and drift checks (issue 4, point 2; docs/drift.md)
    drift_alpha: float = Field(
        default=0.01, gt=0, lt=1, description="Significance level of the drift tests (KS, Wasserstein, chi-square, "
        "TF-IDF, out-of-vocabulary): a feature drifted when a p-value is under it.",
    )  # fmt: skip
    drift_psi_threshold: float = Field(
        default=0.2, gt=0, description="PSI at or above which a feature is reported as drifted."
    )
    drift_permutations: int = Field(
        default=200, ge=19, le=100_000, description="Permutations behind the Wasserstein and TF-IDF p-values."
    )
    drift_max_sample: int = Field(
        default=5000, ge=100, description="Most steps a baseline keeps, and a drift check reads, per window "
        "(a larger history is sampled deterministically).",
    )  # fmt: skip
    drift_window_hours: float = Field(
        default=24.0, gt=0, description="Window of `evalsvc drift check` when no `--since` is given: the last hours."
    )
    drift_seed: int = Field(default=0, ge=0, description="Seed of the baseline samples and fitted models.")
    # SQL and pandas over the eval history: the DuckDB replica (issue 7, points 1-3; docs/querying.md)
    query_max_rows: int = Field(
        default=10_000, ge=1, description="Most rows `evalsvc query` and `POST /v1/query` return (`--limit` may "
        "ask for fewer; the answer says when rows were cut).",
    )  # fmt: skip
    query_timeout_seconds: float = Field(
        default=30.0, gt=0, description="A query still running after this long is interrupted (`--timeout` may ask "
        "for less).",
    )  # fmt: skip
    query_memory_limit: str = Field(
        default="1GB", pattern=r"^\d+(\.\d+)?\s*[KMGT]i?B$", description="DuckDB memory limit of one query."
    )
    analytics_max_lag_seconds: float = Field(
        default=1.0, ge=0, description="A query refreshes the project's DuckDB replica first when its last "
        "refresh is older than this (0: always).",
    )  # fmt: skip
    analytics_refresh_seconds: float = Field(
        default=2.0, ge=0, description="`evalsvc serve` refreshes the replicas of recently queried projects in the "
        "background this often (0: only before queries).",
    )  # fmt: skip
    analytics_commit_slack_seconds: float = Field(
        default=5.0, ge=0, description="Each refresh reads again the rows of the last seconds (by id and "
        "`updated_at`), so that a write whose transaction committed late is not missed.",
    )  # fmt: skip
    analytics_reconcile_seconds: float = Field(
        default=600.0, gt=0, description="How often a refresh also compares row counts with the store and copies "
        "a table again when they differ (deleted rows, missed writes).",
    )  # fmt: skip
    # the web UI and GET /metrics (issue 7, points 4 and 5; docs/ui.md, docs/metrics.md)
    ui_session_hours: float = Field(
        default=12.0, gt=0, description="How long a web UI sign-in (an HttpOnly, SameSite=Strict cookie) lasts."
    )
    metrics_token: SecretStr | None = Field(
        default=None, description="Bearer token that `GET /metrics` requires. Unset: `/metrics` is open to whoever "
        "reaches the port (it shows counts per project name, never step data).",
    )  # fmt: skip
    # the CI gate: `evalsvc gate` and `evalsvc baseline` (issue 6; docs/ci.md)
    gate_fail_on_inconclusive: bool = Field(
        default=True, description="`evalsvc gate` exits 2 (failing the build) when the verdict is INCONCLUSIVE "
        "(too few items to show non-inferiority); false: it exits 0 and says the inconclusive verdict was allowed.",
    )  # fmt: skip
    gate_run_url: str | None = Field(
        default=None, description="Link of a run in the gate's Markdown report, with `{run_key}` in it, e.g. "
        "`https://evalsvc.example.com/ui/runs/{run_key}`. Unset: run keys are shown without links.",
    )  # fmt: skip

    @field_validator("metrics_token", mode="before")
    @classmethod
    def _empty_metrics_token_is_unset(cls, value: object) -> object:
        return None if value == "" else value

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
