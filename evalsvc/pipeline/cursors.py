"""What the live connectors remember between runs: one JSON value per (project, connector, key) in the
``connector_state`` table (a pull's watermark, the executions it has ingested whole).

Write a value with ``None`` to forget the key::

    >>> from evalsvc.pipeline.cursors import load_states, save_states  # doctest: +SKIP
    >>> with write_session(engine) as s:  # doctest: +SKIP
    ...     save_states(session=s, project_id=1, connector="temporal", values={"run:default/r-1": {"closed": True}})
    ...     load_states(session=s, project_id=1, connector="temporal", keys=["run:default/r-1"])
    {'run:default/r-1': {'closed': True}}
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from evalsvc.store.models import utcnow
from evalsvc.store.models_connectors import ConnectorState
from evalsvc.store.sql import chunks

__all__ = ["load_prefix", "load_states", "save_states"]


def load_states(*, session: Session, project_id: int, connector: str, keys: Iterable[str]) -> dict[str, Any]:
    """The stored values of those keys (absent keys are left out)."""
    out: dict[str, Any] = {}
    for part in chunks(list(dict.fromkeys(keys)), 500):
        rows = session.exec(
            select(ConnectorState.key, ConnectorState.value).where(
                ConnectorState.project_id == project_id,
                ConnectorState.connector == connector,
                col(ConnectorState.key).in_(part),
            )
        ).all()
        out.update({key: value for key, value in rows})
    return out


def load_prefix(*, session: Session, project_id: int, connector: str, prefix: str) -> dict[str, Any]:
    """Every stored key that starts with ``prefix``, with its value."""
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    rows = session.exec(
        select(ConnectorState.key, ConnectorState.value).where(
            ConnectorState.project_id == project_id,
            ConnectorState.connector == connector,
            col(ConnectorState.key).like(escaped + "%", escape="\\"),
        )
    ).all()
    return {key: value for key, value in rows}


def save_states(*, session: Session, project_id: int, connector: str, values: Mapping[str, Any]) -> None:
    """Upsert each key's value; a value of ``None`` deletes the key."""
    gone = [k for k, v in values.items() if v is None]
    for part in chunks(gone, 500):
        session.connection().execute(
            sa.delete(ConnectorState).where(
                col(ConnectorState.project_id) == project_id,
                col(ConnectorState.connector) == connector,
                col(ConnectorState.key).in_(part),
            )
        )
    rows = [
        {"project_id": project_id, "connector": connector, "key": k, "value": v, "updated_at": utcnow()}
        for k, v in values.items()
        if v is not None
    ]
    if not rows:
        return
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        pg = pg_insert(ConnectorState)
        stmt: Any = pg.on_conflict_do_update(
            constraint="uq_connector_state", set_={"value": pg.excluded.value, "updated_at": pg.excluded.updated_at}
        )
    else:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        lite = sqlite_insert(ConnectorState)
        stmt = lite.on_conflict_do_update(
            index_elements=["project_id", "connector", "key"],
            set_={"value": lite.excluded.value, "updated_at": lite.excluded.updated_at},
        )
    for rows_part in chunks(rows, 500):
        session.connection().execute(stmt, rows_part)
