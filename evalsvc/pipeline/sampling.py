"""Sampling decisions beyond a plain rate: always-sample conditions and stratification.

Used by :func:`evalsvc.pipeline.schedule.schedule_evals` for evaluators whose ``sample`` has
``always`` or ``stratify`` (plain-rate evaluators never come here). For each (step, evaluator) it
returns the decision and the row's ``metadata.sample``::

    {"why": "rate" | "min_per_stratum" | "step_failed" | "new_model" | "if_rule_failed",
     "weight": 1 / inclusion probability, "stratum": "<name>|<model>"}

The inclusion probability of a step is fixed before its draw is looked at: 1 for a step that meets
an ``always`` condition or is among the first ``min_per_stratum`` of its stratum today (counted in
``sample_counter``), else the rate. So the weighted (Horvitz-Thompson / Hajek) failure rate of
:func:`evalsvc.pipeline.judging.estimate_failure_rate` is unbiased. ``if_rule_failed`` rows are
pending until the scoring loop knows the rules' verdicts: judged (weight 1) if a rule failed the
step, else skipped as not sampled (see :mod:`evalsvc.pipeline.judging`).

A decision that depends on a counter (the first N of a model or of a stratum's day) is made when
the step is first scheduled; a step re-scheduled later (it changed after finishing) is counted
again and may be decided differently. Decisions by the rate alone always repeat.

    >>> from evalsvc.schemas import Sample
    >>> stratum_key(Sample(stratify=["name", "model"]), name="extract", model=None)
    'extract|-'
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from datetime import UTC
from typing import TYPE_CHECKING, Any

import orjson
import sqlalchemy as sa
from sqlmodel import Session

from evalsvc.schemas import Sample
from evalsvc.store.models import Step, table, utcnow
from evalsvc.store.models_scoring import SampleCounter
from evalsvc.store.sql import chunks

if TYPE_CHECKING:
    from .schedule import ActiveEvaluator, ScheduledStep

__all__ = ["SamplePlanner", "bump_counters", "stratum_key"]

_FAILED = frozenset({"failed", "timed_out"})


def stratum_key(sample: Sample, *, name: str, model: str | None) -> str:
    parts = [name if key == "name" else (model or "-") for key in sample.stratify]
    return "|".join(parts)


class SamplePlanner:
    """Decisions of one scheduling batch; counters are read and bumped once per key and batch."""

    def __init__(
        self,
        *,
        session: Session,
        project_id: int,
        evaluators: list[ActiveEvaluator],
        steps: list[ScheduledStep],
        picks: dict[int, Callable[[ScheduledStep], bool]],
    ) -> None:
        self._active = {ev.id for ev in evaluators if not ev.spec.sample.is_plain()}
        self._index: dict[tuple[int, str, str], int] = {}
        self._seen: dict[tuple[int, str, str], int] = defaultdict(int)
        self._models: dict[int, str | None] = {}
        self.day = utcnow().astimezone(UTC).date().isoformat()
        if not self._active:
            return
        wanted = [ev for ev in evaluators if ev.id in self._active]
        needs_model = any("model" in ev.spec.sample.stratify or "new_model" in ev.spec.sample.always for ev in wanted)
        if needs_model:
            self._models = _models(session, [s.step_id for s in steps if s.model is None])
        # how many of this batch's steps each counter gets
        counts: dict[tuple[int, str, str], int] = defaultdict(int)
        for ev in wanted:
            pick = picks[ev.id]
            for step in steps:
                if not pick(step):
                    continue
                for key in self._keys(ev, step):
                    counts[key] += 1
        self._index = bump_counters(session, project_id=project_id, counts=counts)

    def active(self, ev: ActiveEvaluator) -> bool:
        return ev.id in self._active

    def _model(self, step: ScheduledStep) -> str | None:
        return step.model if step.model is not None else self._models.get(step.step_id)

    def _keys(self, ev: ActiveEvaluator, step: ScheduledStep) -> list[tuple[int, str, str]]:
        sample = ev.spec.sample
        keys = []
        model = self._model(step)
        if "new_model" in sample.always and model:
            keys.append((ev.id, f"model:{model}", ""))
        if sample.stratify and sample.min_per_stratum:
            keys.append((ev.id, "stratum:" + stratum_key(sample, name=step.name, model=model), self.day))
        return keys

    def _next(self, key: tuple[int, str, str]) -> int:
        """The 1-based position of this step among the key's steps (all time, or today)."""
        self._seen[key] += 1
        return self._index.get(key, 0) + self._seen[key]

    def decide(self, ev: ActiveEvaluator, step: ScheduledStep, draw: float) -> tuple[bool, str | None]:
        """``(pending?, metadata JSON)`` of one evaluator on one step."""
        sample = ev.spec.sample
        model = self._model(step)
        stratum = stratum_key(sample, name=step.name, model=model) if sample.stratify else None
        certain: str | None = None
        if "step_failed" in sample.always and step.status in _FAILED:
            certain = "step_failed"
        if (
            "new_model" in sample.always
            and model
            and self._next((ev.id, f"model:{model}", "")) <= sample.new_model_steps
        ):
            certain = certain or "new_model"
        pi, why = sample.rate, "rate"
        if (
            stratum is not None
            and sample.min_per_stratum
            and self._next((ev.id, f"stratum:{stratum}", self.day)) <= sample.min_per_stratum
        ):
            pi, why = 1.0, "min_per_stratum"
        meta: dict[str, Any]
        if certain is not None:
            meta, pending = {"why": certain, "weight": 1.0}, True
        elif draw < pi:
            meta, pending = {"why": why, "weight": 1.0 / pi}, True
        elif "rule_failed" in sample.always:
            meta, pending = {"why": "if_rule_failed", "weight": 1.0}, True
        else:
            meta, pending = {"why": "not_sampled"}, False
        if stratum is not None:
            meta["stratum"] = stratum
        return pending, orjson.dumps({"sample": meta}).decode()


def _models(session: Session, step_ids: list[int]) -> dict[int, str | None]:
    t = table(Step)
    out: dict[int, str | None] = {}
    for part in chunks(step_ids, 2000):
        for sid, model in session.execute(sa.select(t.c.id, t.c.model).where(t.c.id.in_(part))):
            out[sid] = model
    return out


def bump_counters(
    session: Session, *, project_id: int, counts: dict[tuple[int, str, str], int]
) -> dict[tuple[int, str, str], int]:
    """Add ``counts`` to the (evaluator, key, day) counters; return each counter's value before.

    One atomic upsert per key: concurrent batches get disjoint positions."""
    out: dict[tuple[int, str, str], int] = {}
    if not counts:
        return out
    t = table(SampleCounter)
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
    for (evaluator_id, key, day), n in sorted(counts.items()):
        stmt = (
            insert(t)
            .values(project_id=project_id, evaluator_id=evaluator_id, key=key[:512], day=day, seen=n)
            .on_conflict_do_update(index_elements=["project_id", "evaluator_id", "key", "day"],
                                   set_={"seen": t.c.seen + n})
            .returning(t.c.seen)
        )  # fmt: skip
        seen = session.execute(stmt).scalar_one()
        out[(evaluator_id, key, day)] = int(seen) - n
    return out
