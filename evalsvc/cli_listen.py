"""`evalsvc listen ...`: follow an orchestrator's live events (Celery)."""

from __future__ import annotations
