"""``GET /healthz``: the store answers (no key needed)."""

from __future__ import annotations

import sqlalchemy as sa
from fastapi import APIRouter

from ..deps import EngineDep, SettingsDep

router = APIRouter()


@router.get("/healthz", tags=["health"])
def healthz(engine: EngineDep, settings: SettingsDep) -> dict[str, str]:
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))
    return {"status": "ok", "store": engine.dialect.name, "runner": settings.runner}
