"""Temporal workflow histories to step records."""

from __future__ import annotations
