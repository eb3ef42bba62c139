"""Scoring state: the LLM judge's verdict cache, budget counters and sampling counters.

- :class:`VerdictCache`: one verdict per (project, key), the key a hash of (judge model, template
  version, rendered prompt); a hit costs nothing. Errors are never stored here.
- :class:`BudgetUsage`: judge calls and dollars per (project, evaluator or ``*``, UTC day), and the
  results skipped as over budget.
- :class:`SampleCounter`: steps seen per (project, evaluator, key, day), the counts behind the
  "first N steps of a new model" and "at least N per stratum per day" sampling rules.

>>> VerdictCache.__tablename__, BudgetUsage.__tablename__, SampleCounter.__tablename__
('verdict_cache', 'budget_usage', 'sample_counter')
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from .models import _created, _json

__all__ = ["BudgetUsage", "SampleCounter", "VerdictCache"]


class VerdictCache(SQLModel, table=True):
    __tablename__ = "verdict_cache"
    __table_args__ = (sa.UniqueConstraint("project_id", "key", name="uq_verdict_cache"),)
    id: int | None = Field(default=None, primary_key=True)
    project_id: int = Field(foreign_key="project.id", index=True)
    key: str = Field(max_length=64)
    model: str = Field(max_length=256)
    template_version: str = Field(max_length=64)
    verdict: dict[str, Any] | None = _json()
    cost_usd: float = Field(default=0.0)
    prompt_tokens: int = Field(default=0)
    completion_tokens: int = Field(default=0)
    created_at: datetime = _created()


class BudgetUsage(SQLModel, table=True):
    __tablename__ = "budget_usage"
    __table_args__ = (sa.UniqueConstraint("project_id", "evaluator", "day", name="uq_budget_usage"),)
    id: int | None = Field(default=None, primary_key=True)
    project_id: int = Field(foreign_key="project.id", index=True)
    evaluator: str = Field(max_length=128)  # '*': the project's judges together
    day: str = Field(max_length=10)  # UTC, YYYY-MM-DD
    calls: int = Field(default=0)
    dollars: float = Field(default=0.0)
    over_budget: int = Field(default=0)
    updated_at: datetime = _created()


class SampleCounter(SQLModel, table=True):
    __tablename__ = "sample_counter"
    __table_args__ = (sa.UniqueConstraint("project_id", "evaluator_id", "key", "day", name="uq_sample_counter"),)
    id: int | None = Field(default=None, primary_key=True)
    project_id: int = Field(foreign_key="project.id", index=True)
    evaluator_id: int = Field(foreign_key="evaluator.id")
    key: str = Field(max_length=512)  # "model:<model>" or "stratum:<name>|<model>"
    day: str = Field(max_length=10)  # "" for all-time counts
    seen: int = Field(default=0)
