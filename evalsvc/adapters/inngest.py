"""Inngest adapter: send events and cancel runs."""

from __future__ import annotations
