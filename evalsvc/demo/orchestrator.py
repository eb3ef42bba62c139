"""The demo's simulated orchestrator, and its adapter: the loop from a failed eval back to the
workflow, with no services.

The simulator plans every attempt of a step up front. The orchestrator runs the first attempts
on its own and holds the later ones back: a step is re-run only when evalsvc asks for it (an
evaluator with ``on_fail: retry``), through :class:`DemoAdapter`, as a Temporal or Celery adapter
would ask the real orchestrator. The re-run's records then come back through the connector like
any others. A retry the simulation did not plan gives the extraction's correct output::

    >>> orch = SimulatedOrchestrator([
    ...     {"run_key": "r1", "step_key": "extract", "attempt": 1, "output": "oops",
    ...      "started_at": "2026-01-01T10:00:00.000Z", "ended_at": "2026-01-01T10:00:02.000Z"},
    ... ], clean={("r1", "extract"): {"total": 12.5}})
    >>> [r["attempt"] for r in orch.first]
    [1]
    >>> orch.retry("r1", "extract", 1)
    2
    >>> [(r["attempt"], r["output"], r["started_at"]) for r in orch.take()]
    [(2, {'total': 12.5}, '2026-01-01T10:00:04.000Z')]
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any, ClassVar

from evalsvc.adapters.base import ActionContext, ActionFailed

from .simulate import SOURCE

__all__ = ["DemoAdapter", "SimulatedOrchestrator"]

RETRY_DELAY = timedelta(seconds=2)


class SimulatedOrchestrator:
    def __init__(self, records: Iterable[dict[str, Any]], *, clean: dict[tuple[str, str], Any]) -> None:
        self.first: list[dict[str, Any]] = []
        self._held: dict[tuple[str, str, int], list[dict[str, Any]]] = defaultdict(list)
        self._latest: dict[tuple[str, str], dict[str, Any]] = {}
        self._clean = clean
        self._released: list[dict[str, Any]] = []
        self.retries = 0
        for rec in records:
            if rec["attempt"] > 1:
                self._held[(rec["run_key"], rec["step_key"], rec["attempt"])].append(rec)
            else:
                self.first.append(rec)
                if rec.get("ended_at"):
                    self._latest[(rec["run_key"], rec["step_key"])] = rec

    def retry(self, run_key: str, step_key: str, attempt: int) -> int:
        """Re-run the step whose ``attempt`` failed; answer the new attempt's number."""
        nxt = attempt + 1
        planned = self._held.pop((run_key, step_key, nxt), None)
        if planned is None:
            planned = [self._rerun(run_key, step_key, nxt)]
        self._released.extend(planned)
        self._latest[(run_key, step_key)] = planned[-1]
        self.retries += 1
        return nxt

    def _rerun(self, run_key: str, step_key: str, attempt: int) -> dict[str, Any]:
        last = self._latest[(run_key, step_key)]
        start = _parse(last["ended_at"]) + RETRY_DELAY
        took = _parse(last["ended_at"]) - _parse(last["started_at"])
        rec = {**last, "attempt": attempt, "started_at": _format(start), "ended_at": _format(start + took)}
        rec["attributes"] = {**last.get("attributes", {}), "retry_reason": "evalsvc"}
        if (run_key, step_key) in self._clean:
            rec["output"] = self._clean[(run_key, step_key)]
        return rec

    def take(self) -> list[dict[str, Any]]:
        """The records of the re-runs since the last call (for the connector to ingest)."""
        out, self._released = self._released, []
        return out


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _format(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class DemoAdapter:
    """Retries steps of the source ``demo`` on the demo's simulated orchestrator (registered by
    ``evalsvc demo`` for its own run only)."""

    source: ClassVar[str] = SOURCE
    kinds: ClassVar[frozenset[str]] = frozenset({"retry"})
    orchestrator: ClassVar[SimulatedOrchestrator | None] = None

    def perform(self, ctx: ActionContext) -> dict[str, Any]:
        orch = type(self).orchestrator
        if orch is None:
            raise ActionFailed("the demo's simulated orchestrator runs only inside `evalsvc demo`", retryable=False)
        attempt = orch.retry(ctx.run["run_key"], ctx.step["step_key"], int(ctx.step["attempt"]))
        return {"rerun": {"run_key": ctx.run["run_key"], "step_key": ctx.step["step_key"], "attempt": attempt}}
