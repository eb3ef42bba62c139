"""What happens around an LLM judge's call: verdict cache, budgets, rule-conditioned sampling,
fallbacks, and the failure rate estimated from a sample.

The scoring loop (:mod:`evalsvc.pipeline.score`) runs a chunk's rule scorers first, then hands
the chunk's judge jobs to a :class:`JudgeGate`, which resolves, without a call:

1. ``if_rule_failed`` rows (``sample.always: [rule_failed]``, not picked by the draw): judged only
   if a rule evaluator failed the same step (in this chunk or already stored); else skipped
   ``not sampled``. This is why rules are scored before judges are decided.
2. steps missing what the template needs: skipped.
3. cache hits on (judge model, template version, rendered prompt): the stored verdict, marked
   ``metadata.cache_hit: true`` and ``cache_hit``, at no cost.
4. budgets: calls are reserved per (project, evaluator, UTC day) and per (project, ``*``, day)
   before the call, atomically; a job that does not fit is skipped ``over budget`` (counted in
   ``budget_usage.over_budget``) and its evaluator's ``budget.fallback`` judges the step instead.
   Dollars are known after the call: a dollar limit stops new calls once reached (calls in flight
   may overshoot it by their own cost).

After the calls, :meth:`JudgeGate.settle` records dollars and tokens, caches the verdicts (never
errors), and stamps ``cost_usd``/``judge_model``/``cache_hit`` on the results::

    >>> est = failure_rate([(False, 1.0)] * 20 + [(True, 1.0)] * 980)
    >>> round(est.rate, 3), est.low < 0.02 < est.high
    (0.02, True)
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from statistics import NormalDist
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session

from evalsvc.schemas import EvalStatus, EvaluatorSpec, Score, StepPublic
from evalsvc.settings import Settings
from evalsvc.store.db import write_session
from evalsvc.store.models import EvalResult, Evaluator, table, utcnow
from evalsvc.store.models_scoring import BudgetUsage, VerdictCache
from evalsvc.store.sql import chunks
from scorers.llm.judge import JudgeCall, LLMJudge
from scorers.registry import get as get_scorer

__all__ = [
    "OVER_BUDGET",
    "Estimate",
    "JudgeGate",
    "estimate_failure_rate",
    "failure_rate",
    "today",
    "usage_today",
]

OVER_BUDGET = "over budget"
NOT_SAMPLED = "not sampled"
_Result = tuple[Score | None, str | None, float]


def today() -> str:
    """The budget day: the UTC date."""
    return datetime.now(UTC).date().isoformat()


@dataclass
class _Job:
    index: int
    result_id: int
    project_id: int
    evaluator: str
    step_key: tuple[int, int]
    spec: EvaluatorSpec
    judge: LLMJudge
    step: StepPublic
    sample: dict[str, Any] = field(default_factory=dict)
    call: JudgeCall | None = None


class JudgeGate:
    """The judge jobs of one scoring chunk: resolved before the calls, accounted after them."""

    def __init__(
        self,
        *,
        engine: Engine,
        settings: Settings,
        specs: dict[int, EvaluatorSpec],
        outcomes: Sequence[tuple[Any, str | int]],
        jobs: Sequence[tuple[Any, StepPublic]],
    ) -> None:
        self.engine, self.settings = engine, settings
        self.jobs: dict[int, _Job] = {}
        self._rules: dict[tuple[int, int], list[tuple[int, float]]] = defaultdict(list)  # step -> (job, threshold)
        for row, out in outcomes:
            if isinstance(out, str):
                continue
            scorer, step = jobs[out]
            spec = specs[row.evaluator_id]
            if isinstance(scorer, LLMJudge):
                self.jobs[out] = _Job(out, row.result_id, row.project_id, row.evaluator, row.key, spec, scorer, step)
            elif getattr(scorer, "kind", None) == "rule":
                self._rules[row.key].append((out, spec.threshold))
        self.fallbacks: list[tuple[int, int, int, str]] = []  # (project, step, run, evaluator name)
        self._copies: dict[int, int] = {}  # job -> the job with the same prompt that makes the call

    def __bool__(self) -> bool:
        return bool(self.jobs)

    # ---- before the calls ---------------------------------------------------------------------
    def before_calls(self, rule_results: Sequence[_Result | None]) -> dict[int, _Result]:
        """Jobs that need no call, with their outcome (the others are called)."""
        resolved: dict[int, _Result] = {}
        self._load_sample_meta()
        # with `always: [rule_failed]` a step that a rule failed is judged with certainty: weight 1,
        # also when the draw picked it anyway (its inclusion probability is 1, not the rate)
        conditional = [j for j in self.jobs.values() if "rule_failed" in j.spec.sample.always and j.sample]
        if conditional:
            failed = self._rule_failed(conditional, rule_results)
            for job in conditional:
                if job.step_key in failed:
                    if job.sample.get("why") in ("if_rule_failed", "rate", "min_per_stratum"):
                        job.sample = {**job.sample, "why": "rule_failed", "weight": 1.0}
                elif job.sample.get("why") == "if_rule_failed":
                    resolved[job.index] = (Score(explanation=NOT_SAMPLED), None, 0.0)
        for job in self.jobs.values():
            if job.index in resolved:
                continue
            try:
                prepared = job.judge.prepare(job.step)
            except Exception as exc:  # a template that cannot render this step
                resolved[job.index] = (None, f"{type(exc).__name__}: {exc}", 0.0)
                continue
            if isinstance(prepared, Score):
                resolved[job.index] = (prepared, None, 0.0)
            else:
                job.call = prepared
        waiting = [j for j in self.jobs.values() if j.index not in resolved and j.call is not None]
        for index, score in self._cache_hits(waiting).items():
            resolved[index] = (score, None, 0.0)
        waiting = [j for j in waiting if j.index not in resolved]
        first: dict[tuple[int, str], int] = {}
        for job in waiting:  # the same prompt twice in a chunk: one call, the other a cache hit
            assert job.call is not None
            index = first.setdefault((job.project_id, job.call.cache_key), job.index)
            if index != job.index:
                self._copies[job.index] = index
                resolved[job.index] = (None, "a copy of another job's verdict", 0.0)  # replaced in settle
        waiting = [j for j in waiting if j.index not in self._copies]
        over = {job.index for job in self._over_budget(waiting)}
        over |= {index for index, source in self._copies.items() if source in over}
        for index in sorted(over):
            job = self.jobs[index]
            resolved[index] = (Score(explanation=OVER_BUDGET, metadata={"budget": OVER_BUDGET}), None, 0.0)
            self._copies.pop(index, None)
            if job.spec.budget.fallback:
                self.fallbacks.append((job.project_id, job.step_key[0], job.step_key[1], job.spec.budget.fallback))
        return resolved

    def _load_sample_meta(self) -> None:
        e = table(EvalResult)
        ids = {job.result_id: job for job in self.jobs.values()}
        with self.engine.connect() as conn:
            for part in chunks(sorted(ids), 2000):
                for rid, meta in conn.execute(sa.select(e.c.id, e.c["metadata"]).where(e.c.id.in_(part))):
                    if isinstance(meta, str):
                        meta = orjson.loads(meta)
                    if isinstance(meta, dict) and isinstance(meta.get("sample"), dict):
                        ids[rid].sample = meta["sample"]

    def _rule_failed(self, jobs: list[_Job], rule_results: Sequence[_Result | None]) -> set[tuple[int, int]]:
        """Steps that a rule evaluator failed: in this chunk, or stored already."""
        failed: set[tuple[int, int]] = set()
        for job in jobs:
            for index, threshold in self._rules.get(job.step_key, []):
                result = rule_results[index] if index < len(rule_results) else None
                score = result[0] if result is not None else None
                if score is None or (score.value is None and score.passed is None):
                    continue
                passed = score.passed if score.passed is not None else bool((score.value or 0) >= threshold)
                if not passed:
                    failed.add(job.step_key)
        rest = sorted({j.step_key[0] for j in jobs if j.step_key not in failed})
        if rest:
            e, v = table(EvalResult), table(Evaluator)
            with self.engine.connect() as conn:
                for part in chunks(rest, 2000):
                    q = (
                        sa.select(e.c.step_id, e.c.run_id, v.c.scorer)
                        .join(v, v.c.id == e.c.evaluator_id)
                        .where(e.c.step_id.in_(part), e.c.passed == sa.false())
                    )
                    for step_id, run_id, scorer in conn.execute(q):
                        if _is_rule(scorer):
                            failed.add((step_id, run_id))
        return failed

    def _cache_hits(self, jobs: list[_Job]) -> dict[int, Score]:
        if not jobs:
            return {}
        c = table(VerdictCache)
        by_key: dict[tuple[int, str], list[_Job]] = defaultdict(list)
        for job in jobs:
            assert job.call is not None
            by_key[(job.project_id, job.call.cache_key)].append(job)
        hits: dict[int, Score] = {}
        with self.engine.connect() as conn:
            for project_id in sorted({p for p, _ in by_key}):
                keys = sorted(k for p, k in by_key if p == project_id)
                for part in chunks(keys, 1000):
                    q = sa.select(c.c.key, c.c.verdict).where(c.c.project_id == project_id, c.c.key.in_(part))
                    for key, verdict in conn.execute(q):
                        data = orjson.loads(verdict) if isinstance(verdict, str) else dict(verdict or {})
                        cached = Score.model_validate(data)
                        for job in by_key[(project_id, key)]:
                            meta = {**cached.metadata, "cache_hit": True, "cost_usd": 0.0, **self._sample(job)}
                            hits[job.index] = cached.model_copy(update={"metadata": meta})
        return hits

    def _over_budget(self, jobs: list[_Job]) -> list[_Job]:
        """Reserve a call for each job, in order; return the jobs that do not fit."""
        if not jobs:
            return []
        day = today()
        groups: dict[tuple[int, str], list[_Job]] = defaultdict(list)
        for job in jobs:
            groups[(job.project_id, job.evaluator)].append(job)
        over: list[_Job] = []
        s = self.settings
        with write_session(self.engine) as session:
            for (project_id, evaluator), group in sorted(groups.items(), key=lambda kv: kv[0]):
                budget = group[0].spec.budget
                ev_row = _usage_row(session, project_id, evaluator, day)
                pj_row = _usage_row(session, project_id, "*", day)
                fit = len(group)
                fit = min(fit, _room(ev_row, budget.calls_per_day, budget.usd_per_day))
                fit = min(fit, _room(pj_row, s.judge_project_calls_per_day, s.judge_project_usd_per_day))
                refused = len(group) - fit
                _bump(session, ev_row["id"], calls=fit, over=refused)
                _bump(session, pj_row["id"], calls=fit, over=refused)
                over.extend(group[fit:])
        return over

    # ---- after the calls ----------------------------------------------------------------------
    def settle(self, results: list[_Result]) -> list[_Result]:
        """Record the calls' dollars, cache their verdicts, stamp the judge columns; return the
        results with the sampling weight merged into each verdict's metadata."""
        out = list(results)
        for index, source in self._copies.items():
            score, error, latency = out[source]
            if score is not None and "judge_model" in score.metadata:
                meta = {**score.metadata, "cache_hit": True, "cost_usd": 0.0}
                out[index] = (score.model_copy(update={"metadata": meta}), None, 0.0)
            else:
                out[index] = (score, error, latency)
        day = today()
        spent: dict[tuple[int, str], float] = defaultdict(float)
        cache_rows: list[dict[str, Any]] = []
        stamps: list[dict[str, Any]] = []
        now = utcnow()
        for index, job in self.jobs.items():
            score, error, latency = out[index]
            if score is None:
                if job.call is not None:
                    stamps.append({"b_id": job.result_id, "b_cost": 0.0, "b_model": job.judge.model, "b_hit": False})
                continue
            meta = dict(score.metadata)
            hit = bool(meta.get("cache_hit"))
            if "judge_model" in meta:
                meta.update(self._sample(job))
                out[index] = (score.model_copy(update={"metadata": meta}), error, latency)
                cost = 0.0 if hit else float(meta.get("cost_usd") or 0.0)
                stamps.append({"b_id": job.result_id, "b_cost": cost, "b_model": job.judge.model, "b_hit": hit})
                if not hit:
                    spent[(job.project_id, job.evaluator)] += cost
                    if score.value is not None and job.call is not None:
                        cached = score.model_copy(update={"metadata": {k: v for k, v in meta.items() if k != "sample"}})
                        cache_rows.append(
                            {
                                "project_id": job.project_id,
                                "key": job.call.cache_key,
                                "model": job.judge.model,
                                "template_version": job.call.template_version,
                                "verdict": cached.model_dump(mode="json"),
                                "cost_usd": cost,
                                "prompt_tokens": int(meta.get("prompt_tokens") or 0),
                                "completion_tokens": int(meta.get("completion_tokens") or 0),
                                "created_at": now,
                            }
                        )
        if not (spent or cache_rows or stamps):
            return out
        with write_session(self.engine) as session:
            for (project_id, evaluator), dollars in sorted(spent.items()):
                for name in (evaluator, "*"):
                    row = _usage_row(session, project_id, name, day)
                    _bump(session, row["id"], dollars=dollars)
            if cache_rows:
                _insert_ignore(session, table(VerdictCache), cache_rows, ["project_id", "key"])
            if stamps:
                e = table(EvalResult)
                session.execute(
                    sa.update(e)
                    .where(e.c.id == sa.bindparam("b_id"))
                    .values(cost_usd=sa.bindparam("b_cost"), judge_model=sa.bindparam("b_model"),
                            cache_hit=sa.bindparam("b_hit")),
                    stamps,
                )  # fmt: skip
        return out

    @staticmethod
    def _sample(job: _Job) -> dict[str, Any]:
        return {"sample": job.sample} if job.sample else {}

    def fallback_ids(self) -> list[int]:
        """Pending results of the fallback evaluators of the jobs skipped over budget."""
        if not self.fallbacks:
            return []
        with write_session(self.engine) as session:
            return schedule_fallbacks(session=session, fallbacks=self.fallbacks)


def schedule_fallbacks(*, session: Session, fallbacks: Iterable[tuple[int, int, int, str]]) -> list[int]:
    """A pending result of evaluator ``name`` on each step (a row it skipped as not sampled or
    over budget is made pending again; a verdict it already has is kept)."""
    e, v = table(EvalResult), table(Evaluator)
    ids: list[int] = []
    active: dict[tuple[int, str], Any] = {}
    now = utcnow()
    for project_id, step_id, run_id, name in fallbacks:
        key = (project_id, name)
        if key not in active:
            active[key] = session.execute(
                sa.select(v.c.id, v.c.version).where(v.c.project_id == project_id, v.c.name == name, v.c.active)
            ).first()
        ev = active[key]
        if ev is None:
            continue  # the fallback names no active evaluator: the skip stays, counted
        row = session.execute(
            sa.select(e.c.id, e.c.status)
            .where(e.c.step_id == step_id, e.c.evaluator == name, e.c.evaluator_version == ev.version)
        ).first()  # fmt: skip
        if row is None:
            rid = session.execute(
                sa.insert(e)
                .values(project_id=project_id, run_id=run_id, step_id=step_id, evaluator_id=ev.id, evaluator=name,
                        evaluator_version=ev.version, status=EvalStatus.pending.value, created_at=now,
                        **{"metadata": {"fallback_for": OVER_BUDGET}})
                .returning(e.c.id)
            ).scalar_one()  # fmt: skip
            ids.append(rid)
        elif row.status == EvalStatus.skipped.value:
            session.execute(
                sa.update(e).where(e.c.id == row.id)
                .values(status=EvalStatus.pending.value, skip_reason=None, started_at=None,
                        **{"metadata": {"fallback_for": OVER_BUDGET}})
            )  # fmt: skip
            ids.append(row.id)
    return ids


def _is_rule(scorer: str) -> bool:
    try:
        return getattr(get_scorer(scorer), "kind", None) == "rule"
    except Exception:
        return False


def _usage_row(session: Session, project_id: int, evaluator: str, day: str) -> dict[str, Any]:
    """The (project, evaluator, day) budget row, created if missing, locked (PostgreSQL: FOR UPDATE;
    SQLite: the write session's lock)."""
    u = table(BudgetUsage)
    where = sa.and_(u.c.project_id == project_id, u.c.evaluator == evaluator, u.c.day == day)
    _insert_ignore(
        session,
        u,
        [{"project_id": project_id, "evaluator": evaluator, "day": day, "calls": 0, "dollars": 0.0,
          "over_budget": 0, "updated_at": utcnow()}],
        ["project_id", "evaluator", "day"],
    )  # fmt: skip
    q = sa.select(u.c.id, u.c.calls, u.c.dollars).where(where)
    if session.get_bind().dialect.name == "postgresql":
        q = q.with_for_update()
    return dict(session.execute(q).one()._mapping)


def _room(row: dict[str, Any], calls: int | None, usd: float | None) -> int:
    """How many more calls a budget row allows (a large number when unlimited)."""
    room = 1 << 30
    if calls is not None:
        room = max(0, calls - int(row["calls"]))
    if usd is not None and float(row["dollars"]) >= usd:
        room = 0
    return room


def _bump(session: Session, row_id: int, *, calls: int = 0, over: int = 0, dollars: float = 0.0) -> None:
    u = table(BudgetUsage)
    session.execute(
        sa.update(u)
        .where(u.c.id == row_id)
        .values(calls=u.c.calls + calls, over_budget=u.c.over_budget + over, dollars=u.c.dollars + dollars,
                updated_at=utcnow())
    )  # fmt: skip


def _insert_ignore(session: Session, t: sa.Table, rows: list[dict[str, Any]], keys: list[str]) -> None:
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
    session.execute(insert(t).on_conflict_do_nothing(index_elements=keys), rows)


# ---- estimating the failure rate from a weighted sample ------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """A failure rate estimated from weighted verdicts, with its confidence interval."""

    rate: float
    low: float
    high: float
    judged: int
    population: float  # estimated number of steps the verdicts stand for
    confidence: float = 0.95

    def as_dict(self) -> dict[str, Any]:
        return {"failure_rate": self.rate, "low": self.low, "high": self.high, "judged": self.judged,
                "population": round(self.population, 1), "confidence": self.confidence}  # fmt: skip

    def __str__(self) -> str:
        pct = round(self.confidence * 100)
        return (
            f"failure rate {self.rate:.2%} ({pct}% CI {self.low:.2%}-{self.high:.2%}) "
            f"from {self.judged} verdicts standing for ~{self.population:,.0f} steps"
        )


def failure_rate(verdicts: Iterable[tuple[bool, float]], *, confidence: float = 0.95) -> Estimate:
    """The weighted (Hajek) failure rate of ``(passed, weight)`` verdicts, weight = 1 / inclusion
    probability, with a Wilson interval on the effective sample size ``p(1-p) / var``, where ``var``
    is the linearised (sandwich) variance ``sum(w^2 (y - p)^2) / sum(w)^2`` of the ratio estimator;
    for equal weights that is the plain Wilson interval. When every verdict agrees, Kish's effective
    size ``sum(w)^2 / sum(w^2)`` stands in."""
    pairs = [(bool(p), float(w)) for p, w in verdicts]
    n = len(pairs)
    if n == 0:
        return Estimate(0.0, 0.0, 1.0, 0, 0.0, confidence)
    total = sum(w for _, w in pairs)
    rate = sum(w for p, w in pairs if not p) / total
    var = sum(w * w * ((0.0 if p else 1.0) - rate) ** 2 for p, w in pairs) / total**2
    n_eff = rate * (1 - rate) / var if 0 < rate < 1 and var > 0 else total**2 / sum(w * w for _, w in pairs)
    n_eff = min(max(n_eff, 1.0), float(n))
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    denom = 1 + z * z / n_eff
    centre = (rate + z * z / (2 * n_eff)) / denom
    half = z * math.sqrt(rate * (1 - rate) / n_eff + z * z / (4 * n_eff * n_eff)) / denom
    return Estimate(rate, max(0.0, centre - half), min(1.0, centre + half), n, total, confidence)


def estimate_failure_rate(
    *, session: Session, project_id: int, evaluator: str, since: datetime | None = None, days: int = 7
) -> Estimate:
    """The failure rate of a (sampled) evaluator's steps, from its completed verdicts since
    ``since`` (default: the last ``days`` days), each weighted by ``metadata.sample.weight``."""
    e = table(EvalResult)
    since = since or utcnow() - timedelta(days=days)
    q = sa.select(e.c.passed, e.c["metadata"]).where(
        e.c.project_id == project_id,
        e.c.evaluator == evaluator,
        e.c.status == EvalStatus.completed.value,
        e.c.passed.is_not(None),
        e.c.created_at >= since,
    )
    pairs = []
    for passed, meta in session.execute(q):
        if isinstance(meta, str):
            meta = orjson.loads(meta)
        sample = meta.get("sample") if isinstance(meta, dict) else None
        weight = float(sample.get("weight", 1.0)) if isinstance(sample, dict) else 1.0
        pairs.append((bool(passed), weight))
    return failure_rate(pairs)


def usage_today(*, session: Session, project_id: int, evaluator: str) -> dict[str, Any]:
    """Today's (UTC) judge calls, dollars and results skipped over budget, of the evaluator and of
    the project's judges together (``*``)."""
    u = table(BudgetUsage)
    out: dict[str, Any] = {}
    for name in (evaluator, "*"):
        row = session.execute(
            sa.select(u.c.calls, u.c.dollars, u.c.over_budget)
            .where(u.c.project_id == project_id, u.c.evaluator == name, u.c.day == today())
        ).first()  # fmt: skip
        key = "project" if name == "*" else "evaluator"
        out[key] = {"calls": row.calls, "dollars": row.dollars, "over_budget": row.over_budget} if row else {
            "calls": 0, "dollars": 0.0, "over_budget": 0}  # fmt: skip
    return out
