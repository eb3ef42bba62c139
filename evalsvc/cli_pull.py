"""`evalsvc pull ...`: pull execution histories from an orchestrator (Temporal)."""

from __future__ import annotations
