"""LangSmith run payloads to runs and steps."""

from __future__ import annotations
