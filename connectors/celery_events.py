"""Celery task events to step records."""

from __future__ import annotations
