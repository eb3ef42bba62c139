"""Inngest run histories and function.finished/failed events to step records."""

from __future__ import annotations
