"""The hand-made values of the bulk paths (evalsvc/pipeline/_bulk.py) are what the column types
would have made: SQLite's timestamp text, checked against SQLAlchemy's own insert of the type; and
evalsvc.times.as_utc, the one way the code makes a timestamp aware."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from evalsvc.pipeline._bulk import sqlite_ts
from evalsvc.store.models import UTCDateTime

# UTC itself, another zero offset, and two others
OFFSETS = st.sampled_from(
    [UTC, timezone(timedelta(0), "Z0"), timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1), timezones=OFFSETS)
                | st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1)), min_size=1, max_size=20))  # fmt: skip
def test_sqlite_timestamp_text_is_the_column_types(values: list[datetime]) -> None:
    engine = sa.create_engine("sqlite://")
    t = sa.Table("t", sa.MetaData(), sa.Column("i", sa.Integer, primary_key=True), sa.Column("at", UTCDateTime()))
    t.create(engine)
    with engine.begin() as conn:
        conn.execute(t.insert(), [{"i": i, "at": v} for i, v in enumerate(values)])
        stored = [text for (text,) in conn.exec_driver_sql("SELECT at FROM t ORDER BY i")]
    assert [sqlite_ts(v) for v in values] == stored
    # and again, now that the minutes are known (sqlite_ts keeps their text)
    assert [sqlite_ts(v) for v in values] == stored


def test_as_utc() -> None:
    import doctest

    import evalsvc.times
    from evalsvc.times import as_utc

    assert doctest.testmod(evalsvc.times).failed == 0
    plus2 = timezone(timedelta(hours=2))
    assert as_utc(None) is None
    for value in (datetime(2026, 11, 1, 12, tzinfo=plus2), "2026-11-01T12:00:00+02:00", datetime(2026, 11, 1, 10),
                  "2026-11-01 10:00:00", datetime(2026, 11, 1, 10, tzinfo=timezone(timedelta(0), "Z0"))):  # fmt: skip
        out = as_utc(value)
        assert out == datetime(2026, 11, 1, 10, tzinfo=UTC) and out.tzinfo is UTC, value
