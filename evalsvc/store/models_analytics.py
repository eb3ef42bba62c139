"""Store-side support for the analytics replica."""

from __future__ import annotations

__all__: list[str] = []
