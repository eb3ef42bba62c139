"""Imports the built-in adapters so that they register themselves."""

from __future__ import annotations

from . import celery, inngest, temporal  # noqa: F401
