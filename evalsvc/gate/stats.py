"""The CI gate's statistics: paired comparisons of a candidate with its baseline, per evaluator.

Pass/fail verdicts are compared with the exact McNemar test (a binomial test on the discordant
pairs, :func:`scipy.stats.binomtest`) and a conditional exact (Clopper-Pearson) interval of the
pass-rate difference; scores with a paired bootstrap of the mean difference
(:func:`scipy.stats.bootstrap` on the per-item differences). Each comparison carries two one-sided
p-values: ``p_worse`` (H0: the candidate is not worse) and ``p_noninferior`` (H0: the candidate
is worse by the margin or more), and the minimum detectable effect (MDE) at the sample size, for
the power check. :func:`decide` turns them into a verdict::

    >>> import numpy as np
    >>> base = np.array([True] * 360 + [False] * 40)
    >>> c = paired_binary(base, base.copy(), margin=0.02, alpha=0.05, power=0.8)
    >>> c.diff, c.p_worse
    (0.0, 1.0)
    >>> decide(c, p_worse=c.p_worse, alpha=0.05, min_items=20).verdict
    'PASS'
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats  # type: ignore[import-untyped]

__all__ = ["Comparison", "Decision", "decide", "holm", "mde", "paired_binary", "paired_scores"]

Verdict = Literal["PASS", "REGRESSION", "INCONCLUSIVE"]


@dataclass(frozen=True, slots=True)
class Comparison:
    """One evaluator's paired comparison; rates and differences are fractions (0.02 = 2 points)."""

    metric: Literal["pass_rate", "score"]
    n: int
    baseline: float
    candidate: float
    diff: float  # candidate - baseline
    low: float  # the (1 - 2 alpha) two-sided interval of diff: one-sided alpha bounds
    high: float
    p_worse: float
    p_noninferior: float
    mde: float
    margin: float
    worse: int = 0  # pass/fail: items the baseline passed and the candidate failed
    better: int = 0  # ... and the other way round

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    reason: str
    powered: bool


def _pts(x: float) -> str:
    return f"{x * 100:.1f} points"


def _z(q: float) -> float:
    return float(stats.norm.ppf(q))


def mde(*, sd: float, n: int, alpha: float, power: float) -> float:
    """The smallest true drop that a one-sided test at ``alpha`` detects with ``power``, for paired
    per-item differences of standard deviation ``sd`` over ``n`` items (normal approximation)."""
    if n <= 0:
        return math.inf
    return (_z(1 - alpha) + _z(power)) * sd / math.sqrt(n)


def paired_binary(
    baseline: ArrayLike, candidate: ArrayLike, *, margin: float, alpha: float, power: float
) -> Comparison:
    """Exact McNemar on paired pass/fail verdicts (item ``i`` of both arrays is the same item).

    Conditional on the ``m`` discordant pairs, the candidate-better count is binomial(m, pi) and
    the difference is ``(2 pi - 1) m / n``: the Clopper-Pearson interval of ``pi`` gives the
    interval of the difference, and a one-sided binomial test at ``pi0 = 1/2 - margin n / (2m)``
    the non-inferiority p-value. The MDE uses an upper (1 - alpha) bound of the discordance rate,
    so that a few items that happen to agree do not pass for a powered comparison."""
    b = np.asarray(baseline, dtype=bool)
    c = np.asarray(candidate, dtype=bool)
    n = int(b.size)
    if n == 0:
        return Comparison("pass_rate", 0, math.nan, math.nan, math.nan, -math.inf, math.inf, 1.0, 1.0, math.inf,
                          margin)  # fmt: skip
    worse = int(np.count_nonzero(b & ~c))
    better = int(np.count_nonzero(~b & c))
    m = worse + better
    diff = (better - worse) / n
    if m == 0:
        low = high = 0.0
        p_worse = 1.0
        p_ni = 0.0 if margin > 0 else 1.0
    else:
        ci = stats.binomtest(better, m).proportion_ci(confidence_level=1 - 2 * alpha, method="exact")
        low, high = (2 * ci.low - 1) * m / n, (2 * ci.high - 1) * m / n
        p_worse = float(stats.binomtest(worse, m, 0.5, alternative="greater").pvalue)
        pi0 = 0.5 - margin * n / (2 * m)
        p_ni = 0.0 if pi0 <= 0 else float(stats.binomtest(better, m, pi0, alternative="greater").pvalue)
    disc_upper = float(stats.beta.ppf(1 - alpha, m + 1, n - m)) if m < n else 1.0
    sd = math.sqrt(max(disc_upper - diff * diff, 0.0))
    return Comparison(
        metric="pass_rate",
        n=n,
        baseline=float(b.mean()),
        candidate=float(c.mean()),
        diff=diff,
        low=float(low),
        high=float(high),
        p_worse=p_worse,
        p_noninferior=p_ni,
        mde=mde(sd=sd, n=n, alpha=alpha, power=power),
        margin=margin,
        worse=worse,
        better=better,
    )


def paired_scores(
    baseline: ArrayLike,
    candidate: ArrayLike,
    *,
    margin: float,
    alpha: float,
    power: float,
    resamples: int = 2000,
    seed: int = 0,
) -> Comparison:
    """Paired bootstrap (percentile) of the mean score difference. The p-values are read off the
    same bootstrap distribution (the share of resampled means at or above 0, at or below
    ``-margin``), so the verdict always agrees with the printed interval. The MDE uses an upper
    (1 - alpha) chi-square bound of the differences' standard deviation."""
    b = np.asarray(baseline, dtype=float)
    c = np.asarray(candidate, dtype=float)
    d = c - b
    n = int(d.size)
    if n == 0:
        return Comparison("score", 0, math.nan, math.nan, math.nan, -math.inf, math.inf, 1.0, 1.0, math.inf, margin)
    mean = float(d.mean())
    if n == 1 or float(np.ptp(d)) == 0.0:  # every item moved by the same amount: nothing to resample
        low = high = mean
        p_worse = 1.0 if mean >= 0 else 0.0
        p_ni = 1.0 if mean <= -margin else 0.0
        sd = 0.0
    else:
        res = stats.bootstrap((d,), np.mean, confidence_level=1 - 2 * alpha, n_resamples=resamples,
                              method="percentile", rng=np.random.default_rng(seed), vectorized=True)  # fmt: skip
        boot = np.asarray(res.bootstrap_distribution)
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
        p_worse = (np.count_nonzero(boot >= 0) + 1) / (boot.size + 1)
        p_ni = (np.count_nonzero(boot <= -margin) + 1) / (boot.size + 1)
        sd = float(d.std(ddof=1))
    sd_upper = sd * math.sqrt((n - 1) / float(stats.chi2.ppf(alpha, n - 1))) if n > 1 else math.inf
    return Comparison(
        metric="score",
        n=n,
        baseline=float(b.mean()),
        candidate=float(c.mean()),
        diff=mean,
        low=low,
        high=high,
        p_worse=float(p_worse),
        p_noninferior=float(p_ni),
        mde=mde(sd=sd_upper, n=n, alpha=alpha, power=power),
        margin=margin,
    )


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given): reject where adjusted < alpha."""
    p = np.asarray(pvalues, dtype=float)
    k = p.size
    if k == 0:
        return []
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, p[order] * (k - np.arange(k)))
    adjusted = np.empty(k)
    adjusted[order] = np.maximum.accumulate(scaled)
    return [float(x) for x in adjusted]


def decide(c: Comparison, *, p_worse: float, alpha: float, min_items: int) -> Decision:
    """The verdict of one comparison, ``p_worse`` being its Holm-adjusted p-value.

    1. REGRESSION: significantly worse (``p_worse < alpha``) and not shown non-inferior (a drop
       within the margin, proven on many items, is tolerated). Possible even when underpowered.
    2. Power check: fewer than ``min_items`` pairs, or an MDE above the margin: INCONCLUSIVE.
    3. PASS: non-inferior (``p_noninferior < alpha``: the drop is smaller than the margin).
    4. INCONCLUSIVE otherwise."""
    powered = c.n >= min_items and c.mde <= c.margin
    non_inferior = c.p_noninferior < alpha
    if p_worse < alpha and not non_inferior:
        return Decision("REGRESSION", f"worse by {_pts(-c.diff)} (p={p_worse:.3g}, Holm-adjusted)", powered)
    if c.n < min_items:
        return Decision("INCONCLUSIVE", f"underpowered: {c.n} paired items, fewer than {min_items}", False)
    if not powered:
        return Decision("INCONCLUSIVE", f"underpowered: MDE {_pts(c.mde)} is above the margin {_pts(c.margin)}", False)
    if non_inferior:
        return Decision("PASS", f"non-inferior within {_pts(c.margin)} (p={c.p_noninferior:.3g})", True)
    return Decision("INCONCLUSIVE", f"cannot rule out a drop of {_pts(c.margin)} (p={c.p_noninferior:.3g})", True)
