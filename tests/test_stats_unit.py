"""The statistics on synthetic data: planted shifts are detected, and on A/A splits (both samples
drawn alike) each test's false-alarm rate over repeated trials stays at its alpha."""

from __future__ import annotations

import doctest
import importlib
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from scipy import stats

from evalsvc.schemas import StepPublic
from scorers.stats import AnomalyModel, Profile, ProfileSpec, TextModel, fit_profile
from scorers.stats.features import check_feature, numeric_value
from scorers.stats.profile import anomaly_row
from scorers.stats.twosample import categorical_psi_test, chi2_test, ks_test, psi_test, wasserstein_test

TRIALS = 200
ALPHA = 0.05
# a test at level alpha alarms on k of TRIALS A/A trials, k ~ Binomial(TRIALS, alpha) at most: these
# bounds hold with probability 99.8% (two-sided), so a correct test fails here about once in 500 runs
# (the seeds are fixed, so the outcome is too)
UPPER = int(stats.binom.ppf(0.999, TRIALS, ALPHA))
LOWER = int(stats.binom.ppf(0.001, TRIALS, ALPHA))
WORDS = [
    "invoice",
    "total",
    "amount",
    "due",
    "payment",
    "vendor",
    "account",
    "balance",
    "receipt",
    "order",
    "tax",
    "net",
    "gross",
    "euro",
    "paid",
]
NEW_WORDS = ["refund", "chargeback", "dispute", "fraud", "complaint", "lawyer", "cancel"]


@pytest.mark.parametrize(
    "module",
    ["features", "twosample", "text", "anomaly", "profile", "scorer"],
)
def test_module_examples_run(module: str) -> None:
    result = doctest.testmod(importlib.import_module(f"scorers.stats.{module}"))
    assert result.attempted > 0 and result.failed == 0


# ---- planted shifts -----------------------------------------------------------------------------


def test_numeric_mean_shift_is_detected_by_every_statistic() -> None:
    rng = np.random.default_rng(1)
    base, shifted = rng.lognormal(7, 0.3, 1000), rng.lognormal(7.15, 0.3, 300)  # latency up ~16%
    assert ks_test(base, shifted, alpha=0.01).drifted
    assert psi_test(base, shifted, threshold=0.1).drifted
    w = wasserstein_test(base, shifted, alpha=0.01, permutations=199, seed=0)
    assert w.drifted and w.p_value == pytest.approx(1 / 200)
    same = rng.lognormal(7, 0.3, 300)
    assert not psi_test(base, same, threshold=0.1).drifted


def test_category_mix_change_is_detected() -> None:
    rng = np.random.default_rng(2)
    labels = ["invoice", "receipt", "other"]
    base = Counter(rng.choice(labels, 1000, p=[0.6, 0.3, 0.1]).tolist())
    moved = Counter(rng.choice(labels, 300, p=[0.45, 0.35, 0.2]).tolist())
    chi2 = chi2_test(base, moved, alpha=0.01)
    assert chi2.drifted and chi2.p_value is not None and chi2.p_value < 1e-4
    assert categorical_psi_test(base, moved, threshold=0.05).drifted
    # a label the baseline never saw is pooled, not lost
    novel = Counter({"invoice": 150, "receipt": 90, "spam": 60})
    t = chi2_test(base, novel, alpha=0.01)
    assert t.drifted and "(unseen)" in t.detail["labels"]


def _texts(rng: np.random.Generator, n: int, vocab: list[str], new_share: float = 0.0) -> list[str]:
    out = []
    for _ in range(n):
        words = [
            str(rng.choice(NEW_WORDS)) if rng.random() < new_share else str(rng.choice(vocab))
            for _ in range(int(rng.integers(5, 15)))
        ]
        out.append(" ".join(words))
    return out


def test_vocabulary_change_is_detected() -> None:
    rng = np.random.default_rng(3)
    model = TextModel.fit(_texts(rng, 400, WORDS), seed=0)
    # new words: the baseline's TF-IDF vocabulary cannot see them, the out-of-vocabulary share can
    _, oov = model.compare(_texts(rng, 150, WORDS, new_share=0.3), alpha=0.01, permutations=199)
    assert oov.drifted and oov.value > 0.2 and oov.detail["baseline_oov"] < 0.01
    # a change of word mix inside the vocabulary: TF-IDF sees it, out-of-vocabulary does not
    skewed = _texts(rng, 150, WORDS[:8])
    cosine, oov = model.compare(skewed, alpha=0.01, permutations=199)
    assert cosine.drifted and not oov.drifted
    assert set(cosine.detail["falling_terms"]) <= set(WORDS[8:]) and set(cosine.detail["rising_terms"]) <= set(WORDS)
    # an unchanged window raises neither
    cosine, oov = model.compare(_texts(rng, 150, WORDS), alpha=0.01, permutations=199)
    assert not cosine.drifted and not oov.drifted


def test_anomalous_steps_are_flagged() -> None:
    rng = np.random.default_rng(4)
    normal = np.column_stack([rng.lognormal(7, 0.3, 1000), rng.normal(800, 100, 1000), rng.normal(0.01, 0.002, 1000)])
    model = AnomalyModel.fit(["latency_ms", "tokens", "cost_usd"], normal.tolist(), seed=0)
    odd = [[1100.0, 4000.0, 0.05], [30000.0, 800.0, 0.01], [1100.0, 795.0, 0.2]]
    p = model.p_values(odd)
    assert (p < 0.01).all()
    explained = model.explain(odd[1])
    assert explained[0]["feature"] == "latency_ms"
    fresh = np.column_stack([rng.lognormal(7, 0.3, 400), rng.normal(800, 100, 400), rng.normal(0.01, 0.002, 400)])
    flagged = int((model.p_values(fresh.tolist()) < ALPHA).sum())
    assert LOWER * 2 <= flagged <= int(stats.binom.ppf(0.999, 400, ALPHA))  # conformal: alpha of fresh steps


def test_missing_features_are_imputed_not_flagged() -> None:
    rng = np.random.default_rng(5)
    rows = [[float(x), float(y)] for x, y in zip(rng.normal(100, 10, 200), rng.normal(50, 5, 200), strict=True)]
    model = AnomalyModel.fit(["a", "b"], rows, seed=0)
    assert model.p_value([None, 50.0]) > 0.05


def test_fitted_state_is_json_and_refits_identically() -> None:
    import orjson

    steps = [_step(i, latency=100 + i % 37, label=["a", "b"][i % 2], text=f"word{i % 5} total") for i in range(300)]
    spec = ProfileSpec(numeric=["latency_ms"], categorical=["output.label"], text=["output.reply"])
    state = fit_profile(steps, spec=spec, seed=0)
    again = orjson.loads(orjson.dumps(state))  # plain JSON round trip: no pickle anywhere
    one, two = Profile(again).anomaly, Profile(again).anomaly
    assert one is not None and two is not None
    probe = [[150.0, None, None, 500.0]][0][: len(one.features)]
    assert one.p_value(probe) == two.p_value(probe)  # fixed random_state: the same forest
    assert set(state["numeric"]) == {"latency_ms", "length:output.reply", "words:output.reply"}


def test_feature_names_are_checked() -> None:
    assert check_feature("length:output.reply") == "length:output.reply"
    with pytest.raises(ValueError, match="not a step field"):
        check_feature("latency")
    with pytest.raises(ValueError, match="feature function"):
        check_feature("median:output")
    assert numeric_value(_step(1, latency=5.0), "output.missing") is None


def _step(i: int, *, latency: float, label: str = "a", text: str = "x") -> StepPublic:
    return StepPublic(id=i, run_id=i, source="json", run_key=f"r{i}", step_key="s", attempt=1, name="s", kind="llm",
                      status="completed", latency_ms=latency, output={"label": label, "reply": text})  # fmt: skip


def test_anomaly_scorer_batches_concurrent_steps_with_the_same_verdicts() -> None:
    import asyncio

    from scorers.registry import create

    rng = np.random.default_rng(6)
    steps = [_step(i, latency=float(rng.lognormal(7, 0.3)), text="ok") for i in range(300)]
    state = fit_profile(steps, spec=ProfileSpec(numeric=[], anomaly=["latency_ms", "output_length"]), seed=0)
    scorer = create("step_anomaly", {"baseline": "b", "alpha": 0.01})
    unbound = asyncio.run(scorer.score(steps[0]))
    assert unbound.value is None and unbound.explanation == "no baseline 'b' fitted"
    profile = Profile(state)
    bound = scorer.with_baseline(profile, version=7)  # type: ignore[attr-defined]
    probes = [*steps[:40], _step(999, latency=90_000.0, text="ok")]

    async def all_at_once() -> list[Any]:
        return list(await asyncio.gather(*(bound.score(s) for s in probes)))

    scores = asyncio.run(all_at_once())
    model = profile.anomaly
    assert model is not None
    for step, score in zip(probes, scores, strict=True):
        assert score.value == model.p_value(anomaly_row(step, model.features))
    flagged = scores[-1]
    assert flagged.passed is False and flagged.label == "anomalous"
    assert "latency_ms 90000" in (flagged.explanation or "") and "v7" in (flagged.explanation or "")
    assert flagged.metadata["baseline_version"] == 7 and flagged.metadata["outside"][0]["feature"] == "latency_ms"


# ---- A/A: false alarms at alpha -----------------------------------------------------------------


def _aa(trial: Callable[[np.random.Generator], bool], trials: int = TRIALS) -> int:
    return sum(trial(np.random.default_rng(1000 + i)) for i in range(trials))


def _ks(rng: np.random.Generator) -> bool:
    return ks_test(rng.lognormal(7, 0.3, 300), rng.lognormal(7, 0.3, 150), alpha=ALPHA).drifted


def _wasserstein(rng: np.random.Generator) -> bool:
    b, w = rng.gamma(2, 100, 200), rng.gamma(2, 100, 100)
    return wasserstein_test(b, w, alpha=ALPHA, permutations=99, seed=int(rng.integers(1 << 30))).drifted


def _chi2(rng: np.random.Generator) -> bool:
    p = [0.5, 0.3, 0.15, 0.05]
    labels = ["a", "b", "c", "d"]
    b = Counter(rng.choice(labels, 400, p=p).tolist())
    w = Counter(rng.choice(labels, 200, p=p).tolist())
    return chi2_test(b, w, alpha=ALPHA).drifted


def _tfidf(rng: np.random.Generator) -> bool:
    model = TextModel.fit(_texts(rng, 120, WORDS), seed=int(rng.integers(1 << 30)))
    return model.cosine_test(_texts(rng, 60, WORDS), alpha=ALPHA, permutations=99).drifted


def _oov(rng: np.random.Generator) -> bool:
    words = [f"w{i}" for i in range(300)]  # a long tail: held-out texts do meet unknown words
    zipf = 1 / np.arange(1, 301)
    zipf /= zipf.sum()

    def texts(n: int) -> list[str]:
        return [" ".join(rng.choice(words, int(rng.integers(5, 20)), p=zipf)) for _ in range(n)]

    return TextModel.fit(texts(200), seed=int(rng.integers(1 << 30))).oov_test(texts(100), alpha=ALPHA).drifted


@pytest.mark.slow
@pytest.mark.parametrize(
    ("trial", "exact"),
    [(_ks, True), (_wasserstein, True), (_chi2, True), (_tfidf, True), (_oov, False)],
    ids=["ks", "wasserstein", "chi2", "tfidf_cosine", "oov"],
)
def test_false_alarm_rate_on_aa_splits_stays_at_alpha(
    trial: Callable[[np.random.Generator], bool], exact: bool
) -> None:
    alarms = _aa(trial)
    assert alarms <= UPPER, f"{alarms} false alarms in {TRIALS} A/A trials at alpha {ALPHA} (at most {UPPER})"
    if exact:  # and the test is not blind: it alarms about as often as it should
        assert alarms >= LOWER, f"only {alarms} alarms in {TRIALS} trials: the test is too conservative"


@pytest.mark.slow
def test_anomaly_false_flag_rate_on_aa_splits_stays_at_alpha() -> None:
    def trial(rng: np.random.Generator) -> bool:
        rows: Any = np.column_stack([rng.lognormal(7, 0.3, 200), rng.poisson(800, 200)]).tolist()
        # the p-values' validity does not depend on the forest's size: a small one keeps 200 fits quick
        model = AnomalyModel.fit(["latency_ms", "tokens"], rows, seed=int(rng.integers(1 << 30)), n_estimators=20)
        fresh = [float(rng.lognormal(7, 0.3)), float(rng.poisson(800))]
        return model.p_value(fresh) < ALPHA

    alarms = _aa(trial)
    assert LOWER <= alarms <= UPPER
