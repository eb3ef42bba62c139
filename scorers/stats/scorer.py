"""``step_anomaly``: flags single steps that look unusual next to a fitted baseline.

The scorer is configuration only (``baseline`` name, optional pinned ``baseline_version``,
``alpha``); the pipeline loads the fitted baseline from the store and hands it over through
:meth:`StepAnomaly.with_baseline` before scoring (scorers never read the store). Without a fitted
baseline the result is ``skipped``::

    evaluators:
      - name: extract_anomaly
        scorer: step_anomaly
        target: {step: extract_invoice}
        params: {baseline: extract_prod, alpha: 0.01}

    >>> from scorers.registry import create
    >>> create("step_anomaly", {"baseline": "extract_prod"}).baseline_ref()
    ('extract_prod', None)
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

from pydantic import Field, PrivateAttr

from evalsvc.schemas import Score, StepPublic

from ..base import BaseScorer
from ..registry import register
from .anomaly import AnomalyModel
from .profile import Profile, anomaly_row

__all__ = ["NeedsBaseline", "StepAnomaly"]


@runtime_checkable
class NeedsBaseline(Protocol):
    """A scorer that scores against a fitted baseline: it names one, and receives it loaded."""

    def baseline_ref(self) -> tuple[str, int | None]: ...

    def with_baseline(self, profile: Profile, *, version: int) -> Any: ...


def _fmt(x: float) -> str:
    return f"{x:.0f}" if 1e4 <= abs(x) < 1e12 else f"{x:.4g}"


@register
class StepAnomaly(BaseScorer):
    """Flags a step whose latency, tokens, cost, output length... are jointly unusual next to the
    baseline (IsolationForest, conformal p-value). ``value`` is the p-value; passes when ``>= alpha``."""

    name: ClassVar[str] = "step_anomaly"
    kind: ClassVar[Literal["rule", "statistical", "llm"]] = "statistical"
    baseline: str = Field(
        min_length=1, max_length=128, pattern=r"^[A-Za-z][A-Za-z0-9_.-]*$", description="Baseline name."
    )
    baseline_version: int | None = Field(default=None, ge=1, description="Pin a version (default: the current).")
    alpha: float = Field(default=0.01, gt=0, lt=1, description="Flag a step whose p-value is under this.")

    _profile: Profile | None = PrivateAttr(default=None)
    _version: int | None = PrivateAttr(default=None)
    _queue: list[tuple[list[float | None], asyncio.Future[float]]] = PrivateAttr(default_factory=list)

    def baseline_ref(self) -> tuple[str, int | None]:
        return self.baseline, self.baseline_version

    def with_baseline(self, profile: Profile, *, version: int) -> StepAnomaly:
        bound = self.model_copy()
        bound._profile, bound._version, bound._queue = profile, version, []
        return bound

    async def _p_value(self, model: AnomalyModel, row: list[float | None]) -> float:
        """The step's p-value, computed in a batch with the steps being scored at the same time
        (the pipeline scores up to 32 at once): a forest scores 32 rows in about the time of one."""
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._queue.append((row, future))
        if len(self._queue) == 1:  # the first of a batch: let the others queue up, then score them all
            await asyncio.sleep(0)
            batch, self._queue = self._queue, []
            try:
                values = await asyncio.to_thread(model.p_values, [r for r, _ in batch])
            except Exception as exc:  # every step of the batch gets the error on its own row
                for _, f in batch:
                    f.set_exception(exc)
            else:
                for (_, f), p in zip(batch, values, strict=True):
                    f.set_result(float(p))
        return await future

    async def score(self, step: StepPublic) -> Score:
        profile = self._profile
        if profile is None:
            return Score(explanation=f"no baseline {self.baseline!r} fitted"[:64])
        model = profile.anomaly
        if model is None:
            return Score(explanation="baseline has no anomaly model")
        row = anomaly_row(step, model.features)
        if all(v is None for v in row):
            return Score(explanation="step has none of the anomaly features")
        p = await self._p_value(model, row)
        passed = p >= self.alpha
        outside = [] if passed else model.explain(row)
        metadata: dict[str, Any] = {
            "baseline": self.baseline,
            "baseline_version": self._version,
            "p_value": p,
            "features": dict(zip(model.features, row, strict=True)),
        }
        if passed:
            return Score(value=p, passed=True, label="normal", metadata=metadata)
        metadata["outside"] = outside
        why = "; ".join(
            f"{e['feature']} {_fmt(e['value'])} (baseline median {_fmt(e['baseline_median'])}, "
            f"99% within {_fmt(e['baseline_range'][0])}-{_fmt(e['baseline_range'][1])})"
            for e in outside[:3]
        )
        explanation = f"unusual next to baseline {self.baseline!r} v{self._version}: p={p:.4f} < alpha {self.alpha}" + (
            f"; {why}" if why else " (an unusual combination of features)"
        )
        return Score(value=p, passed=False, label="anomalous", explanation=explanation, metadata=metadata)
