"""Plain schemas shared by connectors, scorers and the service (no database here).

A connector turns a payload into :class:`StepRecord` s; a scorer turns a :class:`StepPublic`
into a :class:`Score`; ``evalsvc.yaml`` holds :class:`EvaluatorSpec` s::

    >>> from evalsvc.schemas import StepRecord
    >>> rec = StepRecord.model_validate({"source": "json", "run_key": "r1", "step_key": "extract",
    ...                                   "status": "completed", "output": {"total": 12.5}})
    >>> rec.attempt, rec.status.value
    (1, 'completed')
"""

from __future__ import annotations

import enum
import hashlib
import re
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

__all__ = [
    "RUN_STEP_KEY",
    "TERMINAL_STEP_STATUSES",
    "ActionKind",
    "ActionStatus",
    "Budget",
    "EvalStatus",
    "EvaluatorSpec",
    "OnFail",
    "PauseAfter",
    "RunStatus",
    "Sample",
    "SampleCondition",
    "Score",
    "StepError",
    "StepPublic",
    "StepRecord",
    "StepStatus",
    "Target",
    "step_status_rank",
]


class StepStatus(enum.StrEnum):
    scheduled = "scheduled"
    running = "running"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"
    timed_out = "timed_out"


TERMINAL_STEP_STATUSES = frozenset(
    {StepStatus.completed, StepStatus.failed, StepStatus.cancelled, StepStatus.timed_out}
)
_RANK = {StepStatus.scheduled: 0, StepStatus.running: 1}


def step_status_rank(status: StepStatus | str) -> int:
    """How far a step has progressed: scheduled 0, running 1, any end state 2."""
    return _RANK.get(StepStatus(status), 2)


class RunStatus(enum.StrEnum):
    running = "running"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"
    paused = "paused"


class EvalStatus(enum.StrEnum):
    pending = "pending"
    completed = "completed"
    error = "error"
    skipped = "skipped"
    cancelled = "cancelled"


class ActionKind(enum.StrEnum):
    retry = "retry"
    pause = "pause"
    resume = "resume"
    cancel = "cancel"
    review = "review"
    webhook = "webhook"


class ActionStatus(enum.StrEnum):
    pending = "pending"
    dispatched = "dispatched"  # claimed by a worker, side effect in flight
    succeeded = "succeeded"
    failed = "failed"
    skipped = "skipped"  # planned but not sent: a policy limit (e.g. a retry past max_retries)


class StepError(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str | None = None
    message: str = ""
    stack: str | None = None


_KEY = Field(min_length=1, max_length=256)
MAX_TOKENS = 2**31 - 1


class StepRecord(BaseModel):
    """One attempt of one step, as a connector reports it (DESIGN.md section 3).

    Records for the same ``(source, run_key, step_key, attempt)`` merge: a step's start and end may
    arrive as two records, in either order, and converge to the same stored row.
    """

    model_config = ConfigDict(extra="forbid")

    source: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    run_key: str = _KEY
    step_key: str = _KEY
    attempt: int = Field(default=1, ge=1, le=10_000)
    name: str | None = Field(default=None, max_length=256, description="Defaults to step_key.")
    kind: str = Field(default="step", min_length=1, max_length=64)
    status: StepStatus | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    input: Any = None
    output: Any = None
    expected: Any = None
    error: StepError | None = None
    parent_step_key: str | None = Field(default=None, max_length=256)
    model: str | None = Field(default=None, max_length=256)
    # the columns are 32-bit integers on PostgreSQL
    input_tokens: int | None = Field(default=None, ge=0, le=MAX_TOKENS)
    output_tokens: int | None = Field(default=None, ge=0, le=MAX_TOKENS)
    cost_usd: float | None = Field(default=None, ge=0)
    attributes: dict[str, Any] = Field(default_factory=dict)
    # run-level fields, carried by any record of the run
    workflow: str | None = Field(default=None, max_length=256)
    run_status: RunStatus | None = None
    run_attributes: dict[str, Any] = Field(default_factory=dict)

    @field_validator("step_key")
    @classmethod
    def _not_the_run_step(cls, value: str) -> str:
        if value == RUN_STEP_KEY:
            raise ValueError(f"{RUN_STEP_KEY} is reserved for the run step of run-level evaluators")
        return value

    @field_validator("error", mode="before")
    @classmethod
    def _error_from_string(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"message": value}
        return value

    @field_validator("started_at", "ended_at")
    @classmethod
    def _aware(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        started = info.data.get("started_at")
        if info.field_name == "ended_at" and value is not None and started is not None and value < started:
            raise ValueError(f"is before started_at ({started.isoformat()})")
        return value

    @model_validator(mode="after")
    def _fill(self) -> StepRecord:
        if self.status is None:
            if self.error is not None:
                self.status = StepStatus.failed
            elif self.ended_at is not None or self.output is not None:
                self.status = StepStatus.completed
            else:
                self.status = StepStatus.running
        return self


class StepPublic(BaseModel):
    """A stored step as scorers and the API see it."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    run_id: int
    source: str
    run_key: str
    workflow: str | None = None
    step_key: str
    attempt: int
    name: str
    kind: str
    status: StepStatus
    started_at: datetime | None = None
    ended_at: datetime | None = None
    latency_ms: float | None = None
    input: Any = None
    output: Any = None
    expected: Any = None
    error: dict[str, Any] | None = None
    parent_step_key: str | None = None
    model: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)


class Score(BaseModel, frozen=True):
    """What a scorer returns: a value in [0, 1] (None when the scorer has nothing to say)."""

    value: float | None = Field(default=None, ge=0, le=1)
    passed: bool | None = None
    label: str | None = None
    explanation: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


# ---- evaluators as code (evalsvc.yaml) ----------------------------------------------------------

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,127}$")


class Target(BaseModel):
    """Which steps an evaluator looks at. Every field is optional; strings are globs."""

    model_config = ConfigDict(extra="forbid")
    source: str | None = None
    workflow: str | None = None
    step: str | None = None
    kind: str | None = None
    status: str | None = None
    attributes: dict[str, str] = Field(default_factory=dict)
    # run-level evaluators (issue 3 point 6): ``run`` judges each final run through its run step
    # (RUN_STEP_KEY, evalsvc.pipeline.run_evals), never a workflow's own steps
    level: Literal["step", "run"] = "step"


RUN_STEP_KEY = "__run__"
"""The step key of the synthetic step that stands for a whole run (run-level evaluators)."""


SampleCondition = Literal["step_failed", "rule_failed", "new_model"]


class Sample(BaseModel):
    """Which matching steps an evaluator judges (DESIGN.md section 7; docs/judges.md).

    ``rate`` is a deterministic draw per step; ``always`` adds steps whatever the draw (the step
    failed, a rule evaluator failed it, it is one of the first ``new_model_steps`` of a model);
    ``stratify`` judges at least ``min_per_stratum`` steps a day of each stratum (step name and/or
    model), each verdict weighted so that the estimated failure rate stays unbiased."""

    model_config = ConfigDict(extra="forbid")
    rate: float = Field(default=1.0, ge=0, le=1)
    always: list[SampleCondition] = Field(default_factory=list)
    new_model_steps: int = Field(default=20, ge=1, le=1_000_000)
    stratify: list[Literal["name", "model"]] = Field(default_factory=list)
    min_per_stratum: int = Field(default=20, ge=0, le=1_000_000)

    def is_plain(self) -> bool:
        """Only a rate: the decision is the draw alone, nothing is weighted or counted."""
        return not self.always and not self.stratify


class Budget(BaseModel):
    """Daily (UTC) limits of a judge evaluator; past them its results are skipped "over budget"
    and, with ``fallback``, the named evaluator judges the step instead."""

    model_config = ConfigDict(extra="forbid")
    calls_per_day: int | None = Field(default=None, ge=0)
    usd_per_day: float | None = Field(default=None, ge=0)
    fallback: str | None = Field(default=None, max_length=128)


class PauseAfter(BaseModel):
    """Widen ``on_fail``: pause the workflow once the evaluator failed ``failures`` steps of the same
    workflow type within ``minutes`` (docs/remediation.md)."""

    model_config = ConfigDict(extra="forbid")
    failures: int = Field(ge=1, le=1_000_000)
    minutes: float = Field(gt=0, le=60 * 24 * 31)


class OnFail(BaseModel):
    """What to do when the evaluator fails a step (policies: docs/remediation.md)."""

    model_config = ConfigDict(extra="allow")
    action: Literal["none", "retry", "pause", "review", "webhook"] = "none"
    url: str | None = None
    max_attempts: int | None = Field(default=None, ge=1)
    assignee: str | None = None
    # remediation policies (issue 5): retry limits and delay, the pause widening, the review queue
    max_retries: int | None = Field(default=None, ge=0, le=1000, description="Retries per step (attempts - 1).")
    backoff_seconds: float = Field(default=0.0, ge=0, le=86_400, description="Delay before a retry is sent.")
    backoff_multiplier: float = Field(default=1.0, ge=1, le=10, description="Delay factor per further attempt.")
    pause_after: PauseAfter | None = None
    queue: str | None = Field(default=None, max_length=128, description="Review queue of the review item.")

    @model_validator(mode="after")
    def _check(self) -> OnFail:
        if self.action == "webhook" and not self.url:
            raise ValueError("on_fail.url is required when on_fail.action is webhook")
        return self

    @field_validator("max_retries", "backoff_seconds", "backoff_multiplier")
    @classmethod
    def _retry_only(cls, value: Any, info: ValidationInfo) -> Any:
        default = cls.model_fields[info.field_name or ""].default
        if value != default and info.data.get("action") != "retry":
            raise ValueError(f"{info.field_name} applies only to on_fail.action retry")
        return value

    @field_validator("queue")
    @classmethod
    def _review_only(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("action") != "review":
            raise ValueError("queue applies only to on_fail.action review")
        return value

    def retry_limit(self) -> int | None:
        """The highest step attempt a retry may lead to (None: no limit of the policy's own)."""
        limits = [x for x in (self.max_attempts, None if self.max_retries is None else self.max_retries + 1) if x]
        return min(limits) if limits else None

    def retry_delay(self, attempt: int) -> float:
        """Seconds to wait before retrying a step whose attempt ``attempt`` failed."""
        return float(min(86_400.0, self.backoff_seconds * self.backoff_multiplier ** max(0, attempt - 1)))


class EvaluatorSpec(BaseModel):
    """One evaluator of ``evalsvc.yaml``. Its version is a hash of this definition."""

    model_config = ConfigDict(extra="forbid")
    name: str
    scorer: str
    params: dict[str, Any] = Field(default_factory=dict)
    target: Target = Field(default_factory=Target)
    sample: Sample = Field(default_factory=Sample)
    threshold: float = Field(default=0.5, ge=0, le=1)
    on_fail: OnFail = Field(default_factory=OnFail)
    budget: Budget = Field(default_factory=Budget)
    description: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("must start with a letter and use letters, digits, '_', '.', '-'")
        return value

    @model_validator(mode="after")
    def _fallback_is_another(self) -> EvaluatorSpec:
        if self.budget.fallback == self.name:
            raise ValueError("budget.fallback must name another evaluator")
        if self.target.level == "run" and self.on_fail.action == "retry":
            raise ValueError("on_fail retry applies to steps, not to a run-level evaluator (target.level: run)")
        return self

    @field_validator("on_fail", mode="before")
    @classmethod
    def _on_fail_shorthand(cls, value: Any) -> Any:
        if value is None:
            return {"action": "none"}
        if isinstance(value, str):
            return {"action": value}
        return value

    def version(self) -> str:
        """Hash of the definition (description excluded): a changed definition is a new version."""
        data = self.model_dump(mode="json", exclude={"description"})
        # options added later leave the versions of definitions that do not use them unchanged
        if self.budget == Budget():
            data.pop("budget")
        if self.target.level == "step":
            data["target"].pop("level")
        for key in ("always", "new_model_steps", "stratify", "min_per_stratum"):
            if data["sample"][key] == Sample.model_fields[key].get_default(call_default_factory=True):
                data["sample"].pop(key)
        for key in ("max_retries", "backoff_seconds", "backoff_multiplier", "pause_after", "queue"):
            if data["on_fail"].get(key) == OnFail.model_fields[key].get_default():
                data["on_fail"].pop(key, None)
        digest = hashlib.sha256(orjson.dumps(data, option=orjson.OPT_SORT_KEYS)).hexdigest()
        return digest[:12]
