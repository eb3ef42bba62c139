"""Match finished steps with the project's active evaluators and queue their verdicts.

Each match becomes an EvalResult row, ``pending`` (to be scored) or ``skipped`` with the reason
``not sampled``. Sampling is deterministic: the draw is a hash of (source, run, step), so
re-ingesting a step repeats the decision, every attempt of a sampled step is judged, and two
evaluators with the same rate judge the same steps.

Beyond the rate (``sample`` in evalsvc.yaml, docs/judges.md): ``always`` conditions (the step
failed; one of the first N steps of a model; a rule failed on the step, which is decided when
the rules' verdicts are known, see :mod:`evalsvc.pipeline.judging`) and ``stratify`` (at least
``min_per_stratum`` steps per stratum per day). Such evaluators' rows carry ``metadata.sample``:
why the step was picked, its weight (1 / inclusion probability) and its stratum, which is what
keeps the estimated failure rate unbiased.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from fnmatch import fnmatchcase
from functools import lru_cache
from typing import Any

import orjson
import sqlalchemy as sa
from sqlmodel import Session

from evalsvc.schemas import RUN_STEP_KEY, EvalStatus, EvaluatorSpec, Target
from evalsvc.store.models import Evaluator, table, utcnow
from evalsvc.store.sql import chunks

from ._bulk import copy_to_scratch, dbapi, driver_cursor, pg_ts, sqlite_ts
from .sampling import SamplePlanner

__all__ = [
    "ActiveEvaluator",
    "ScheduledStep",
    "backfill",
    "load_active_evaluators",
    "matches",
    "sample_draw",
    "schedule_evals",
]

NOT_SAMPLED = "not sampled"


@dataclass(frozen=True, slots=True)
class ActiveEvaluator:
    id: int
    name: str
    version: str
    spec: EvaluatorSpec


@dataclass(frozen=True, slots=True)
class ScheduledStep:
    step_id: int
    run_id: int
    source: str
    run_key: str
    workflow: str | None
    step_key: str
    name: str
    kind: str
    status: str
    attributes: dict[str, Any]
    model: str | None = None


def load_active_evaluators(*, session: Session, project_id: int) -> list[ActiveEvaluator]:
    rows = session.execute(_active_query(), {"p": project_id}).all()
    return [ActiveEvaluator(id=r.id or 0, name=r.name, version=r.version, spec=_spec(r.version, r.definition))
            for r in rows]  # fmt: skip


@lru_cache(maxsize=1)
def _active_query() -> Any:
    """Built once (ingest loads the active evaluators on every batch)."""
    t = table(Evaluator)
    return (
        sa.select(t.c.id, t.c.name, t.c.version, t.c.definition)
        .where(t.c.project_id == sa.bindparam("p"), t.c.active == sa.true())
        .order_by(t.c.id)
    )


_SPECS: dict[tuple[str, str], EvaluatorSpec] = {}


def _spec(version: str, definition: Any) -> EvaluatorSpec:
    """The validated spec of a stored definition; the version is a hash of the definition, so a
    (version, definition text) pair is validated once per process."""
    key = (version, orjson.dumps(definition, option=orjson.OPT_SORT_KEYS).decode())
    spec = _SPECS.get(key)
    if spec is None:
        if len(_SPECS) > 4096:
            _SPECS.clear()
        spec = _SPECS[key] = EvaluatorSpec.model_validate(definition)
    return spec


def _glob(pattern: str | None, value: str | None) -> bool:
    return pattern is None or (value is not None and fnmatchcase(value, pattern))


def matches(target: Target, step: ScheduledStep) -> bool:
    """Whether an evaluator's target selector picks this step (globs; unset fields match all)."""
    return (
        (target.level == "run") == (step.step_key == RUN_STEP_KEY)  # run-level evaluators judge run steps only
        and _glob(target.source, step.source)
        and _glob(target.workflow, step.workflow)
        and _glob(target.step, step.name)
        and _glob(target.kind, step.kind)
        and _glob(target.status, step.status)
        and all(_glob(pat, _attr_text(step.attributes.get(k))) for k, pat in target.attributes.items())
    )


def _attr_text(value: Any) -> str | None:
    return None if value is None else str(value)


def sample_draw(source: str, run_key: str, step_key: str) -> float:
    """A uniform number in [0, 1) fixed by the step's identity."""
    digest = hashlib.blake2b(f"{source}\x1f{run_key}\x1f{step_key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def schedule_evals(
    *,
    session: Session,
    project_id: int,
    steps: list[ScheduledStep],
    evaluators: list[ActiveEvaluator],
    reset: bool = True,
) -> list[int]:
    """Create the EvalResult rows of these steps; return the ids left ``pending``.

    With ``reset`` (a step changed after it finished) existing results are set back to pending;
    without it (a backfill) existing results are left alone."""
    if not steps or not evaluators:
        return []
    now: datetime = utcnow()
    _, sqlite = dbapi(session)
    stamp = sqlite_ts(now) if sqlite else pg_ts(now)
    pending_value, skipped_value = EvalStatus.pending.value, EvalStatus.skipped.value
    selectors = [(ev, _selector(ev.spec.target), ev.spec.sample.rate) for ev in evaluators]
    planner = SamplePlanner(session=session, project_id=project_id, evaluators=evaluators, steps=steps,
                            picks={ev.id: pick for ev, pick, _ in selectors})  # fmt: skip
    attr_keys = sorted({key for ev in evaluators for key in ev.spec.target.attributes})
    picked: dict[tuple[Any, ...], list[tuple[ActiveEvaluator, float]]] = {}
    rows: list[tuple[Any, ...]] = []
    for step in steps:
        # steps that agree on everything targets look at get the same evaluators
        shape: tuple[Any, ...] = (step.source, step.workflow, step.name, step.kind, step.status,
                                  step.step_key == RUN_STEP_KEY)  # fmt: skip
        if attr_keys:
            shape += tuple(_attr_text(step.attributes.get(key)) for key in attr_keys)
        chosen = picked.get(shape)
        if chosen is None:
            chosen = picked[shape] = [(ev, rate) for ev, pick, rate in selectors if pick(step)]
        if not chosen:
            continue
        draw = sample_draw(step.source, step.run_key, step.step_key)
        for ev, rate in chosen:
            sampled = draw < rate
            meta = None
            if planner.active(ev):
                sampled, meta = planner.decide(ev, step, draw)
            rows.append(
                (
                    project_id,
                    step.run_id,
                    step.step_id,
                    ev.id,
                    ev.name,
                    ev.version,
                    pending_value if sampled else skipped_value,
                    None if sampled else NOT_SAMPLED,
                    False,
                    stamp,
                    meta,
                )
            )
    if not rows:
        return []
    pending: list[int] = []
    cols = ", ".join(_RESULT_COLS)
    conflict = _ON_CONFLICT_RESET if reset else "DO NOTHING"
    with driver_cursor(session) as cur:
        if sqlite:
            # one multi-row statement per chunk answers RETURNING (executemany would not)
            for part in chunks(rows, 2000):
                values = ", ".join([_SQLITE_ROW] * len(part))
                sql = (
                    f"INSERT INTO eval_result ({cols}) VALUES {values} "
                    f"ON CONFLICT (step_id, evaluator, evaluator_version) {conflict} RETURNING id, status"
                )
                for rid, status in cur.execute(sql, [v for row in part for v in row]).fetchall():
                    if status == pending_value:
                        pending.append(rid)
        else:
            # COPY into a scratch table, then one upsert from it: a statement per row costs more
            # than the row (the rows are distinct: one per step and evaluator)
            scratch = copy_to_scratch(cur, "eval_result", _RESULT_COLS, rows)
            cur.execute(
                f"INSERT INTO eval_result ({cols}) SELECT {cols} FROM {scratch} "
                f"ON CONFLICT (step_id, evaluator, evaluator_version) {conflict} RETURNING id, status"
            )
            for rid, status in cur.fetchall():
                if status == pending_value:
                    pending.append(rid)
    return pending


_RESULT_COLS = (
    "project_id",
    "run_id",
    "step_id",
    "evaluator_id",
    "evaluator",
    "evaluator_version",
    "status",
    "skip_reason",
    "cache_hit",
    "created_at",
    "metadata",
)
_SQLITE_ROW = "(" + ", ".join(["?"] * len(_RESULT_COLS)) + ")"
_ON_CONFLICT_RESET = (
    "DO UPDATE SET status = excluded.status, skip_reason = excluded.skip_reason, value = NULL, passed = NULL, "
    "label = NULL, explanation = NULL, error = NULL, metadata = excluded.metadata, started_at = NULL, ended_at = NULL"
)


def _selector(target: Target) -> Callable[[ScheduledStep], bool]:
    """:func:`matches` for one target, with its globs compiled once."""
    fields = [
        (attr, _glob_matcher(pattern))
        for attr, pattern in (
            ("source", target.source),
            ("workflow", target.workflow),
            ("name", target.step),
            ("kind", target.kind),
            ("status", target.status),
        )
        if pattern is not None
    ]
    attrs = [(key, _glob_matcher(pattern)) for key, pattern in target.attributes.items()]
    run_level = target.level == "run"

    def pick(step: ScheduledStep) -> bool:
        if (step.step_key == RUN_STEP_KEY) != run_level:
            return False  # a run step (evalsvc.pipeline.run_evals) is for run-level evaluators only
        for attr, match in fields:
            value = getattr(step, attr)
            if value is None or match(value) is None:
                return False
        for key, match in attrs:
            text = _attr_text(step.attributes.get(key))
            if text is None or match(text) is None:
                return False
        return True

    return pick


@lru_cache(maxsize=512)
def _glob_matcher(pattern: str) -> Callable[[str], re.Match[str] | None]:
    """What :func:`fnmatch.fnmatchcase` does with ``pattern``, compiled."""
    return re.compile(fnmatch.translate(pattern)).match


def backfill(
    *,
    session: Session,
    project_id: int,
    evaluators: list[ActiveEvaluator],
    since: datetime | None = None,
    rescore: bool = False,
    chunk: int = 5000,
) -> list[int]:
    """Schedule evaluators on steps already stored (an evaluator applied after its steps arrived).

    Steps that already have a result of the evaluator's version keep it, unless ``rescore``.
    Returns the ids of the pending results to score."""
    from evalsvc.schemas import TERMINAL_STEP_STATUSES
    from evalsvc.store.models import Run, Step

    st, rt = table(Step), table(Run)
    pending: list[int] = []
    after = 0
    while True:
        q = (
            sa.select(st.c.id, st.c.run_id, rt.c.source, rt.c.run_key, rt.c.workflow, st.c.step_key, st.c.name,
                      st.c.kind, st.c.status, st.c.attributes, st.c.model)
            .join(rt, rt.c.id == st.c.run_id)
            .where(st.c.project_id == project_id, st.c.id > after,
                   st.c.status.in_([s.value for s in TERMINAL_STEP_STATUSES]))
            .order_by(st.c.id)
            .limit(chunk)
        )  # fmt: skip
        if since is not None:
            q = q.where(st.c.updated_at >= since)
        rows = session.execute(q).all()
        if not rows:
            return pending
        after = rows[-1].id
        steps = [
            ScheduledStep(step_id=r.id, run_id=r.run_id, source=r.source, run_key=r.run_key, workflow=r.workflow,
                          step_key=r.step_key, name=r.name, kind=r.kind, status=r.status, attributes=r.attributes or {},
                          model=r.model)
            for r in rows
        ]  # fmt: skip
        pending += schedule_evals(session=session, project_id=project_id, steps=steps, evaluators=evaluators,
                                  reset=rescore)  # fmt: skip
