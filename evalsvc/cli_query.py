"""`evalsvc query` and the analytics commands."""

from __future__ import annotations
