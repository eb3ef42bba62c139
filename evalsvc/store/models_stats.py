"""Statistical baselines (fitted, versioned) and drift reports."""

from __future__ import annotations

__all__: list[str] = []
