"""Text drift on simple features: the TF-IDF vocabulary of a window against the baseline's.

Two tests, both with a p-value:

- ``tfidf_cosine``: a TF-IDF vectorizer fitted on the baseline texts; the statistic is the cosine
  distance between the mean vector of the baseline texts and that of the window's, and its p-value
  comes from a permutation test (the labels baseline/window shuffled).
- ``oov``: the share of a text's words that the baseline's vocabulary does not know. The vocabulary
  is learnt from one half of the baseline; the other half gives the reference shares, compared
  with the window's by a Mann-Whitney U test (so an A/A split alarms at alpha)::

    >>> from scorers.stats.text import TextModel
    >>> model = TextModel.fit(["the invoice total is due"] * 50 + ["pay the invoice now"] * 50, seed=0)
    >>> [t.drifted for t in model.compare(["bonjour la facture"] * 40, alpha=0.01, permutations=199)]
    [True, True]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .twosample import Array, DriftTest

if TYPE_CHECKING:
    from sklearn.feature_extraction.text import TfidfVectorizer  # type: ignore[import-untyped]

__all__ = ["TextModel"]

_MAX_FEATURES = 5000


def _vectorizer() -> TfidfVectorizer:
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(lowercase=True, sublinear_tf=True, max_features=_MAX_FEATURES, dtype=np.float64)


def _cosine_distance(a: Array, b: Array) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0 or nb == 0:
        return 0.0 if na == nb else 1.0
    return 1.0 - float(a @ b) / (na * nb)


@dataclass
class TextModel:
    """A baseline's texts, with what the tests need fitted from them (deterministic for a seed)."""

    texts: list[str]
    seed: int
    vectorizer: TfidfVectorizer | None
    vocab_half: frozenset[str]
    reference_oov: Array
    analyzer: Callable[[str], list[str]]

    @classmethod
    def fit(cls, texts: Sequence[str], *, seed: int) -> TextModel:
        texts = list(texts)
        analyzer: Callable[[str], list[str]] = _vectorizer().build_analyzer()
        vectorizer: TfidfVectorizer | None = _vectorizer()
        try:
            vectorizer.fit(texts)  # type: ignore[union-attr]
        except ValueError:  # empty vocabulary: no words at all
            vectorizer = None
        order = np.random.default_rng(seed).permutation(len(texts))
        half = len(texts) // 2
        vocab = frozenset(w for i in order[:half] for w in analyzer(texts[i]))
        reference = np.array([_oov(analyzer(texts[i]), vocab) for i in order[half:]], dtype=np.float64)
        return cls(texts, seed, vectorizer, vocab, reference[np.isfinite(reference)], analyzer)

    def oov_shares(self, texts: Sequence[str]) -> Array:
        return np.array([_oov(self.analyzer(t), self.vocab_half) for t in texts], dtype=np.float64)

    def compare(self, window: Sequence[str], *, alpha: float, permutations: int = 200) -> list[DriftTest]:
        return [self.cosine_test(window, alpha=alpha, permutations=permutations), self.oov_test(window, alpha=alpha)]

    def cosine_test(self, window: Sequence[str], *, alpha: float, permutations: int = 200) -> DriftTest:
        nb, nw = len(self.texts), len(window)
        if self.vectorizer is None or nb == 0 or nw == 0:
            return DriftTest("tfidf_cosine", 0.0, 1.0, alpha, False, nb, nw)
        x = self.vectorizer.transform([*self.texts, *window]).tocsr()
        total = np.asarray(x.sum(axis=0)).ravel()
        win = np.asarray(x[nb:].sum(axis=0)).ravel()
        observed = _cosine_distance(total - win, win)
        rng = np.random.default_rng(self.seed)
        # each row of `picks` marks one random window of nw texts among the pooled ones
        picks = np.zeros((permutations, nb + nw))
        for i in range(permutations):
            picks[i, rng.choice(nb + nw, size=nw, replace=False)] = 1.0
        sums = np.asarray((x.T @ picks.T).T)
        hits = sum(_cosine_distance(total - s, s) >= observed - 1e-12 for s in sums)
        p = (hits + 1) / (permutations + 1)
        names = self.vectorizer.get_feature_names_out()
        shift = win / nw - (total - win) / nb
        detail: dict[str, Any] = {
            "rising_terms": [str(names[i]) for i in np.argsort(-shift)[:5] if shift[i] > 0],
            "falling_terms": [str(names[i]) for i in np.argsort(shift)[:5] if shift[i] < 0],
            "permutations": permutations,
        }
        return DriftTest("tfidf_cosine", observed, p, alpha, p < alpha, nb, nw, detail)

    def oov_test(self, window: Sequence[str], *, alpha: float) -> DriftTest:
        shares = self.oov_shares(window)
        shares = shares[np.isfinite(shares)]
        ref = self.reference_oov
        if len(ref) == 0 or len(shares) == 0:
            return DriftTest("oov", 0.0, 1.0, alpha, False, len(ref), len(shares))
        value = float(shares.mean())
        if np.all(ref == ref[0]) and np.all(shares == ref[0]):
            p = 1.0  # identical constant samples: nothing to test
        else:
            from scipy import stats  # type: ignore[import-untyped]

            p = float(stats.mannwhitneyu(shares, ref, alternative="greater").pvalue)
        detail = {"baseline_oov": float(ref.mean())}
        return DriftTest("oov", value, p, alpha, p < alpha, len(ref), len(shares), detail)


def _oov(words: list[str], vocab: frozenset[str]) -> float:
    if not words:
        return float("nan")
    return sum(w not in vocab for w in words) / len(words)
