"""Signed webhooks from orchestrators (Inngest system events)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
