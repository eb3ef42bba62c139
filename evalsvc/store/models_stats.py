"""Statistical baselines (fitted, versioned) and drift reports.

A :class:`StatBaseline` is one fitted version of a named baseline: the target it was fitted on,
the window or pinned runs of history it came from, and its fitted state as JSON (samples, bin
edges, label counts, texts; models such as the IsolationForest are refitted from the stored rows
with a fixed seed, never pickled). A new fit is a new version; versions are never changed, except
for the ``pinned`` mark. A :class:`DriftReport` is one statistic of one feature of one drift check.
(The CI gate's ``Baseline``, a pinned set of eval results, is another thing.)
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from .models import BigId, _created, _json, _ts

__all__ = ["DriftReport", "StatBaseline"]


class StatBaseline(SQLModel, table=True):
    __tablename__ = "stat_baseline"
    __table_args__ = (sa.UniqueConstraint("project_id", "name", "version", name="uq_stat_baseline_version"),)
    id: int | None = Field(default=None, primary_key=True)
    project_id: int = Field(foreign_key="project.id", index=True)
    name: str = Field(max_length=128)
    version: int
    target: dict[str, Any] = Field(sa_column=sa.Column(sa.JSON(), nullable=False))
    window: dict[str, Any] = Field(sa_column=sa.Column(sa.JSON(), nullable=False))
    spec: dict[str, Any] = Field(sa_column=sa.Column(sa.JSON(), nullable=False))
    state: dict[str, Any] = Field(sa_column=sa.Column(sa.JSON(), nullable=False))
    digest: str = Field(max_length=64)
    n_steps: int
    pinned: bool = Field(default=False)
    created_at: datetime = _created()


class DriftReport(SQLModel, table=True):
    __tablename__ = "drift_report"
    __table_args__ = (sa.Index("ix_drift_report_project_created", "project_id", "created_at"),)
    id: int | None = Field(default=None, sa_column=sa.Column(BigId, primary_key=True, autoincrement=True))
    project_id: int = Field(foreign_key="project.id")
    check_id: str = Field(max_length=32, index=True)
    baseline_id: int = Field(
        sa_column=sa.Column(sa.Integer(), sa.ForeignKey("stat_baseline.id", ondelete="CASCADE"), nullable=False)
    )
    baseline: str = Field(max_length=128)
    baseline_version: int
    target: dict[str, Any] = Field(sa_column=sa.Column(sa.JSON(), nullable=False))
    window_start: datetime | None = _ts()
    window_end: datetime | None = _ts()
    feature: str = Field(max_length=256)
    kind: str = Field(max_length=16)
    statistic: str = Field(max_length=32)
    value: float | None = None
    p_value: float | None = None
    threshold: float
    drifted: bool
    n_baseline: int
    n_window: int
    example_runs: list[Any] | None = _json()
    detail: dict[str, Any] | None = _json()
    created_at: datetime = _created()
