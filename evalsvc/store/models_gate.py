"""The CI gate's pinned baselines: named sets of eval results a candidate is compared with.

A :class:`GateBaseline` is one promoted version of a named baseline (``evalsvc baseline promote``
adds a version; the gate compares with the newest): where it came from (a candidate file, or
production results selected by evaluator, step and time window) and the evaluator versions it was
scored with. A :class:`GateBaselineItem` is one verdict of one evaluator on one dataset item (item
id and step name), with what re-scoring it needs when the evaluator's version changed: the step
record itself (baselines from files) or a reference to the stored step (baselines from production).
(The drift checks' ``StatBaseline`` is another thing.)
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from .models import BigId, _created, _json

__all__ = ["GateBaseline", "GateBaselineItem"]


class GateBaseline(SQLModel, table=True):
    __tablename__ = "gate_baseline"
    __table_args__ = (sa.UniqueConstraint("project_id", "name", "version", name="uq_gate_baseline_version"),)
    id: int | None = Field(default=None, primary_key=True)
    project_id: int = Field(foreign_key="project.id", index=True)
    name: str = Field(max_length=128)
    version: int
    source: str = Field(max_length=16)  # file | production
    description: dict[str, Any] = Field(sa_column=sa.Column(sa.JSON(), nullable=False))
    evaluators: dict[str, Any] = Field(sa_column=sa.Column(sa.JSON(), nullable=False))  # name -> version
    n_items: int
    created_at: datetime = _created()


class GateBaselineItem(SQLModel, table=True):
    __tablename__ = "gate_baseline_item"
    __table_args__ = (
        sa.UniqueConstraint("baseline_id", "evaluator", "item_id", "step_name", name="uq_gate_baseline_item"),
    )
    id: int | None = Field(default=None, sa_column=sa.Column(BigId, primary_key=True, autoincrement=True))
    baseline_id: int = Field(
        sa_column=sa.Column(sa.Integer(), sa.ForeignKey("gate_baseline.id", ondelete="CASCADE"), nullable=False)
    )
    item_id: str = Field(max_length=256)
    step_name: str = Field(max_length=256)
    evaluator: str = Field(max_length=128)
    evaluator_version: str = Field(max_length=32)
    passed: bool | None = None
    value: float | None = None
    output_hash: str | None = Field(default=None, max_length=64)
    run_key: str | None = Field(default=None, max_length=256)
    step_key: str | None = Field(default=None, max_length=256)
    step_id: int | None = Field(default=None, sa_column=sa.Column(BigId, nullable=True))  # production step
    record: dict[str, Any] | None = _json()  # the step record (baselines from files), for re-scoring
