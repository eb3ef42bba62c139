"""Scoring state: the judge's verdict cache and budget counters."""

from __future__ import annotations

__all__: list[str] = []
