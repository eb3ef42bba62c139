"""Two-sample drift statistics: a reference sample (the baseline) against a recent window.

Each function returns one :class:`DriftTest` (statistic, p-value where there is one, and whether it
crossed its threshold). They are pure numpy/scipy/scikit-learn; nothing here reads the store::

    >>> import numpy as np
    >>> from scorers.stats.twosample import ks_test, psi_test
    >>> rng = np.random.default_rng(0)
    >>> base, shifted = rng.normal(0, 1, 500), rng.normal(0.5, 1, 300)
    >>> ks_test(base, shifted, alpha=0.01).drifted
    True
    >>> round(psi_test(base, base[:250], threshold=0.2).value, 3) < 0.2
    True
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "OTHER",
    "UNSEEN",
    "DriftTest",
    "categorical_psi_test",
    "chi2_test",
    "ks_test",
    "psi_edges",
    "psi_test",
    "wasserstein_test",
]

Array = NDArray[np.float64]
UNSEEN = "(unseen)"
"""Bucket of the window's labels that the baseline never saw."""
OTHER = "(other)"
"""Bucket of labels too rare for the chi-square approximation (expected count under 5)."""
_EPS = 0.5  # additive smoothing of bin counts (a PSI bin may be empty on one side)


@dataclass(frozen=True)
class DriftTest:
    """One statistic of one feature: its value, p-value (None for PSI), threshold and verdict."""

    statistic: str
    value: float
    p_value: float | None
    threshold: float
    drifted: bool
    n_baseline: int
    n_window: int
    detail: dict[str, Any] = field(default_factory=dict)


def _finite(x: Any) -> Array:
    a = np.asarray(x, dtype=np.float64)
    return a[np.isfinite(a)]


def ks_test(baseline: Sequence[float] | Array, window: Sequence[float] | Array, *, alpha: float) -> DriftTest:
    """Two-sample Kolmogorov-Smirnov: the largest gap between the two empirical CDFs."""
    from scipy import stats  # type: ignore[import-untyped]  # (scipy and scikit-learn load on first use)

    b, w = _finite(baseline), _finite(window)
    res = stats.ks_2samp(b, w)
    p = float(res.pvalue)
    return DriftTest("ks", float(res.statistic), p, alpha, p < alpha, len(b), len(w))


def psi_edges(baseline: Sequence[float] | Array, *, bins: int = 10) -> list[float]:
    """Interior bin edges at the baseline's quantiles (ties collapse bins of discrete data)."""
    b = _finite(baseline)
    if len(b) == 0:
        return []
    qs = np.quantile(b, np.linspace(0, 1, bins + 1)[1:-1])
    return [float(x) for x in np.unique(qs)]


def _bin_props(values: Array, edges: Sequence[float]) -> Array:
    counts = np.bincount(np.searchsorted(np.asarray(edges), values, side="right"), minlength=len(edges) + 1)
    props: Array = (counts + _EPS) / (counts.sum() + _EPS * len(counts))
    return props


def _psi(expected: Array, actual: Array) -> float:
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def psi_test(
    baseline: Sequence[float] | Array,
    window: Sequence[float] | Array,
    *,
    threshold: float,
    edges: Sequence[float] | None = None,
) -> DriftTest:
    """Population stability index over the baseline's quantile bins (deciles by default).

    PSI is a distance, not a test: below 0.1 is usually read as stable, 0.1-0.25 as a moderate
    shift, above 0.25 as a large one. It has no p-value."""
    b, w = _finite(baseline), _finite(window)
    edges = list(edges) if edges is not None else psi_edges(b)
    expected, actual = _bin_props(b, edges), _bin_props(w, edges)
    value = _psi(expected, actual)
    detail = {"edges": edges, "baseline": expected.round(4).tolist(), "window": actual.round(4).tolist()}
    return DriftTest("psi", value, None, threshold, value >= threshold, len(b), len(w), detail)


def wasserstein_test(
    baseline: Sequence[float] | Array,
    window: Sequence[float] | Array,
    *,
    alpha: float,
    permutations: int = 200,
    seed: int = 0,
) -> DriftTest:
    """Earth mover's distance between the two samples, in units of the baseline's standard deviation,
    with a permutation p-value (the labels baseline/window shuffled ``permutations`` times)."""
    from scipy import stats

    b, w = _finite(baseline), _finite(window)
    scale = float(np.std(b)) or 1.0
    observed = float(stats.wasserstein_distance(b, w)) / scale
    pooled = np.concatenate([b, w])
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(permutations):
        perm = rng.permutation(pooled)
        if float(stats.wasserstein_distance(perm[: len(b)], perm[len(b) :])) / scale >= observed - 1e-12:
            hits += 1
    p = (hits + 1) / (permutations + 1)
    detail = {"distance": observed * scale, "baseline_std": scale, "permutations": permutations}
    return DriftTest("wasserstein", observed, p, alpha, p < alpha, len(b), len(w), detail)


def _buckets(baseline: Mapping[str, int], window: Mapping[str, int]) -> tuple[list[str], Array, Array]:
    labels = list(baseline)
    b = np.array([baseline[k] for k in labels], dtype=np.float64)
    w = np.array([window.get(k, 0) for k in labels], dtype=np.float64)
    unseen = sum(n for k, n in window.items() if k not in baseline)
    if unseen:
        labels.append(UNSEEN)
        b, w = np.append(b, 0.0), np.append(w, float(unseen))
    return labels, b, w


def chi2_test(baseline: Mapping[str, int], window: Mapping[str, int], *, alpha: float) -> DriftTest:
    """Chi-square test of homogeneity of the label mix (baseline counts against window counts).

    Labels whose expected count is under 5 on either side are pooled into one bucket, and labels
    the baseline never saw into another, so the approximation holds."""
    from scipy import stats

    labels, b, w = _buckets(baseline, window)
    nb, nw = b.sum(), w.sum()
    total = b + w
    keep = np.minimum(nb, nw) * total / max(nb + nw, 1) >= 5
    rare = ~keep
    if rare.any():
        labels = [lab for lab, k in zip(labels, keep, strict=True) if k] + [OTHER]
        b = np.append(b[keep], b[rare].sum())
        w = np.append(w[keep], w[rare].sum())
    nonzero = (b + w) > 0
    b, w = b[nonzero], w[nonzero]
    labels = [lab for lab, k in zip(labels, nonzero, strict=True) if k]
    if len(labels) < 2 or nb == 0 or nw == 0:
        return DriftTest("chi2", 0.0, 1.0, alpha, False, int(nb), int(nw), {"labels": labels})
    res = stats.chi2_contingency(np.vstack([b, w]), correction=False)
    p = float(res.pvalue)
    detail = {
        "labels": labels,
        "baseline": (b / nb).round(4).tolist(),
        "window": (w / nw).round(4).tolist(),
        "dof": int(res.dof),
    }
    return DriftTest("chi2", float(res.statistic), p, alpha, p < alpha, int(nb), int(nw), detail)


def categorical_psi_test(baseline: Mapping[str, int], window: Mapping[str, int], *, threshold: float) -> DriftTest:
    """PSI over the label mix (labels the baseline never saw pooled into ``(unseen)``)."""
    labels, b, w = _buckets(baseline, window)
    expected = (b + _EPS) / (b.sum() + _EPS * len(b))
    actual = (w + _EPS) / (w.sum() + _EPS * len(w))
    value = _psi(expected, actual) if len(labels) else 0.0
    detail = {"labels": labels, "baseline": expected.round(4).tolist(), "window": actual.round(4).tolist()}
    return DriftTest("psi", value, None, threshold, value >= threshold, int(b.sum()), int(w.sum()), detail)


def finite_or_none(x: float | None) -> float | None:
    """JSON-safe number (NaN and infinities become None)."""
    return None if x is None or not math.isfinite(x) else x
