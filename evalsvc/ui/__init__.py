"""The web UI's templates, static file, charts and sign-in helpers (routes: ``evalsvc.api.routes.ui``).

Server-rendered Jinja2 pages, plain HTML forms and links, no JavaScript build; docs/ui.md.

>>> from evalsvc.ui import templates
>>> templates.get_template("base.html").name
'base.html'
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from starlette.templating import Jinja2Templates

__all__ = ["COOKIE", "STATIC_DIR", "csrf_token", "templates"]

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
COOKIE = "evalsvc_ui"


def csrf_token(key: str) -> str:
    """The form token of a signed-in session: only someone holding the key can compute it."""
    return hmac.new(key.encode(), b"evalsvc-ui-csrf", hashlib.sha256).hexdigest()[:32]


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "—"


def _pretty(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=2, ensure_ascii=False, default=str, sort_keys=False)


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"


templates = Jinja2Templates(directory=str(HERE / "templates"))
templates.env.filters.update(when=_when, pretty=_pretty, pct=_pct)
