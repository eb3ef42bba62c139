"""Read-only SQL over the eval history (DuckDB)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
