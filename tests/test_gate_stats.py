"""The gate's statistics over repeated trials (fixed seeds): A/A comparisons fail at most at the
nominal rate, a planted 5-point regression is caught at an adequate sample size, an underpowered
comparison is INCONCLUSIVE and never PASS."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from evalsvc.gate.stats import decide, holm, paired_binary, paired_scores

ALPHA, POWER, MARGIN = 0.05, 0.8, 0.02
TRIALS = 300


def _allowed_failures(trials: int, rate: float = ALPHA) -> int:
    """The most failures a test at ``rate`` shows in ``trials`` trials, except with chance 1/1000."""
    return int(sps.binom.ppf(0.999, trials, rate))


def _latent(rng: np.random.Generator, trials: int, n: int) -> np.ndarray:
    """Per-item pass probabilities: most items are easy, some are hard, a few are a coin flip
    (a noisy judge), so that two runs of the same code disagree on some items."""
    kind = rng.random((trials, n))
    return np.where(kind < 0.75, 0.97, np.where(kind < 0.9, 0.1, 0.5))


def _verdicts(comparisons: list[object], p_adjusted: list[float] | None = None) -> list[str]:
    out = []
    for i, c in enumerate(comparisons):
        p = p_adjusted[i] if p_adjusted is not None else c.p_worse  # type: ignore[attr-defined]
        out.append(decide(c, p_worse=p, alpha=ALPHA, min_items=20).verdict)  # type: ignore[arg-type]
    return out


def test_aa_pass_fail_fails_at_most_at_the_nominal_rate() -> None:
    rng = np.random.default_rng(20261122)
    n = 400
    p = _latent(rng, TRIALS, n)
    base = rng.random((TRIALS, n)) < p  # the same items run twice: independent draws
    cand = rng.random((TRIALS, n)) < p
    comps = [paired_binary(base[t], cand[t], margin=MARGIN, alpha=ALPHA, power=POWER) for t in range(TRIALS)]
    fails = _verdicts(comps).count("REGRESSION")
    assert fails <= _allowed_failures(TRIALS)
    # the exact test is valid at the nominal level: its p-values are not smaller than uniform ones
    assert np.mean([c.p_worse < ALPHA for c in comps]) <= _allowed_failures(TRIALS) / TRIALS


def test_aa_scores_fail_at_most_at_the_nominal_rate() -> None:
    rng = np.random.default_rng(7)
    trials, n = 200, 300
    latent = rng.beta(4, 2, size=(trials, n))
    base = np.clip(latent + rng.normal(0, 0.1, (trials, n)), 0, 1)
    cand = np.clip(latent + rng.normal(0, 0.1, (trials, n)), 0, 1)
    comps = [
        paired_scores(base[t], cand[t], margin=MARGIN, alpha=ALPHA, power=POWER, resamples=1000, seed=t)
        for t in range(trials)
    ]
    assert _verdicts(comps).count("REGRESSION") <= _allowed_failures(trials)


def test_aa_across_evaluators_with_holm_keeps_the_familywise_rate() -> None:
    rng = np.random.default_rng(3)
    k, n = 3, 400
    failed_builds = 0
    p = _latent(rng, TRIALS * k, n).reshape(TRIALS, k, n)
    base = rng.random(p.shape) < p
    cand = rng.random(p.shape) < p
    for t in range(TRIALS):
        comps = [paired_binary(base[t, e], cand[t, e], margin=MARGIN, alpha=ALPHA, power=POWER) for e in range(k)]
        adjusted = holm([c.p_worse for c in comps])
        failed_builds += "REGRESSION" in _verdicts(comps, adjusted)  # type: ignore[arg-type]
    assert failed_builds <= _allowed_failures(TRIALS)


def test_planted_five_point_regression_is_caught_at_an_adequate_sample_size() -> None:
    rng = np.random.default_rng(11)
    n = 1000
    p = _latent(rng, TRIALS, n)
    base = rng.random((TRIALS, n)) < p
    cand = rng.random((TRIALS, n)) < p
    # the change breaks items that passed: 5 points of pass rate on average
    drop = 0.05 / cand.mean(axis=1, keepdims=True)
    cand &= ~(rng.random((TRIALS, n)) < drop)
    comps = [paired_binary(base[t], cand[t], margin=MARGIN, alpha=ALPHA, power=POWER) for t in range(TRIALS)]
    assert np.median([c.mde for c in comps]) < 0.05  # adequate: the gate's own power check says so
    verdicts = _verdicts(comps)
    assert verdicts.count("REGRESSION") >= 0.9 * TRIALS
    assert verdicts.count("PASS") == 0


def test_planted_score_regression_is_caught() -> None:
    rng = np.random.default_rng(5)
    trials, n = 100, 400
    latent = rng.beta(4, 2, size=(trials, n))
    base = np.clip(latent + rng.normal(0, 0.1, (trials, n)), 0, 1)
    cand = np.clip(latent - 0.05 + rng.normal(0, 0.1, (trials, n)), 0, 1)
    comps = [
        paired_scores(base[t], cand[t], margin=MARGIN, alpha=ALPHA, power=POWER, resamples=1000, seed=t)
        for t in range(trials)
    ]
    assert _verdicts(comps).count("REGRESSION") >= 0.9 * trials


@pytest.mark.parametrize("n", [10, 30, 100])
def test_underpowered_comparison_is_inconclusive_never_pass(n: int) -> None:
    rng = np.random.default_rng(n)
    p = _latent(rng, TRIALS, n)
    base = rng.random((TRIALS, n)) < p
    verdicts = []
    for t in range(TRIALS):
        # even a candidate identical to the baseline cannot pass on so few items
        for cand in (base[t], rng.random(n) < p[t]):
            c = paired_binary(base[t], cand, margin=MARGIN, alpha=ALPHA, power=POWER)
            assert c.mde > MARGIN
            verdicts.append(decide(c, p_worse=c.p_worse, alpha=ALPHA, min_items=5).verdict)
    assert "PASS" not in verdicts
    assert verdicts.count("INCONCLUSIVE") >= len(verdicts) - _allowed_failures(len(verdicts))


def test_large_identical_comparison_passes() -> None:
    base = np.array([True] * 900 + [False] * 100)
    c = paired_binary(base, base.copy(), margin=MARGIN, alpha=ALPHA, power=POWER)
    assert (c.diff, c.low, c.high) == (0.0, 0.0, 0.0)
    assert decide(c, p_worse=c.p_worse, alpha=ALPHA, min_items=20).verdict == "PASS"


def test_small_drop_within_the_margin_is_tolerated_on_many_items() -> None:
    rng = np.random.default_rng(1)
    n = 20_000
    base = rng.random(n) < 0.9
    cand = base.copy()
    cand[np.flatnonzero(base)[:100]] = False  # half a point worse: significant, but within 2 points
    c = paired_binary(base, cand, margin=MARGIN, alpha=ALPHA, power=POWER)
    assert c.p_worse < 1e-6 and c.p_noninferior < ALPHA
    assert decide(c, p_worse=c.p_worse, alpha=ALPHA, min_items=20).verdict == "PASS"


def test_mcnemar_matches_the_binomial_test_and_the_interval_brackets_the_difference() -> None:
    base = np.array([True] * 60 + [False] * 40)
    cand = base.copy()
    cand[:12] = False  # 12 worse
    cand[60:63] = True  # 3 better
    c = paired_binary(base, cand, margin=MARGIN, alpha=ALPHA, power=POWER)
    assert (c.worse, c.better) == (12, 3)
    assert c.p_worse == pytest.approx(sps.binomtest(12, 15, 0.5, alternative="greater").pvalue)
    assert c.diff == pytest.approx(-0.09)
    assert c.low < c.diff < c.high < 0


def test_holm_adjusts_step_down() -> None:
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.001]) == pytest.approx([0.5, 0.002])
    assert holm([]) == []


def test_score_interval_agrees_with_the_p_values() -> None:
    rng = np.random.default_rng(2)
    base = rng.random(200)
    cand = np.clip(base - 0.1 + rng.normal(0, 0.05, 200), 0, 1)
    c = paired_scores(base, cand, margin=MARGIN, alpha=ALPHA, power=POWER, seed=0)
    assert c.high < 0 and c.p_worse < ALPHA
    same = paired_scores(base, base, margin=MARGIN, alpha=ALPHA, power=POWER)
    assert (same.diff, same.low, same.high, same.p_worse) == (0.0, 0.0, 0.0, 1.0)
