"""One error hierarchy for evalsvc, mapped to one JSON error shape by the API.

```
EvalServiceError
├── NotFound · Conflict · PayloadTooLarge · Unauthorized · Overloaded
├── InvalidInput → BadOtlpBody · UnsupportedMediaType
├── ConnectorError → PayloadRejected · UnknownConnector
└── ScorerError → UnknownScorer
    ├── RetryableError       (rate limit, timeout: retried with backoff)
    └── UnrecoverableError   (bad template, unparseable judge output)
```

Every error carries a machine-readable ``code``, a human ``message`` and, where the caller's
input is at fault, the ``field`` it names (a dotted path such as ``records.3.started_at``)::

    >>> from evalsvc.errors import InvalidInput
    >>> err = InvalidInput("must be a positive integer", field="attempt")
    >>> err.as_dict()
    {'error': 'invalid_input', 'message': 'attempt: must be a positive integer', 'field': 'attempt'}
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "BadOtlpBody",
    "Conflict",
    "ConnectorError",
    "EvalServiceError",
    "InvalidInput",
    "NotFound",
    "Overloaded",
    "PayloadRejected",
    "PayloadTooLarge",
    "RetryableError",
    "ScorerError",
    "Unauthorized",
    "UnknownConnector",
    "UnknownScorer",
    "UnrecoverableError",
    "UnsupportedMediaType",
]


class EvalServiceError(Exception):
    """Base of every error evalsvc raises on purpose."""

    code: ClassVar[str] = "error"
    http_status: ClassVar[int] = 500

    def __init__(self, message: str, *, field: str | None = None, **details: Any) -> None:
        self.message = f"{field}: {message}" if field else message
        self.field = field
        self.details = details
        super().__init__(self.message)

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.code, "message": self.message, "field": self.field}
        body.update(self.details)
        return body


class NotFound(EvalServiceError):
    code = "not_found"
    http_status = 404


class Conflict(EvalServiceError):
    code = "conflict"
    http_status = 409


class InvalidInput(EvalServiceError):
    code = "invalid_input"
    http_status = 422


class PayloadTooLarge(EvalServiceError):
    code = "payload_too_large"
    http_status = 413


class Unauthorized(EvalServiceError):
    code = "unauthorized"
    http_status = 401


class BadOtlpBody(InvalidInput):
    """The body is not an OTLP trace export at all (OTLP/HTTP answers 400 for that)."""

    code = "invalid_otlp"
    http_status = 400


class UnsupportedMediaType(InvalidInput):
    code = "unsupported_media_type"
    http_status = 415


class Overloaded(EvalServiceError):
    """Too many requests in progress: retry after the ``Retry-After`` seconds."""

    code = "overloaded"
    http_status = 503


class ConnectorError(EvalServiceError):
    code = "connector_error"
    http_status = 422


class PayloadRejected(ConnectorError):
    code = "payload_rejected"
    http_status = 422


class UnknownConnector(ConnectorError):
    code = "unknown_connector"
    http_status = 404

    def __init__(self, name: str, *, available: list[str]) -> None:
        super().__init__(
            f"unknown connector {name!r}; available: {', '.join(sorted(available))}",
            field="connector",
        )


class ScorerError(EvalServiceError):
    code = "scorer_error"
    http_status = 422


class UnknownScorer(ScorerError):
    code = "unknown_scorer"

    def __init__(self, name: str, *, available: list[str]) -> None:
        super().__init__(
            f"unknown scorer {name!r}; available: {', '.join(sorted(available))}",
            field="scorer",
        )


class RetryableError(ScorerError):
    """A transient failure (rate limit, timeout, 5xx): the worker retries with backoff."""

    code = "retryable"
    http_status = 503


class UnrecoverableError(ScorerError):
    """A failure that a retry cannot fix (bad template, unparseable verdict)."""

    code = "unrecoverable"
