"""Langfuse trace exports to runs and steps."""

from __future__ import annotations
