"""Celery adapter: re-send, pause (cancel_consumer) and revoke tasks."""

from __future__ import annotations
