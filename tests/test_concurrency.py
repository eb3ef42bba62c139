"""Concurrent writers of the same keys: no error, nothing stored twice, the same final rows."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import sqlalchemy as sa

from evalsvc.pipeline.ingest import ingest_batch
from evalsvc.pipeline.projects import ensure_project
from evalsvc.store.db import session_scope
from evalsvc.store.models import Run, Step, table

from .factories import record


def test_concurrent_batches_of_overlapping_keys(engine: sa.Engine) -> None:
    with session_scope(engine) as session:
        pid = ensure_project(session=session, name="p").id or 0
    records = []
    for r in range(40):
        for s in ("a", "b", "c"):
            records.append(record(f"r{r}", s, status="running", ended_at=None, output=None))
            records.append(record(f"r{r}", s))
    batches = []
    rng = random.Random(3)
    for _ in range(16):
        batch = rng.sample(records, 120)
        batches.append(batch)
    batches.append(records)  # every record at least once

    def go(batch: list[dict[str, object]]) -> int:
        report = ingest_batch(engine=engine, project_id=pid, items=batch, max_batch_records=1000,
                              max_record_bytes=10_000)  # fmt: skip
        return report.count("rejected")

    with ThreadPoolExecutor(max_workers=6) as pool:
        assert sum(pool.map(go, batches)) == 0
    s, r = table(Step), table(Run)
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(r)).scalar_one() == 40
        rows = conn.execute(sa.select(s.c.step_key, s.c.status, s.c.output)).all()
    assert len(rows) == 120
    assert {row.status for row in rows} == {"completed"} and all(row.output == {"total": 12.5} for row in rows)
