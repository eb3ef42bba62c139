"""Per-step multivariate anomaly: an IsolationForest on a step's latency, tokens, cost, length...

The model is split conformal: the forest is fitted on one half of the baseline's steps and the
other half calibrates it, so a step's p-value (the share of calibration steps at least as unusual,
``(k + 1) / (n + 1)``) is exact for a step drawn like the baseline. A step is flagged when its
p-value is under ``alpha``, so on unchanged traffic about ``alpha`` of the steps are flagged.

How unusual a step is: the forest's anomaly score, plus how far the step lies outside the range
of the fitting half on each feature (in interquartile ranges). An isolation forest cannot tell a
value just past the largest one it saw from one a hundred times larger (both land in the same
leaf); the range term can.

Only the sample rows are stored (JSON); the forest is refitted from them with a fixed
``random_state``, which gives the same forest every time::

    >>> import numpy as np
    >>> from scorers.stats.anomaly import AnomalyModel
    >>> rng = np.random.default_rng(0)
    >>> rows = [[float(x), float(y)] for x, y in rng.normal(100, 10, (400, 2))]
    >>> model = AnomalyModel.fit(["latency_ms", "tokens"], rows, seed=0)
    >>> model.p_value([100.0, 100.0]) > 0.1, model.p_value([400.0, 5.0]) < 0.01
    (True, True)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .twosample import Array

if TYPE_CHECKING:
    from sklearn.ensemble import IsolationForest  # type: ignore[import-untyped]

__all__ = ["AnomalyModel"]

N_ESTIMATORS = 100


def _transform(x: Array) -> Array:
    """Signed log: heavy tails (latency, cost) stop dominating the random splits."""
    out: Array = np.sign(x) * np.log1p(np.abs(x))
    return out


@dataclass
class AnomalyModel:
    features: list[str]
    medians: Array
    forest: IsolationForest
    calibration: Array  # anomaly scores of the held-out half, sorted
    quantiles: Array  # per feature: the baseline's 0.5% and 99.5% quantiles (for explanations)
    seed: int
    low: Array  # per feature: the fitting half's range and spread (transformed)
    high: Array
    spread: Array

    @classmethod
    def fit(
        cls,
        features: Sequence[str],
        rows: Sequence[Sequence[float | None]],
        *,
        seed: int,
        n_estimators: int = N_ESTIMATORS,
    ) -> AnomalyModel:
        """Fit from rows of feature values (None where a step lacks one); needs at least 20 rows."""
        if len(rows) < 20:
            raise ValueError(f"an anomaly model needs at least 20 baseline steps, got {len(rows)}")
        x = np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=np.float64)
        medians = np.nanmedian(x, axis=0)
        medians = np.where(np.isfinite(medians), medians, 0.0)
        filled = np.where(np.isnan(x), medians, x)
        order = np.random.default_rng(seed).permutation(len(filled))
        half = len(filled) // 2
        from sklearn.ensemble import IsolationForest  # (loaded on first use: it takes seconds)

        fitting = _transform(filled[order[:half]])
        forest = IsolationForest(n_estimators=n_estimators, random_state=seed)
        forest.fit(fitting)
        q1, q3 = np.quantile(fitting, [0.25, 0.75], axis=0)
        std = np.std(fitting, axis=0)
        # interquartile range; else the standard deviation; a constant feature: 1 (a factor of e)
        spread = np.where(q3 - q1 > 0, q3 - q1, np.where(std > 0, std, 1.0))
        quantiles = np.quantile(filled, [0.005, 0.5, 0.995], axis=0)
        model = cls(list(features), medians, forest, np.zeros(0), quantiles, seed,
                    fitting.min(axis=0), fitting.max(axis=0), spread)  # fmt: skip
        model.calibration = np.sort(model._scores(filled[order[half:]]))
        return model

    def _scores(self, x: Array) -> Array:
        t = _transform(x)
        beyond = np.maximum(t - self.high, 0) + np.maximum(self.low - t, 0)
        out: Array = -self.forest.score_samples(t) + (beyond / self.spread).sum(axis=1)
        return out

    def _row(self, values: Sequence[float | None]) -> Array:
        x = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        return np.where(np.isnan(x), self.medians, x)

    def p_values(self, rows: Sequence[Sequence[float | None]]) -> Array:
        """Conformal p-values of steps: small means unusual next to the baseline."""
        if not rows:
            return np.zeros(0)
        x = np.vstack([self._row(r) for r in rows])
        scores = self._scores(x)
        at_least = len(self.calibration) - np.searchsorted(self.calibration, scores, side="left")
        out: Array = (at_least + 1) / (len(self.calibration) + 1)
        return out

    def p_value(self, values: Sequence[float | None]) -> float:
        return float(self.p_values([values])[0])

    def explain(self, values: Sequence[float | None]) -> list[dict[str, Any]]:
        """The features outside the baseline's central 99%, most extreme first."""
        out = []
        low, mid, high = self.quantiles
        for i, v in enumerate(values):
            if v is None or low[i] <= v <= high[i]:
                continue
            span = max(float(high[i] - low[i]), 1e-12)
            out.append(
                {
                    "feature": self.features[i],
                    "value": v,
                    "baseline_median": float(mid[i]),
                    "baseline_range": [float(low[i]), float(high[i])],
                    "excess": (v - float(high[i]) if v > high[i] else float(low[i]) - v) / span,
                }
            )
        return sorted(out, key=lambda e: -float(e["excess"]))
