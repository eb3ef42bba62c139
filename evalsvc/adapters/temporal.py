"""Temporal adapter: signal, reset, cancel and terminate workflows."""

from __future__ import annotations
