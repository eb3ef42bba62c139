"""A baseline profile: what the drift tests and the anomaly scorer need from a target's history.

:func:`fit_profile` turns baseline steps into a JSON-safe state (samples, bin edges, label counts,
texts; never a pickle); :class:`Profile` loads a state back and compares a window of steps with
it. Both are pure: the store side lives in ``evalsvc.pipeline.baselines``::

    >>> from evalsvc.schemas import StepPublic
    >>> from scorers.stats.profile import Profile, ProfileSpec, fit_profile
    >>> def step(i, ms):
    ...     return StepPublic(id=i, run_id=i, source="json", run_key=f"r{i}", step_key="s", attempt=1,
    ...                       name="s", kind="llm", status="completed", latency_ms=ms)
    >>> spec = ProfileSpec(numeric=["latency_ms"], anomaly=[])
    >>> state = fit_profile([step(i, 100 + i % 50) for i in range(200)], spec=spec, seed=0)
    >>> drifts = Profile(state).compare([step(i, 180 + i % 50) for i in range(100)], alpha=0.01)
    >>> [(d.feature, d.test.statistic, d.test.drifted) for d in drifts]
    [('latency_ms', 'ks', True), ('latency_ms', 'psi', True), ('latency_ms', 'wasserstein', True)]
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from evalsvc.schemas import StepPublic

from .anomaly import AnomalyModel
from .features import DEFAULT_ANOMALY_FEATURES, DEFAULT_NUMERIC, check_feature, label_value, numeric_value, text_value
from .text import TextModel
from .twosample import DriftTest, categorical_psi_test, chi2_test, ks_test, psi_edges, psi_test, wasserstein_test

__all__ = ["FORMAT", "FeatureDrift", "Profile", "ProfileSpec", "anomaly_row", "fit_profile"]

FORMAT = 1
MAX_TEXTS = 2000
MAX_LABELS = 100
MIN_VALUES = 20
"""Fewer values than this on either side: the feature is reported as not tested."""


class ProfileSpec(BaseModel):
    """Which features a baseline profiles (the ``drift fit`` options, or a ``baselines`` block)."""

    model_config = ConfigDict(extra="forbid")
    numeric: list[str] = Field(default_factory=lambda: list(DEFAULT_NUMERIC), description="Numeric features.")
    categorical: list[str] = Field(default_factory=list, description="Label paths, e.g. `output.label`.")
    text: list[str] = Field(default_factory=list, description="Text paths, e.g. `output` or `output.reply`.")
    anomaly: list[str] = Field(
        default_factory=lambda: list(DEFAULT_ANOMALY_FEATURES),
        description="Features of the per-step anomaly model (empty: no model).",
    )

    @field_validator("numeric", "categorical", "text", "anomaly")
    @classmethod
    def _check(cls, value: list[str]) -> list[str]:
        for name in value:
            check_feature(name)
        return list(dict.fromkeys(value))


@dataclass(frozen=True)
class FeatureDrift:
    """One test of one feature, with the window steps (indices) that show the shift best."""

    feature: str
    kind: str  # numeric | categorical | text
    test: DriftTest
    examples: list[int] = field(default_factory=list)


def anomaly_row(step: StepPublic, features: Sequence[str]) -> list[float | None]:
    return [numeric_value(step, f) for f in features]


def _numeric_features(spec: ProfileSpec) -> list[str]:
    derived = [f"{fn}:{path}" for path in spec.text for fn in ("length", "words")]
    return list(dict.fromkeys([*spec.numeric, *derived]))


def fit_profile(
    steps: Sequence[StepPublic], *, spec: ProfileSpec, seed: int = 0, n_total: int | None = None
) -> dict[str, Any]:
    """The JSON state of a baseline fitted on ``steps`` (already sampled by the caller)."""
    numeric: dict[str, Any] = {}
    for name in _numeric_features(spec):
        values = [v for v in (numeric_value(s, name) for s in steps) if v is not None]
        numeric[name] = {"sample": sorted(values), "edges": psi_edges(values), "n": len(values)}
    categorical: dict[str, Any] = {}
    for path in spec.categorical:
        counts = Counter(v for v in (label_value(s, path) for s in steps) if v is not None)
        top = dict(counts.most_common(MAX_LABELS))
        rest = sum(counts.values()) - sum(top.values())
        if rest:
            top["(other)"] = top.get("(other)", 0) + rest
        categorical[path] = {"counts": top, "n": sum(counts.values())}
    text: dict[str, Any] = {}
    rng = np.random.default_rng(seed)
    for path in spec.text:
        texts = [t for t in (text_value(s, path) for s in steps) if t is not None]
        if len(texts) > MAX_TEXTS:
            texts = [texts[i] for i in sorted(rng.choice(len(texts), MAX_TEXTS, replace=False))]
        text[path] = {"sample": texts, "n": len(texts)}
    anomaly: dict[str, Any] | None = None
    if spec.anomaly:
        rows = [anomaly_row(s, spec.anomaly) for s in steps]
        # a feature no baseline step has cannot be learnt: leave it out
        present = [i for i in range(len(spec.anomaly)) if any(r[i] is not None for r in rows)]
        rows = [[r[i] for i in present] for r in rows if any(r[i] is not None for i in present)]
        if present and len(rows) >= MIN_VALUES:
            anomaly = {"features": [spec.anomaly[i] for i in present], "rows": rows, "n": len(rows)}
    return {
        "format": FORMAT,
        "seed": seed,
        "spec": spec.model_dump(),
        "n_steps": n_total if n_total is not None else len(steps),
        "n_sample": len(steps),
        "numeric": numeric,
        "categorical": categorical,
        "text": text,
        "anomaly": anomaly,
    }


def _too_few(statistic: str, nb: int, nw: int, threshold: float) -> DriftTest:
    why = f"too few values to test (baseline {nb}, window {nw}; needs {MIN_VALUES} each)"
    return DriftTest(statistic, float("nan"), None, threshold, False, nb, nw, {"skipped": why})


def _extremes(values: list[tuple[int, float]], *, high: bool, k: int = 5) -> list[int]:
    return [i for i, _ in sorted(values, key=lambda iv: -iv[1] if high else iv[1])[:k]]


class Profile:
    """A loaded baseline state; models (TF-IDF, IsolationForest) are fitted on first use."""

    def __init__(self, state: dict[str, Any]) -> None:
        if state.get("format") != FORMAT:
            raise ValueError(f"baseline state format {state.get('format')!r} is not {FORMAT}")
        self.state = state
        self.seed = int(state["seed"])

    @cached_property
    def anomaly(self) -> AnomalyModel | None:
        a = self.state.get("anomaly")
        return AnomalyModel.fit(a["features"], a["rows"], seed=self.seed) if a else None

    @cached_property
    def texts(self) -> dict[str, TextModel]:
        return {p: TextModel.fit(t["sample"], seed=self.seed) for p, t in self.state["text"].items()}

    def compare(
        self,
        window: Sequence[StepPublic],
        *,
        alpha: float,
        psi_threshold: float = 0.2,
        permutations: int = 200,
    ) -> list[FeatureDrift]:
        """Every test of every profiled feature: the window against the baseline."""
        out: list[FeatureDrift] = []
        for name, ref in self.state["numeric"].items():
            out.extend(self._numeric(name, ref, window, alpha, psi_threshold, permutations))
        for path, ref in self.state["categorical"].items():
            out.extend(self._categorical(path, ref, window, alpha, psi_threshold))
        for path, model in self.texts.items():
            texts = [(i, t) for i, t in enumerate(text_value(s, path) for s in window) if t is not None]
            if len(model.texts) < MIN_VALUES or len(texts) < MIN_VALUES:
                out += [FeatureDrift(path, "text", _too_few(s, len(model.texts), len(texts), alpha))
                        for s in ("tfidf_cosine", "oov")]  # fmt: skip
                continue
            docs = [t for _, t in texts]
            oov = model.oov_shares(docs)
            worst = _extremes(
                [(i, float(s)) for (i, _), s in zip(texts, oov, strict=True) if np.isfinite(s)], high=True
            )
            for test in model.compare(docs, alpha=alpha, permutations=permutations):
                out.append(FeatureDrift(path, "text", test, worst))
        return out

    def _numeric(
        self, name: str, ref: dict[str, Any], window: Sequence[StepPublic], alpha: float, psi: float, perms: int
    ) -> list[FeatureDrift]:
        base = np.asarray(ref["sample"], dtype=np.float64)
        values = [(i, v) for i, v in enumerate(numeric_value(s, name) for s in window) if v is not None]
        win = np.asarray([v for _, v in values], dtype=np.float64)
        if len(base) < MIN_VALUES or len(win) < MIN_VALUES:
            return [FeatureDrift(name, "numeric", _too_few(s, len(base), len(win), t))
                    for s, t in (("ks", alpha), ("psi", psi), ("wasserstein", alpha))]  # fmt: skip
        examples = _extremes(values, high=float(np.median(win)) >= float(np.median(base)))
        tests = [
            ks_test(base, win, alpha=alpha),
            psi_test(base, win, threshold=psi, edges=ref["edges"]),
            wasserstein_test(base, win, alpha=alpha, permutations=perms, seed=self.seed),
        ]
        return [FeatureDrift(name, "numeric", t, examples) for t in tests]

    def _categorical(
        self, path: str, ref: dict[str, Any], window: Sequence[StepPublic], alpha: float, psi: float
    ) -> list[FeatureDrift]:
        counts: dict[str, int] = ref["counts"]
        labels = [(i, v) for i, v in enumerate(label_value(s, path) for s in window) if v is not None]
        if int(ref["n"]) < MIN_VALUES or len(labels) < MIN_VALUES:
            return [FeatureDrift(path, "categorical", _too_few(s, int(ref["n"]), len(labels), t))
                    for s, t in (("chi2", alpha), ("psi", psi))]  # fmt: skip
        win = Counter(v for _, v in labels)
        nb, nw = sum(counts.values()), len(labels)
        rise = {k: win.get(k, 0) / nw - counts.get(k, 0) / nb for k in set(win) | set(counts)}
        top = max(rise, key=lambda k: rise[k])
        examples = [i for i, v in labels if v == top][:5]
        tests = [chi2_test(counts, win, alpha=alpha), categorical_psi_test(counts, win, threshold=psi)]
        return [FeatureDrift(path, "categorical", t, examples) for t in tests]
