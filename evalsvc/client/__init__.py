"""The Python client of evalsvc for workflow code: wait for a step's verdict before going on.

``Client`` / ``AsyncClient`` (:mod:`evalsvc.client.http`) long-poll a step's verdict over HTTP;
:mod:`evalsvc.client.temporal` is the Temporal workflow helper (it imports nothing but
``temporalio``, so it can be imported inside the workflow sandbox)::

    from evalsvc.client import Client

    with Client("http://127.0.0.1:8000", api_key="esk_...") as evalsvc:
        verdict = evalsvc.wait_for_verdict(run_key="r-42", step_key="extract", timeout=30)

The HTTP names load on first use, so importing :mod:`evalsvc.client.temporal` does not import httpx.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .http import AsyncClient, Client, EvalsvcError, Verdict, VerdictTimeout

__all__ = ["AsyncClient", "Client", "EvalsvcError", "Verdict", "VerdictTimeout"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import http

        return getattr(http, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
