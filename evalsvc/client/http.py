"""HTTP client of evalsvc for workflow code: wait for a step's verdict, with a timeout.

It long-polls ``GET /v1/runs/{run_key}/steps/{step_key}/verdict`` (repeating the request while the
verdict is pending, each one held by the server for up to ``poll`` seconds) until the step is judged
or ``timeout`` has passed::

    from evalsvc.client import Client

    with Client("http://127.0.0.1:8000", api_key="esk_...") as evalsvc:
        verdict = evalsvc.wait_for_verdict(run_key="r-42", step_key="extract", timeout=30)
        if verdict.failed:
            raise RuntimeError(verdict.explanation)

:class:`AsyncClient` is the same for ``asyncio`` code (a Temporal activity, a FastAPI handler).
``timeout`` ending before a verdict returns the ``pending`` answer (``verdict.pending`` is true)
unless ``raise_on_timeout`` is set (then :class:`VerdictTimeout`). A step unknown to evalsvc is
waited for too (its record may still be on its way); still unknown at the timeout, it raises
:class:`VerdictTimeout`. :class:`EvalsvcError` carries any other error answer of the service
(status, error code and the field it names).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import anyio
import httpx

__all__ = ["AsyncClient", "Client", "EvalsvcError", "Verdict", "VerdictTimeout"]

_LONG_POLL = 30.0


class EvalsvcError(Exception):
    """evalsvc refused the request: ``status`` is the HTTP status, ``field`` the field it named."""

    def __init__(self, message: str, *, status: int, code: str | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.field = status, code, field


class VerdictTimeout(TimeoutError):
    """No verdict within the timeout (``raise_on_timeout=True``); ``last`` is the last answer, if any."""

    def __init__(self, message: str, last: Verdict | None) -> None:
        super().__init__(message)
        self.last = last


@dataclass(frozen=True)
class Verdict:
    """A step's verdict as evalsvc answered it (``raw`` is the whole JSON answer)."""

    state: str  # pending | passed | failed
    run_key: str
    step_key: str
    attempt: int
    verdicts: list[dict[str, Any]] = field(default_factory=list)
    actions: list[dict[str, Any]] = field(default_factory=list)
    reviews: list[dict[str, Any]] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Verdict:
        return cls(
            state=data["state"],
            run_key=data["run_key"],
            step_key=data["step_key"],
            attempt=int(data["attempt"]),
            verdicts=list(data.get("verdicts") or []),
            actions=list(data.get("actions") or []),
            reviews=list(data.get("reviews") or []),
            raw=data,
        )

    @property
    def pending(self) -> bool:
        return self.state == "pending"

    @property
    def passed(self) -> bool:
        return self.state == "passed"

    @property
    def failed(self) -> bool:
        return self.state == "failed"

    @property
    def failed_evaluators(self) -> list[str]:
        return [v["evaluator"] for v in self.verdicts if v.get("passed") is False]

    @property
    def explanation(self) -> str | None:
        """The explanations of the failed verdicts, one per line."""
        lines = [
            f"{v['evaluator']}: {v.get('explanation') or 'failed'}" for v in self.verdicts if v.get("passed") is False
        ]
        return "\n".join(lines) or None

    @property
    def planned(self) -> list[str]:
        """The kinds of the actions evalsvc planned for the step (retry, pause, review, ...)."""
        return [a["kind"] for a in self.actions]


def _path(run_key: str, step_key: str) -> str:
    return f"/v1/runs/{quote(run_key, safe='')}/steps/{quote(step_key, safe='')}/verdict"


def _params(wait: float, source: str | None, attempt: int | None) -> dict[str, Any]:
    params: dict[str, Any] = {"wait": round(max(0.0, wait), 3)}
    if source:
        params["source"] = source
    if attempt is not None:
        params["attempt"] = attempt
    return params


def _error(response: httpx.Response) -> EvalsvcError:
    try:
        body = response.json()
    except ValueError:
        body = {}
    body = body if isinstance(body, dict) else {}
    return EvalsvcError(
        str(body.get("message") or response.text or response.reason_phrase),
        status=response.status_code,
        code=body.get("error"),
        field=body.get("field"),
    )


def _report(response: httpx.Response) -> dict[str, Any]:
    """An ingest answer: 200 (all accepted or duplicate) and 207 (some rejected) carry the report."""
    if response.status_code in (200, 207):
        report: dict[str, Any] = response.json()
        return report
    raise _error(response)


def _answer(response: httpx.Response) -> Verdict | None:
    """The verdict, or None for a step not stored yet (404 on the step); raises other errors."""
    if response.status_code == 200:
        return Verdict.from_json(response.json())
    error = _error(response)
    if error.status == 404 and error.field == "step_key":
        return None
    raise error


def _timed_out(last: Verdict | None, run_key: str, step_key: str, timeout: float, raise_: bool) -> Verdict:
    if raise_ or last is None:
        what = "is still pending" if last is not None else "was never ingested"
        raise VerdictTimeout(f"step {step_key!r} of run {run_key!r} {what} after {timeout:g}s", last)
    return last


class Client:
    """Synchronous client (``httpx.Client``); pass ``http`` to reuse one (its base URL and auth)."""

    def __init__(
        self, base_url: str = "http://127.0.0.1:8000", *, api_key: str | None = None, http: httpx.Client | None = None
    ) -> None:
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._own = http is None
        self.http = http or httpx.Client(base_url=base_url, headers=headers, timeout=httpx.Timeout(10.0))
        self._headers = headers

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _timeout(self, wait: float) -> dict[str, Any]:
        # a client given as ``http`` keeps its own timeouts: its read timeout must exceed ``poll``
        return {"timeout": wait + 10.0} if self._own else {}

    def close(self) -> None:
        if self._own:
            self.http.close()

    def ingest(self, connector: str, payload: Any) -> dict[str, Any]:
        """POST a batch (or a connector's document) to ``/v1/ingest/{connector}``; the per-item report."""
        return _report(self.http.post(f"/v1/ingest/{quote(connector, safe='')}", json=payload, headers=self._headers))

    def verdict(
        self, *, run_key: str, step_key: str, wait: float = 0, source: str | None = None, attempt: int | None = None
    ) -> Verdict | None:
        """One request: the verdict now (or after up to ``wait`` seconds); None if the step is unknown."""
        r = self.http.get(_path(run_key, step_key), params=_params(wait, source, attempt), headers=self._headers,
                          **self._timeout(wait))  # fmt: skip
        return _answer(r)

    def wait_for_verdict(
        self,
        *,
        run_key: str,
        step_key: str,
        timeout: float = 60.0,
        source: str | None = None,
        attempt: int | None = None,
        poll: float = _LONG_POLL,
        raise_on_timeout: bool = False,
    ) -> Verdict:
        """Block until the step is judged (passed or failed) or ``timeout`` seconds have passed."""
        deadline = time.monotonic() + timeout
        last: Verdict | None = None
        while True:
            left = deadline - time.monotonic()
            answer = self.verdict(run_key=run_key, step_key=step_key, wait=max(0.0, min(poll, left)), source=source,
                                  attempt=attempt)  # fmt: skip
            last = answer or last
            if answer is not None and not answer.pending:
                return answer
            if time.monotonic() >= deadline:
                return _timed_out(last, run_key, step_key, timeout, raise_on_timeout)
            if answer is None:  # an unknown step is answered at once: do not spin
                time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))


class AsyncClient:
    """The same as :class:`Client` over ``httpx.AsyncClient``."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._own = http is None
        self.http = http or httpx.AsyncClient(base_url=base_url, headers=headers, timeout=httpx.Timeout(10.0))
        self._headers = headers

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _timeout(self, wait: float) -> dict[str, Any]:
        return {"timeout": wait + 10.0} if self._own else {}

    async def aclose(self) -> None:
        if self._own:
            await self.http.aclose()

    async def ingest(self, connector: str, payload: Any) -> dict[str, Any]:
        r = await self.http.post(f"/v1/ingest/{quote(connector, safe='')}", json=payload, headers=self._headers)
        return _report(r)

    async def verdict(
        self, *, run_key: str, step_key: str, wait: float = 0, source: str | None = None, attempt: int | None = None
    ) -> Verdict | None:
        r = await self.http.get(_path(run_key, step_key), params=_params(wait, source, attempt),
                                headers=self._headers, **self._timeout(wait))  # fmt: skip
        return _answer(r)

    async def wait_for_verdict(
        self,
        *,
        run_key: str,
        step_key: str,
        timeout: float = 60.0,
        source: str | None = None,
        attempt: int | None = None,
        poll: float = _LONG_POLL,
        raise_on_timeout: bool = False,
    ) -> Verdict:
        deadline = time.monotonic() + timeout
        last: Verdict | None = None
        while True:
            left = deadline - time.monotonic()
            answer = await self.verdict(run_key=run_key, step_key=step_key, wait=max(0.0, min(poll, left)),
                                        source=source, attempt=attempt)  # fmt: skip
            last = answer or last
            if answer is not None and not answer.pending:
                return answer
            if time.monotonic() >= deadline:
                return _timed_out(last, run_key, step_key, timeout, raise_on_timeout)
            if answer is None:
                await anyio.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
