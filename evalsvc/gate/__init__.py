"""The CI gate (``evalsvc gate``): score a candidate with the production evaluators, pair it with a
pinned baseline by item id, and decide per evaluator with paired tests (docs/ci.md)."""

from __future__ import annotations

__all__: list[str] = []
