"""Prometheus metrics read from the store at scrape time (``GET /metrics``; docs/metrics.md).

The store is the source of truth, so every figure is a count over its tables, taken when Prometheus
scrapes: records ingested (step attempts stored), eval results by status and outcome, LLM judge calls
and dollars (the ``budget_usage`` counters the judge keeps), actions by kind and status, and the queue
depth (eval results still pending). Every sample carries the project's name; nothing from the steps
themselves (input, output, keys) is exposed. Figures are the same whichever process answers.

>>> from evalsvc.store.db import get_engine, migrate
>>> engine = get_engine("sqlite:////tmp/evalsvc-doc-metrics.db"); migrate(engine)
>>> b"evalsvc_queue_depth" in render_metrics(registry=metrics_registry(engine=engine))
True
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from sqlalchemy.engine import Engine

from evalsvc.schemas import RUN_STEP_KEY
from evalsvc.store.models import Action, EvalResult, Project, Step, table
from evalsvc.store.models_scoring import BudgetUsage

__all__ = ["StoreCollector", "StoreCounts", "metrics_registry", "render_metrics", "store_counts"]


@dataclass
class StoreCounts:
    """One scrape's figures, keyed by project name (and the labels after it)."""

    records: dict[str, int] = field(default_factory=dict)
    results: dict[tuple[str, str, str, str], int] = field(default_factory=dict)  # project, evaluator, status, outcome
    judge_calls: dict[tuple[str, str], int] = field(default_factory=dict)  # project, evaluator
    judge_dollars: dict[tuple[str, str], float] = field(default_factory=dict)
    judge_over_budget: dict[tuple[str, str], int] = field(default_factory=dict)
    actions: dict[tuple[str, str, str], int] = field(default_factory=dict)  # project, kind, status
    queue_depth: dict[str, int] = field(default_factory=dict)


def _outcome(passed: bool | None) -> str:
    return "none" if passed is None else "passed" if passed else "failed"


def store_counts(*, engine: Engine) -> StoreCounts:
    """Count what the metrics show, in one read transaction."""
    out = StoreCounts()
    p, s, r, a, u = table(Project), table(Step), table(EvalResult), table(Action), table(BudgetUsage)
    with engine.connect() as conn:
        names = {pid: name for pid, name in conn.execute(sa.select(p.c.id, p.c.name))}

        def project(pid: int) -> str:
            return str(names.get(pid, pid))

        for pid in names:
            out.records[project(pid)] = 0
            out.queue_depth[project(pid)] = 0
        stored = sa.select(s.c.project_id, sa.func.count()).where(s.c.step_key != RUN_STEP_KEY)  # ingested only
        for pid, n in conn.execute(stored.group_by(s.c.project_id)):
            out.records[project(pid)] = int(n)
        q = sa.select(r.c.project_id, r.c.evaluator, r.c.status, r.c.passed, sa.func.count()).group_by(
            r.c.project_id, r.c.evaluator, r.c.status, r.c.passed
        )
        for pid, evaluator, status, passed, n in conn.execute(q):
            out.results[(project(pid), evaluator, status, _outcome(passed))] = int(n)
            if status == "pending":
                out.queue_depth[project(pid)] = out.queue_depth.get(project(pid), 0) + int(n)
        q = (
            sa.select(u.c.project_id, u.c.evaluator, sa.func.sum(u.c.calls), sa.func.sum(u.c.dollars),
                      sa.func.sum(u.c.over_budget))
            .where(u.c.evaluator != "*")  # '*' is the project's total of the same calls
            .group_by(u.c.project_id, u.c.evaluator)
        )  # fmt: skip
        for pid, evaluator, calls, dollars, over in conn.execute(q):
            key = (project(pid), evaluator)
            out.judge_calls[key] = int(calls or 0)
            out.judge_dollars[key] = float(dollars or 0.0)
            out.judge_over_budget[key] = int(over or 0)
        q = sa.select(a.c.project_id, a.c.kind, a.c.status, sa.func.count()).group_by(
            a.c.project_id, a.c.kind, a.c.status
        )
        for pid, kind, status, n in conn.execute(q):
            out.actions[(project(pid), kind, status)] = int(n)
    return out


class StoreCollector(Collector):
    """A custom collector: each scrape counts the store again (see :func:`store_counts`)."""

    def __init__(self, *, engine: Engine) -> None:
        self.engine = engine

    def describe(self) -> Iterable[Metric]:
        return []  # registering must not query the store

    def collect(self) -> Iterator[Metric]:
        c = store_counts(engine=self.engine)
        records = CounterMetricFamily(
            "evalsvc_records_ingested", "Step records (attempts) stored, duplicates not counted.", labels=["project"]
        )
        for project, n in sorted(c.records.items()):
            records.add_metric([project], n)
        yield records
        results = GaugeMetricFamily(
            "evalsvc_eval_results",
            "Eval results by evaluator, status (pending, completed, error, skipped, cancelled) and outcome "
            "(passed, failed, none).",
            labels=["project", "evaluator", "status", "outcome"],
        )
        for key, n in sorted(c.results.items()):
            results.add_metric(list(key), n)
        yield results
        calls = CounterMetricFamily("evalsvc_judge_calls", "LLM judge calls made.", labels=["project", "evaluator"])
        dollars = CounterMetricFamily(
            "evalsvc_judge_dollars", "Dollars the LLM judges spent (litellm's cost).", labels=["project", "evaluator"]
        )
        over = CounterMetricFamily(
            "evalsvc_judge_over_budget", "Results skipped as over the judge budget.", labels=["project", "evaluator"]
        )
        for judge in sorted(c.judge_calls):
            calls.add_metric(list(judge), c.judge_calls[judge])
            dollars.add_metric(list(judge), c.judge_dollars[judge])
            over.add_metric(list(judge), c.judge_over_budget[judge])
        yield from (calls, dollars, over)
        actions = GaugeMetricFamily(
            "evalsvc_actions",
            "Actions by kind (retry, pause, resume, cancel, review, webhook) and status (pending, dispatched, "
            "succeeded, failed).",
            labels=["project", "kind", "status"],
        )
        for action, n in sorted(c.actions.items()):
            actions.add_metric(list(action), n)
        yield actions
        depth = GaugeMetricFamily("evalsvc_queue_depth", "Eval results waiting to be scored.", labels=["project"])
        for project, n in sorted(c.queue_depth.items()):
            depth.add_metric([project], n)
        yield depth


def metrics_registry(*, engine: Engine) -> CollectorRegistry:
    """A registry of its own (not the process-global one) holding the store collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(engine=engine))
    return registry


def render_metrics(*, registry: CollectorRegistry) -> bytes:
    """The Prometheus text exposition (format 0.0.4)."""
    return generate_latest(registry)
