"""Pinned baselines of the CI gate: promote, show, load.

A baseline is promoted from a candidate file (scored with the configured evaluators, its step
records kept for re-scoring) or from production eval results selected by evaluator, step name
(a glob) and time window. Promoting a name again adds a version; the gate compares with the newest::

    >>> from evalsvc.gate.baselines import promote_outcomes, load_baseline  # doctest: +SKIP
    >>> promote_outcomes(engine=engine, project_id=1, name="main", outcomes=outcomes, versions=v,
    ...                  description={"file": "candidate.jsonl"})  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from fnmatch import fnmatchcase
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import select

from evalsvc.errors import InvalidInput
from evalsvc.schemas import EvalStatus, StepPublic
from evalsvc.store.db import session_scope, write_session
from evalsvc.store.models import EvalResult, Run, Step, table, utcnow
from evalsvc.store.models_gate import GateBaseline, GateBaselineItem

from .candidate import Outcome, item_id, output_hash

__all__ = ["Baseline", "load_baseline", "load_steps", "promote_outcomes", "promote_production", "show_baseline"]


@dataclass
class Baseline:
    id: int
    name: str
    version: int
    source: str
    description: dict[str, Any]
    evaluators: dict[str, str]
    created_at: datetime
    items: list[GateBaselineItem]

    def of(self, evaluator: str) -> list[GateBaselineItem]:
        return [i for i in self.items if i.evaluator == evaluator]


def _next_version(session: Any, project_id: int, name: str) -> int:
    b = table(GateBaseline)
    q = sa.select(sa.func.max(b.c.version)).where(b.c.project_id == project_id, b.c.name == name)
    return int(session.execute(q).scalar() or 0) + 1


def _store(*, engine: Engine, project_id: int, name: str, source: str, description: dict[str, Any],
           versions: Mapping[str, str], items: list[dict[str, Any]]) -> Baseline:  # fmt: skip
    if not items:
        raise InvalidInput("no results to pin: the selection is empty", field="from")
    with write_session(engine) as session:
        version = _next_version(session, project_id, name)
        row = GateBaseline(project_id=project_id, name=name, version=version, source=source,
                           description=description, evaluators=dict(versions), n_items=len(items))  # fmt: skip
        session.add(row)
        session.flush()
        session.execute(sa.insert(table(GateBaselineItem)), [{**i, "baseline_id": row.id} for i in items])
    found = load_baseline(engine=engine, project_id=project_id, name=name)
    assert found is not None
    return found


def promote_outcomes(*, engine: Engine, project_id: int, name: str, outcomes: Mapping[str, list[Outcome]],
                     versions: Mapping[str, str], description: dict[str, Any]) -> Baseline:  # fmt: skip
    """Pin a scored candidate: its verdicts, and its step records for re-scoring."""
    items: list[dict[str, Any]] = []
    for evaluator, rows in outcomes.items():
        seen: set[tuple[str, str]] = set()
        for o in rows:
            if o.error or o.skipped or o.key in seen:
                continue
            seen.add(o.key)
            items.append({"item_id": o.item_id, "step_name": o.step_name, "evaluator": evaluator,
                          "evaluator_version": versions[evaluator], "passed": o.passed, "value": o.value,
                          "output_hash": o.output_hash, "run_key": o.run_key, "step_key": o.step_key,
                          "step_id": None, "record": o.record})  # fmt: skip
    used = {i["evaluator"] for i in items}
    return _store(engine=engine, project_id=project_id, name=name, source="file", description=description,
                  versions={k: v for k, v in versions.items() if k in used}, items=items)  # fmt: skip


def promote_production(*, engine: Engine, project_id: int, name: str, evaluators: list[str] | None = None,
                       step: str | None = None, since: datetime | None = None,
                       until: datetime | None = None) -> Baseline:  # fmt: skip
    """Pin production verdicts: completed results of ``evaluators`` (default: all) on steps named
    like ``step`` (a glob) that started (or, without a start, were judged) in ``[since, until)``.
    Per evaluator, only the results of its newest version are kept; per item, the newest result."""
    e, s, r = table(EvalResult), table(Step), table(Run)
    when = sa.func.coalesce(s.c.started_at, e.c.created_at)
    q = (
        sa.select(e.c.id, e.c.evaluator, e.c.evaluator_version, e.c.passed, e.c.value, s.c.id.label("step_id"),
                  s.c.name, s.c.step_key, s.c.attributes, s.c.output, r.c.run_key, r.c.attributes.label("run_attrs"))
        .join(s, s.c.id == e.c.step_id)
        .join(r, r.c.id == e.c.run_id)
        .where(e.c.project_id == project_id, e.c.status == EvalStatus.completed.value, e.c.passed.is_not(None))
        .order_by(e.c.id)
    )  # fmt: skip
    if evaluators:
        q = q.where(e.c.evaluator.in_(evaluators))
    if since is not None:
        q = q.where(when >= since)
    if until is not None:
        q = q.where(when < until)
    newest: dict[str, tuple[int, str]] = {}
    rows = []
    with engine.connect() as conn:
        for row in conn.execute(q):
            if step is not None and not fnmatchcase(row.name, step):
                continue
            rows.append(row)
            newest[row.evaluator] = (row.id, row.evaluator_version)
    by_key: dict[tuple[str, str, str], dict[str, Any]] = {}
    for row in rows:
        if row.evaluator_version != newest[row.evaluator][1]:
            continue
        item = item_id(row.attributes, row.run_attrs, run_key=row.run_key, step_key=row.step_key)
        by_key[(row.evaluator, item, row.name)] = {
            "item_id": item, "step_name": row.name, "evaluator": row.evaluator,
            "evaluator_version": row.evaluator_version, "passed": row.passed, "value": row.value,
            "output_hash": output_hash(row.output), "run_key": row.run_key, "step_key": row.step_key,
            "step_id": row.step_id, "record": None,
        }  # fmt: skip
    description = {"evaluators": evaluators or "all", "step": step, "since": since and since.isoformat(),
                   "until": until and until.isoformat(), "selected_at": utcnow().isoformat()}  # fmt: skip
    versions = {k: v for k, (_, v) in newest.items()}
    return _store(engine=engine, project_id=project_id, name=name, source="production", description=description,
                  versions=versions, items=list(by_key.values()))  # fmt: skip


def load_baseline(*, engine: Engine, project_id: int, name: str, version: int | None = None) -> Baseline | None:
    b, i = table(GateBaseline), table(GateBaselineItem)
    with session_scope(engine) as session:
        q = sa.select(b).where(b.c.project_id == project_id, b.c.name == name)
        q = q.where(b.c.version == version) if version is not None else q.order_by(b.c.version.desc()).limit(1)
        row = session.execute(q).first()
        if row is None:
            return None
        items = list(
            session.exec(select(GateBaselineItem).where(GateBaselineItem.baseline_id == row.id).order_by(i.c.id)).all()
        )
        for item in items:
            session.expunge(item)
    return Baseline(row.id, row.name, row.version, row.source, row.description, row.evaluators, row.created_at,
                    items)  # fmt: skip


def show_baseline(*, engine: Engine, project_id: int, name: str) -> dict[str, Any]:
    """A summary of the newest version: where it came from, and per evaluator its items and rates."""
    base = load_baseline(engine=engine, project_id=project_id, name=name)
    if base is None:
        raise InvalidInput(f"no baseline named {name!r}; promote one with `evalsvc baseline promote`", field="name")
    b = table(GateBaseline)
    with engine.connect() as conn:
        versions = [v for (v,) in conn.execute(sa.select(b.c.version).where(b.c.project_id == project_id,
                                                                            b.c.name == name).order_by(b.c.version))]  # fmt: skip
    evaluators = []
    for name_, version in sorted(base.evaluators.items()):
        items = base.of(name_)
        values = [x.value for x in items if x.value is not None]
        evaluators.append({
            "evaluator": name_, "version": version, "items": len(items),
            "pass_rate": sum(bool(x.passed) for x in items) / len(items) if items else None,
            "mean_value": sum(values) / len(values) if values else None,
        })  # fmt: skip
    return {"name": base.name, "version": base.version, "versions": versions, "source": base.source,
            "created_at": base.created_at.isoformat(), "description": base.description,
            "items": len(base.items), "evaluators": evaluators}  # fmt: skip


def load_steps(*, engine: Engine, step_ids: list[int]) -> dict[int, StepPublic]:
    """Stored production steps by id, as scorers see them (for re-scoring a baseline)."""
    s, r = table(Step), table(Run)
    cols = [c for c in StepPublic.model_fields if c not in ("source", "run_key", "workflow")]
    out: dict[int, StepPublic] = {}
    with engine.connect() as conn:
        for start in range(0, len(step_ids), 1000):
            part = step_ids[start : start + 1000]
            q = sa.select(*(s.c[c] for c in cols), r.c.source, r.c.run_key, r.c.workflow).join(
                r, r.c.id == s.c.run_id
            ).where(s.c.id.in_(part))  # fmt: skip
            for row in conn.execute(q):
                data = dict(row._mapping)
                data["attributes"] = data["attributes"] or {}
                out[data["id"]] = StepPublic.model_validate(data)
    return out
