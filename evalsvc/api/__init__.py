"""The HTTP API (FastAPI; OpenAPI at ``/docs``)."""

from .main import create_app

__all__ = ["create_app"]
