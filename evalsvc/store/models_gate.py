"""The CI gate's pinned baselines (sets of results an evaluator's candidate is compared with)."""

from __future__ import annotations

__all__: list[str] = []
