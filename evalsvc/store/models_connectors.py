"""What the live connectors remember between runs (a pull's cursor, the histories already seen)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from .models import _created, _json

__all__ = ["ConnectorState"]


class ConnectorState(SQLModel, table=True):
    """One value per (project, connector, key): for example the Temporal pull's watermark of an
    address and namespace, or the workflow executions it has ingested whole."""

    __tablename__ = "connector_state"
    __table_args__ = (sa.UniqueConstraint("project_id", "connector", "key", name="uq_connector_state"),)
    id: int | None = Field(default=None, primary_key=True)
    project_id: int = Field(foreign_key="project.id", index=True)
    connector: str = Field(max_length=64)
    key: str = Field(max_length=512)
    value: dict[str, Any] | None = _json()
    updated_at: datetime = _created()
