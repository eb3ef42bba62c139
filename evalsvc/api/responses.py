"""A JSON response rendered with orjson (fast on large ingest answers; datetimes and numpy welcome)."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.responses import Response

__all__ = ["JSONBytes"]


class JSONBytes(Response):
    media_type = "application/json"

    @staticmethod
    def encode(content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY)

    def render(self, content: Any) -> bytes:
        return self.encode(content)
