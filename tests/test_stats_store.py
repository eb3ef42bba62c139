"""Baselines and drift reports in the store, on SQLite and PostgreSQL: fitted from a target's
history (a window or pinned runs), versioned, pinned, loaded; drift checks store their reports."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from evalsvc.errors import InvalidInput, NotFound
from evalsvc.pipeline.baselines import (
    BaselineTarget,
    HistoryWindow,
    fit_baseline,
    list_baselines,
    pin_baseline,
    resolve_baseline,
)
from evalsvc.pipeline.drift import check_all, check_drift, list_reports
from evalsvc.pipeline.ingest import ingest_batch
from evalsvc.pipeline.projects import ensure_project
from evalsvc.settings import Settings
from evalsvc.store.db import session_scope
from evalsvc.store.models_stats import DriftReport, StatBaseline
from scorers.stats import ProfileSpec

from .factories import record

DAY1 = datetime(2026, 11, 1, tzinfo=UTC)
WORDS = ["invoice", "total", "amount", "due", "payment", "vendor", "account", "balance", "receipt", "order"]
NEW_WORDS = ["refund", "chargeback", "dispute", "fraud", "complaint", "cancel"]


def history(
    n: int,
    *,
    start: datetime,
    seed: int,
    prefix: str,
    model: str = "m-v1",
    step: str = "classify",
    latency: float = 1200.0,
    mix: tuple[float, float, float] = (0.6, 0.3, 0.1),
    new_words: float = 0.0,
) -> list[dict[str, Any]]:
    """Finished steps of a synthetic classifier, one a minute from ``start`` (one run each)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        t0 = start + timedelta(minutes=i)
        ms = float(rng.lognormal(math.log(latency), 0.25))
        words = [str(rng.choice(NEW_WORDS if rng.random() < new_words else WORDS)) for _ in range(rng.integers(5, 15))]
        tokens = int(rng.normal(500, 50))
        label = str(rng.choice(["invoice", "receipt", "other"], p=mix))
        fields = {"model": model, "started_at": t0.isoformat(),
                  "ended_at": (t0 + timedelta(milliseconds=ms)).isoformat(), "input_tokens": tokens,
                  "output_tokens": len(words) * 2, "cost_usd": round(tokens * 2e-6, 8),
                  "output": {"label": label, "reply": " ".join(words)}}  # fmt: skip
        out.append(record(f"{prefix}{i:05d}", step, **fields))
    return out


def _store(settings: Settings, records: list[dict[str, Any]], project: str = "default") -> tuple[sa.Engine, int]:
    from evalsvc.store.db import get_engine, migrate

    engine = get_engine(settings.resolved_database_url())
    migrate(engine)
    with session_scope(engine) as session:
        pid = ensure_project(session=session, name=project).id or 0
    for i in range(0, len(records), 500):
        report = ingest_batch(engine=engine, project_id=pid, items=records[i : i + 500], max_batch_records=1000,
                              max_record_bytes=100_000)  # fmt: skip
        assert report.count("rejected") == 0
    return engine, pid


SPEC = ProfileSpec(numeric=["latency_ms", "tokens"], categorical=["output.label"], text=["output.reply"])


def test_fits_are_versions_and_a_pin_stays_current(settings: Settings) -> None:
    engine, pid = _store(settings, history(300, start=DAY1, seed=1, prefix="a"))
    fit = {"engine": engine, "project_id": pid, "name": "clf", "target": BaselineTarget(step="classify"),
           "window": HistoryWindow(), "spec": SPEC, "settings": settings}  # fmt: skip
    v1 = fit_baseline(**fit)
    v2 = fit_baseline(**fit)
    assert (v1.version, v2.version) == (1, 2) and v2.current and v1.digest == v2.digest  # same history, same fit
    with session_scope(engine) as session:
        assert resolve_baseline(session=session, project_id=pid, name="clf").version == 2
        pin_baseline(session=session, project_id=pid, name="clf", version=1)
    v3 = fit_baseline(**fit)
    with session_scope(engine) as session:
        rows = {b.version: b for b in list_baselines(session=session, project_id=pid)}
        assert rows[1].current and rows[1].pinned and not rows[3].current  # a new fit does not move the pin
        assert resolve_baseline(session=session, project_id=pid, name="clf").version == 1
        assert resolve_baseline(session=session, project_id=pid, name="clf", version=3).id == v3.id
        pin_baseline(session=session, project_id=pid, name="clf", version=None)
        assert resolve_baseline(session=session, project_id=pid, name="clf").version == 3
        with pytest.raises(NotFound, match="no version 9 of baseline 'clf'"):
            resolve_baseline(session=session, project_id=pid, name="clf", version=9)
        with pytest.raises(NotFound, match="no baseline named 'nope'; baselines: clf"):
            resolve_baseline(session=session, project_id=pid, name="nope")
    pinned = fit_baseline(**fit, pin=True)
    with session_scope(engine) as session:
        assert resolve_baseline(session=session, project_id=pid, name="clf").version == pinned.version == 4
        # another project sees none of them
        other = ensure_project(session=session, name="other").id or 0
        assert list_baselines(session=session, project_id=other) == []


def test_history_is_a_window_or_pinned_runs(settings: Settings) -> None:
    records = history(100, start=DAY1, seed=2, prefix="a") + history(50, start=DAY1 + timedelta(days=1), seed=3,
                                                                      prefix="b", model="m-v2")  # fmt: skip
    engine, pid = _store(settings, records)
    common = {"engine": engine, "project_id": pid, "spec": SPEC, "settings": settings}
    day2 = HistoryWindow(since=DAY1 + timedelta(days=1), until=DAY1 + timedelta(days=2))
    assert fit_baseline(name="d2", target=BaselineTarget(), window=day2, **common).n_steps == 50
    assert fit_baseline(name="v1", target=BaselineTarget(model="m-v1"), window=HistoryWindow(), **common).n_steps == 100
    assert fit_baseline(name="glob", target=BaselineTarget(model="m-v*", step="cl*"), window=HistoryWindow(),
                        **common).n_steps == 150  # fmt: skip
    runs = HistoryWindow(runs=["a00001", "a00002", "b00003"])
    assert fit_baseline(name="pinned", target=BaselineTarget(), window=runs, **common).n_steps == 3
    with pytest.raises(InvalidInput, match="no finished steps"):
        fit_baseline(name="none", target=BaselineTarget(step="missing"), window=HistoryWindow(), **common)
    # a large history is sampled, deterministically
    small = settings.model_copy(update={"drift_max_sample": 100})
    a = fit_baseline(name="s", target=BaselineTarget(), window=HistoryWindow(), spec=SPEC, settings=small,
                     engine=engine, project_id=pid)  # fmt: skip
    b = fit_baseline(name="s", target=BaselineTarget(), window=HistoryWindow(), spec=SPEC, settings=small,
                     engine=engine, project_id=pid)  # fmt: skip
    assert a.n_steps == 150 and a.digest == b.digest
    with session_scope(engine) as session:
        state = resolve_baseline(session=session, project_id=pid, name="s").state
    assert state["n_sample"] == 100 and len(state["numeric"]["latency_ms"]["sample"]) == 100


def test_drift_check_detects_a_new_model_version_and_stores_reports(settings: Settings) -> None:
    base = history(400, start=DAY1, seed=4, prefix="a")
    same = history(200, start=DAY1 + timedelta(days=1), seed=5, prefix="b")  # model v1, drawn alike
    moved = history(200, start=DAY1 + timedelta(days=1), seed=6, prefix="c", model="m-v2", latency=1500,
                    mix=(0.4, 0.3, 0.3), new_words=0.3)  # fmt: skip
    engine, pid = _store(settings, base + same + moved)
    fit_baseline(engine=engine, project_id=pid, name="clf", target=BaselineTarget(step="classify", model="m-v1"),
                 window=HistoryWindow(until=DAY1 + timedelta(days=1)), spec=SPEC, settings=settings)  # fmt: skip
    day2 = HistoryWindow(since=DAY1 + timedelta(days=1), until=DAY1 + timedelta(days=2))

    check = check_drift(engine=engine, project_id=pid, name="clf", settings=settings, window=day2,
                        overrides={"model": "m-v2"})  # fmt: skip
    found = {(r.feature, r.statistic): r for r in check.reports}
    assert check.drifted and check.n_window == 200 and check.target["model"] == "m-v2"
    for key in [("latency_ms", "ks"), ("latency_ms", "psi"), ("latency_ms", "wasserstein"),
                ("output.label", "chi2"), ("output.reply", "oov")]:  # fmt: skip
        assert found[key].drifted, key
    ks = found[("latency_ms", "ks")]
    assert ks.p_value is not None and ks.p_value < 1e-6 and ks.n_baseline == 400 and ks.n_window == 200
    assert found[("latency_ms", "psi")].p_value is None and found[("latency_ms", "psi")].value > 0.2
    examples = found[("latency_ms", "ks")].example_runs or []
    assert examples and all(e["run_key"].startswith("c") for e in examples)  # window steps, with their runs
    assert not found[("tokens", "ks")].drifted  # what did not move is not reported as moved

    aa = check_drift(engine=engine, project_id=pid, name="clf", settings=settings, window=day2)
    assert aa.n_window == 200 and aa.target["model"] == "m-v1"
    assert not [(r.feature, r.statistic) for r in aa.reports if r.drifted]

    with session_scope(engine) as session:
        stored = list_reports(session=session, project_id=pid, check_id=check.check_id)
        assert {(r.feature, r.statistic) for r in stored} == set(found)
        assert all(r.baseline == "clf" and r.baseline_version == 1 for r in stored)
        assert all(r.window_start == DAY1 + timedelta(days=1) for r in stored)
        drifted = list_reports(session=session, project_id=pid, drifted=True)
        assert {r.check_id for r in drifted} == {check.check_id}


def test_too_few_steps_are_reported_as_not_tested(settings: Settings) -> None:
    engine, pid = _store(settings, history(100, start=DAY1, seed=7, prefix="a")
                         + history(5, start=DAY1 + timedelta(days=1), seed=8, prefix="b"))  # fmt: skip
    fit_baseline(engine=engine, project_id=pid, name="clf", target=BaselineTarget(), settings=settings,
                 window=HistoryWindow(until=DAY1 + timedelta(days=1)), spec=SPEC)  # fmt: skip
    check = check_drift(engine=engine, project_id=pid, name="clf", settings=settings,
                        window=HistoryWindow(since=DAY1 + timedelta(days=1)))  # fmt: skip
    assert check.n_window == 5 and not check.drifted
    assert all((r.detail or {}).get("skipped", "").startswith("too few values") for r in check.reports)
    assert all(r.value is None for r in check.reports)


def test_periodic_check_of_every_baseline_and_cascade(settings: Settings) -> None:
    engine, pid = _store(settings, history(120, start=DAY1, seed=9, prefix="a"))
    for name in ("one", "two"):
        fit_baseline(engine=engine, project_id=pid, name=name, target=BaselineTarget(), window=HistoryWindow(),
                     spec=ProfileSpec(numeric=["latency_ms"], anomaly=[]), settings=settings)  # fmt: skip
    checks = check_all(engine=engine, project_id=pid, settings=settings, now=DAY1 + timedelta(hours=1))
    assert [c.baseline for c in checks] == ["one", "two"] and all(c.n_window == 60 for c in checks)
    with engine.begin() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(DriftReport)).scalar() == 6
        conn.execute(sa.delete(StatBaseline).where(StatBaseline.name == "one"))  # type: ignore[arg-type]
        assert conn.execute(sa.select(sa.func.count()).select_from(DriftReport)).scalar() == 3
