"""What the statistical scorers measure on a step: numbers, labels and text, by name or dotted path.

A feature is a step field (``latency_ms``, ``cost_usd``), a derived one (``tokens``,
``output_length``, ``output_words``), or a dotted path into the step (``output.score``,
``attributes.route``). Missing or non-numeric values are ``None`` and left out of the statistics::

    >>> from evalsvc.schemas import StepPublic
    >>> from scorers.stats.features import numeric_value, text_value
    >>> step = StepPublic(id=1, run_id=1, source="json", run_key="r", step_key="s", attempt=1,
    ...                   name="s", kind="llm", status="completed", latency_ms=120.0,
    ...                   input_tokens=10, output_tokens=5, output={"reply": "hello there"})
    >>> numeric_value(step, "tokens"), numeric_value(step, "output_words:output.reply")
    (15.0, 2.0)
    >>> text_value(step, "output.reply")
    'hello there'
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from evalsvc.schemas import StepPublic

from ..base import as_text, check_path, get_field

__all__ = [
    "DEFAULT_ANOMALY_FEATURES",
    "DEFAULT_NUMERIC",
    "check_feature",
    "label_value",
    "numeric_value",
    "text_value",
    "word_count",
]

_WORD = re.compile(r"\w+", re.UNICODE)


def word_count(text: str) -> int:
    """Tokens as the text features count them: runs of letters, digits and ``_``."""
    return len(_WORD.findall(text))


def _tokens(step: StepPublic) -> float | None:
    if step.input_tokens is None and step.output_tokens is None:
        return None
    return float((step.input_tokens or 0) + (step.output_tokens or 0))


def _length(path: str) -> Callable[[StepPublic], float | None]:
    def get(step: StepPublic) -> float | None:
        value = get_field(step, path)
        return None if value is None else float(len(as_text(value)))

    return get


def _words(path: str) -> Callable[[StepPublic], float | None]:
    def get(step: StepPublic) -> float | None:
        value = get_field(step, path)
        return None if value is None else float(word_count(as_text(value)))

    return get


_DERIVED: dict[str, Callable[[StepPublic], float | None]] = {
    "tokens": _tokens,
    "output_length": _length("output"),
    "output_words": _words("output"),
}
_PER_PATH = {"length": _length, "output_length": _length, "words": _words, "output_words": _words}

DEFAULT_NUMERIC = ("latency_ms", "input_tokens", "output_tokens", "cost_usd", "output_length")
"""Numeric features a baseline profiles when none are named."""

DEFAULT_ANOMALY_FEATURES = ("latency_ms", "tokens", "cost_usd", "output_length")
"""Features of the per-step anomaly model when none are named."""


def check_feature(name: str) -> str:
    """Validate a feature name: a derived feature, ``length:PATH``/``words:PATH``, or a step path."""
    if name in _DERIVED:
        return name
    kind, sep, path = name.partition(":")
    if sep:
        if kind not in _PER_PATH:
            raise ValueError(f"{kind!r} is not a feature function; use length:PATH or words:PATH")
        check_path(path)
        return name
    check_path(name)
    return name


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        out = float(value)
    elif isinstance(value, str):
        try:
            out = float(value)
        except ValueError:
            return None
    else:
        return None
    return out if math.isfinite(out) else None


def numeric_value(step: StepPublic, feature: str) -> float | None:
    """The feature's number on this step, or None when the step has none."""
    derived = _DERIVED.get(feature)
    if derived is not None:
        return derived(step)
    kind, sep, path = feature.partition(":")
    if sep:
        return _PER_PATH[kind](path)(step)
    return _number(get_field(step, feature))


def label_value(step: StepPublic, path: str) -> str | None:
    """A categorical value as text (numbers and booleans too); None when missing or a container."""
    value = get_field(step, path)
    if value is None or isinstance(value, dict | list):
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def text_value(step: StepPublic, path: str) -> str | None:
    """The text at ``path`` (JSON values as compact JSON); None when missing."""
    value = get_field(step, path)
    return None if value is None else as_text(value)
