"""Score a file of step records with the configured evaluators, in memory, for the gate.

Nothing of the candidate is stored as runs or steps (a candidate must never trigger production's
``on_fail`` actions, nor show up in its pass rates); LLM judges share the project's verdict cache
(a verdict already paid for, in production or by an earlier gate run, is reused; new verdicts are
cached). Every matching step is scored: evaluator sampling rates and daily budgets are production
concerns and do not apply here.

**Item id.** A record is paired with the baseline by ``(item id, step name)``. The item id is the
first of the step's ``attributes.item_id``, ``attributes.dataset_item``, the run's
``run_attributes.item_id``, ``run_attributes.dataset_item``; without any, the step identity
``run_key/step_key``. Of several attempts of one step, the last one counts::

    >>> from evalsvc.gate.candidate import item_id
    >>> item_id({"item_id": "q-17"}, {}, run_key="r1", step_key="answer")
    'q-17'
    >>> item_id({}, {}, run_key="r1", step_key="answer")
    'r1/answer'
"""

from __future__ import annotations

import asyncio
import hashlib
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.engine import Engine

from evalsvc.errors import InvalidInput
from evalsvc.schemas import EvaluatorSpec, Score, StepPublic, StepRecord
from evalsvc.store.models import table, utcnow
from evalsvc.store.models_scoring import VerdictCache
from evalsvc.store.sql import chunks
from scorers.base import Scorer
from scorers.llm.judge import JudgeCall, LLMJudge
from scorers.registry import create

__all__ = [
    "Outcome",
    "StoredRuns",
    "count",
    "group_by_key",
    "item_id",
    "output_hash",
    "read_steps",
    "record_to_public",
    "score_steps",
    "stored_steps",
]

_ITEM_KEYS = ("item_id", "dataset_item")
_CONCURRENCY = 16


def item_id(attributes: Mapping[str, Any] | None, run_attributes: Mapping[str, Any] | None, *, run_key: str,
            step_key: str) -> str:  # fmt: skip
    for attrs in (attributes or {}, run_attributes or {}):
        for key in _ITEM_KEYS:
            value = attrs.get(key)
            if value not in (None, ""):
                return str(value)[:256]
    return f"{run_key}/{step_key}"[:256]


def output_hash(output: Any) -> str:
    return hashlib.sha256(orjson.dumps(output, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)).hexdigest()


@dataclass(slots=True)
class Outcome:
    """One evaluator's verdict on one item of a candidate (or of a re-scored baseline)."""

    item_id: str
    step_name: str
    run_key: str
    step_key: str
    output_hash: str
    passed: bool | None = None
    value: float | None = None
    error: str | None = None
    skipped: str | None = None
    repeats: list[float] = field(default_factory=list)  # the judge's values, one per repeat
    record: dict[str, Any] | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.item_id, self.step_name)


def read_steps(path: Path, *, connector: str) -> list[tuple[StepPublic, dict[str, Any], str]]:
    """The file's step records as ``(step, record, item id)``, the last attempt of each step."""
    from connectors import get as get_connector
    from evalsvc.pipeline.files import iter_chunks

    conn = get_connector(connector)
    latest: dict[tuple[str, str, str], StepRecord] = {}
    for offset, raw, _ in iter_chunks(path, chunk_size=5000):
        for j, item in enumerate(conn.to_steps(raw)):
            try:
                rec = item if isinstance(item, StepRecord) else StepRecord.model_validate(item)
            except ValidationError as exc:
                err = exc.errors(include_url=False)[0]
                loc = ".".join(str(p) for p in err["loc"])
                raise InvalidInput(f"{path}: record {offset + j}: {loc}: {err['msg']}",
                                   field=f"candidate.{offset + j}.{loc}") from None  # fmt: skip
            key = (rec.source, rec.run_key, rec.step_key)
            if key not in latest or rec.attempt >= latest[key].attempt:
                latest[key] = rec
    runs: dict[tuple[str, str], int] = {}
    out = []
    for i, rec in enumerate(latest.values(), start=1):
        run_id = runs.setdefault((rec.source, rec.run_key), len(runs) + 1)
        record = rec.model_dump(mode="json", exclude_defaults=True)
        out.append((record_to_public(record, step_id=i, run_id=run_id), record, _item_of(rec)))
    return out


@dataclass(frozen=True)
class StoredRuns:
    """A candidate already in the store: the runs matching every given selector (the nightly run of
    a release candidate, a canary's traffic). Their steps are scored in memory like a file's."""

    runs: tuple[str, ...] = ()
    workflow: str | None = None
    attributes: tuple[tuple[str, str], ...] = ()  # run attributes, compared as text
    since: datetime | None = None  # on the run's start
    until: datetime | None = None

    def __str__(self) -> str:
        parts = [f"runs {', '.join(self.runs)}"] if self.runs else []
        parts += [f"workflow {self.workflow}"] if self.workflow else []
        parts += [f"{k}={v}" for k, v in self.attributes]
        parts += [f"since {self.since.isoformat()}"] if self.since else []
        parts += [f"until {self.until.isoformat()}"] if self.until else []
        return "stored runs: " + "; ".join(parts)


def stored_steps(
    *, engine: Engine, project_id: int, select: StoredRuns
) -> list[tuple[StepPublic, dict[str, Any], str]]:
    """The finished steps of the selected stored runs as ``(step, record, item id)``, the last
    attempt of each step (run steps of run-level evaluators left out)."""
    from evalsvc.schemas import RUN_STEP_KEY, TERMINAL_STEP_STATUSES
    from evalsvc.store.models import Run, Step

    if not (select.runs or select.workflow or select.attributes or select.since or select.until):
        raise InvalidInput("select the candidate's stored runs with --run, --workflow, --attr, --since or --until",
                           field="candidate")  # fmt: skip
    r, st = table(Run), table(Step)
    q = sa.select(r.c.id, r.c.source, r.c.run_key, r.c.workflow, r.c.attributes).where(r.c.project_id == project_id)
    if select.runs:
        q = q.where(r.c.run_key.in_(select.runs))
    if select.workflow:
        q = q.where(r.c.workflow == select.workflow)
    if select.since:
        q = q.where(r.c.started_at >= select.since)
    if select.until:
        q = q.where(r.c.started_at < select.until)
    cols = [st.c[name] for name in StepPublic.model_fields if name in st.c and name not in ("source", "workflow")]
    out: list[tuple[StepPublic, dict[str, Any], str]] = []
    with engine.connect() as conn:
        runs = {
            row.id: row
            for row in conn.execute(q.order_by(r.c.id))
            if all(str((row.attributes or {}).get(k)) == v for k, v in select.attributes)
        }
        for part in chunks(sorted(runs), 500):
            steps = (
                sa.select(*cols)
                .where(st.c.run_id.in_(part), st.c.step_key != RUN_STEP_KEY,
                       st.c.status.in_(sorted(TERMINAL_STEP_STATUSES)))
                .order_by(st.c.run_id, st.c.step_key, st.c.attempt)
            )  # fmt: skip
            latest: dict[tuple[int, str], dict[str, Any]] = {}
            for row in conn.execute(steps):
                latest[(row.run_id, row.step_key)] = dict(row._mapping)  # ordered by attempt: the last wins
            for data in latest.values():
                run = runs[data["run_id"]]
                data.update(source=run.source, run_key=run.run_key, workflow=run.workflow,
                            attributes=data.get("attributes") or {})  # fmt: skip
                step = StepPublic.model_validate(data)
                record = step.model_dump(mode="json", exclude={"id", "run_id", "latency_ms"})
                out.append((step, record, item_id(step.attributes, run.attributes, run_key=run.run_key,
                                                  step_key=step.step_key)))  # fmt: skip
    return out


def _item_of(rec: StepRecord) -> str:
    return item_id(rec.attributes, rec.run_attributes, run_key=rec.run_key, step_key=rec.step_key)


def record_to_public(record: Mapping[str, Any], *, step_id: int = 1, run_id: int = 1) -> StepPublic:
    """A step record (as stored in a baseline) as a scorer sees a stored step."""
    rec = StepRecord.model_validate(record)
    latency = None
    if rec.started_at is not None and rec.ended_at is not None:
        latency = (rec.ended_at - rec.started_at).total_seconds() * 1000
    data = rec.model_dump(exclude={"run_status", "run_attributes"})
    data.update(id=step_id, run_id=run_id, name=rec.name or rec.step_key, latency_ms=latency,
                status=rec.status, error=rec.error.model_dump() if rec.error else None)  # fmt: skip
    return StepPublic.model_validate(data)


def _matches(spec: EvaluatorSpec, step: StepPublic) -> bool:
    from evalsvc.pipeline.schedule import ScheduledStep, matches

    status = getattr(step.status, "value", step.status)
    scheduled = ScheduledStep(step.id, step.run_id, step.source, step.run_key, step.workflow, step.step_key,
                              step.name, step.kind, str(status), step.attributes, step.model)  # fmt: skip
    return matches(spec.target, scheduled)


def _scorer(engine: Engine, project_id: int, spec: EvaluatorSpec) -> Scorer:
    scorer = create(spec.scorer, spec.params)
    if hasattr(scorer, "baseline_ref"):  # a statistical scorer gets its fitted baseline
        from evalsvc.pipeline.baselines import bind_baseline

        scorer = bind_baseline(engine=engine, project_id=project_id, scorer=scorer)
    return scorer


def score_steps(
    *,
    engine: Engine,
    project_id: int,
    specs: Iterable[EvaluatorSpec],
    steps: Sequence[tuple[StepPublic, dict[str, Any] | None, str]],
    repeats: Mapping[str, int] | None = None,
) -> dict[str, list[Outcome]]:
    """Each evaluator's outcomes on the steps it targets (``repeats``: judge calls per item)."""
    out: dict[str, list[Outcome]] = {}
    jobs: list[tuple[Outcome, EvaluatorSpec, Scorer, StepPublic, int]] = []
    for spec in specs:
        out[spec.name] = []
        scorer: Scorer | None = None
        for step, record, item in steps:
            if not _matches(spec, step):
                continue
            if scorer is None:
                scorer = _scorer(engine, project_id, spec)
            o = Outcome(item, step.name, step.run_key, step.step_key, output_hash(step.output), record=record)
            out[spec.name].append(o)
            k = (repeats or {}).get(spec.name, 1) if isinstance(scorer, LLMJudge) else 1
            jobs.append((o, spec, scorer, step, k))
    if jobs:
        asyncio.run(_run(engine, project_id, jobs))
    return out


async def _run(engine: Engine, project_id: int, jobs: list[tuple[Outcome, EvaluatorSpec, Scorer, StepPublic, int]]) -> None:  # fmt: skip
    sem = asyncio.Semaphore(_CONCURRENCY)
    judged: list[tuple[Outcome, EvaluatorSpec, LLMJudge, JudgeCall, int]] = []
    for o, spec, scorer, step, k in jobs:
        if isinstance(scorer, LLMJudge):
            try:
                prepared = scorer.prepare(step)
            except Exception as exc:  # a template that cannot render this step
                o.error = f"{type(exc).__name__}: {exc}"
                continue
            if isinstance(prepared, Score):
                _settle(o, spec, [prepared])
            else:
                judged.append((o, spec, scorer, prepared, k))
            continue
        try:
            score = await scorer.score(step)
        except Exception as exc:  # a scorer's failure is an error on its own item, never a verdict
            o.error = f"{type(exc).__name__}: {exc}"
            continue
        _settle(o, spec, [score])
    if judged:
        await _judge(engine, project_id, judged, sem)


def _settle(o: Outcome, spec: EvaluatorSpec, scores: list[Score]) -> None:
    if all(s.value is None and s.passed is None for s in scores):
        o.skipped = scores[0].explanation or "nothing to judge"
        return
    values = [s.value for s in scores if s.value is not None]
    o.repeats = [float(v) for v in values]
    o.value = statistics.fmean(values) if values else None
    if len(scores) == 1 and scores[0].passed is not None:
        o.passed = scores[0].passed
    elif o.value is not None:
        o.passed = o.value >= spec.threshold
    else:  # repeats without values: the majority of the verdicts
        o.passed = sum(bool(s.passed) for s in scores) * 2 > len(scores)


async def _judge(engine: Engine, project_id: int, judged: list[tuple[Outcome, EvaluatorSpec, LLMJudge, JudgeCall, int]],
                 sem: asyncio.Semaphore) -> None:  # fmt: skip
    """Judge calls through the project's verdict cache; repeat ``r`` > 0 has its own cache key."""
    keys = {_key(call, r) for _, _, _, call, k in judged for r in range(k)}
    cached = _cached(engine, project_id, keys)
    new_rows: list[dict[str, Any]] = []

    calls: dict[str, asyncio.Task[Score]] = {}  # one call per prompt, however many items share it

    async def call_judge(judge: LLMJudge, call: JudgeCall, key: str) -> Score:
        async with sem:
            score = await judge.complete(call)
        meta = score.metadata
        if score.value is not None:
            new_rows.append({"project_id": project_id, "key": key, "model": judge.model,
                             "template_version": call.template_version, "verdict": score.model_dump(mode="json"),
                             "cost_usd": float(meta.get("cost_usd") or 0.0),
                             "prompt_tokens": int(meta.get("prompt_tokens") or 0),
                             "completion_tokens": int(meta.get("completion_tokens") or 0), "created_at": utcnow()})  # fmt: skip
        return score

    async def one(judge: LLMJudge, call: JudgeCall, r: int) -> Score:
        key = _key(call, r)
        if key in cached:
            return cached[key]
        if key not in calls:
            calls[key] = asyncio.ensure_future(call_judge(judge, call, key))
        return await calls[key]

    async def item(o: Outcome, spec: EvaluatorSpec, judge: LLMJudge, call: JudgeCall, k: int) -> None:
        try:
            scores = [await one(judge, call, r) for r in range(k)]
        except Exception as exc:  # judge outage, unparseable verdict: an error, never a verdict
            o.error = f"{type(exc).__name__}: {exc}"
            return
        _settle(o, spec, scores)

    await asyncio.gather(*(item(*job) for job in judged))
    if new_rows:
        _store(engine, new_rows)


def _key(call: JudgeCall, repeat: int) -> str:
    if repeat == 0:
        return call.cache_key
    return hashlib.sha256(f"{call.cache_key}#repeat{repeat}".encode()).hexdigest()


def _cached(engine: Engine, project_id: int, keys: set[str]) -> dict[str, Score]:
    c = table(VerdictCache)
    found: dict[str, Score] = {}
    with engine.connect() as conn:
        ordered = sorted(keys)
        for start in range(0, len(ordered), 1000):
            part = ordered[start : start + 1000]
            q = sa.select(c.c.key, c.c.verdict).where(c.c.project_id == project_id, c.c.key.in_(part))
            for key, verdict in conn.execute(q):
                data = orjson.loads(verdict) if isinstance(verdict, str) else dict(verdict or {})
                score = Score.model_validate(data)
                found[key] = score.model_copy(update={"metadata": {**score.metadata, "cache_hit": True}})
    return found


def _store(engine: Engine, rows: list[dict[str, Any]]) -> None:
    from evalsvc.store.db import write_session

    t = table(VerdictCache)
    with write_session(engine) as session:
        if session.get_bind().dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
        session.execute(insert(t).on_conflict_do_nothing(index_elements=["project_id", "key"]), rows)


def group_by_key(outcomes: Iterable[Outcome]) -> dict[tuple[str, str], Outcome]:
    """Outcomes by ``(item id, step name)``; of duplicates (two runs of one item), the first."""
    by: dict[tuple[str, str], Outcome] = {}
    for o in outcomes:
        by.setdefault(o.key, o)
    return by


def count(outcomes: Iterable[Outcome]) -> dict[str, int]:
    c: dict[str, int] = defaultdict(int)
    for o in outcomes:
        c["error" if o.error else "skipped" if o.skipped else "scored"] += 1
    return dict(c)
