"""The in-band verdict of a step, long-polled by workflow code (GET /v1/runs/{run_key}/steps/{step_key}/verdict)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
