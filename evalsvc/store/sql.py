"""Small SQL helpers shared by the pipeline: dialect-aware upserts and chunked key look-ups."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session

__all__ = ["chunks", "dialect_insert"]

T = TypeVar("T")


def dialect_insert(session: Session, table: Any) -> Any:
    """An INSERT that supports ``on_conflict_do_*`` on the session's backend."""
    name = session.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(name)  # pragma: no cover


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
