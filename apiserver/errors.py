"""Domain errors that services raise; `main.py` keeps the one table mapping them to HTTP.

Services never name HTTP statuses. Each class has a default `code` (the machine-readable
`error.code` of the documented body); a raise site may pass a more specific one
(`Forbidden("...", code="plan_forbids")`). `headers` go on the response (`Retry-After`,
`X-RateLimit-*`), `details` are extra members of the `error` object (`fields`, `limit`).
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """Base of every error a client may see; anything else is a 500 with no detail."""

    code: str = "error"

    def __init__(self, message: str, *, code: str | None = None, headers: dict[str, str] | None = None,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.headers = dict(headers or {})
        self.details = dict(details or {})


class BadRequest(ServiceError):
    """400: the request cannot be read at all (malformed JSON, a Stripe event of the wrong shape)."""

    code = "bad_request"


class InvalidRequest(ServiceError):
    """422: the request was read but a field is invalid (`details={"fields": [...]}`)."""

    code = "invalid_request"


class Unauthorized(ServiceError):
    """401: no key, or a key that is unknown or revoked."""

    code = "unauthenticated"


class Forbidden(ServiceError):
    """403: authenticated, but the plan, role or licence does not allow it."""

    code = "forbidden"


class NotFound(ServiceError):
    """404: no such resource for this caller (another tenant's resource is also 404)."""

    code = "not_found"


class Conflict(ServiceError):
    """409: the resource's state does not allow it now (not ready, already finished, key reused)."""

    code = "conflict"


class Gone(ServiceError):
    """410: it existed but has expired (results past retention)."""

    code = "gone"


class NotAcceptable(ServiceError):
    """406: no answer the endpoint gives is acceptable (`Accept`); `details={"supported": [...]}`."""

    code = "not_acceptable"


class PayloadTooLarge(ServiceError):
    """413: the body (or a spec) is over a documented limit."""

    code = "payload_too_large"


class PaymentRequired(ServiceError):
    """402: the plan needs a payment first."""

    code = "payment_required"


class RateLimited(ServiceError):
    """429: a per-minute or per-address limit; `headers` carry `Retry-After` and `X-RateLimit-*`."""

    code = "rate_limited"


class QuotaExceeded(ServiceError):
    """429: the month's units are spent; its own code and `X-Quota-*` headers, not `X-RateLimit-*`."""

    code = "quota_exceeded"


class Unavailable(ServiceError):
    """503: a dependency (Redis, Kubernetes, object store) is unavailable; nothing was changed."""

    code = "unavailable"
