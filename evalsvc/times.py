"""Timestamps as evalsvc means them: aware, in UTC."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import overload

__all__ = ["as_utc"]


@overload
def as_utc(value: datetime | str) -> datetime: ...
@overload
def as_utc(value: None) -> None: ...
@overload
def as_utc(value: datetime | str | None) -> datetime | None: ...


def as_utc(value: datetime | str | None) -> datetime | None:
    """The same instant, aware and in UTC (with ``datetime.UTC`` itself as its zone).

    A naive value means UTC, as the store and the step record have it; text is read as ISO 8601
    (SQLite's aggregates answer text); None stays None.

        >>> as_utc("2026-11-01T12:00:00+02:00")
        datetime.datetime(2026, 11, 1, 10, 0, tzinfo=datetime.timezone.utc)
        >>> as_utc(datetime(2026, 11, 1, 10, 0)) == as_utc("2026-11-01 10:00:00Z")
        True
    """
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value if value.tzinfo is UTC else value.astimezone(UTC)
