"""One error hierarchy. The HTTP edge renders AppError into API.md's error shape; services never raise HTTP."""

from __future__ import annotations

from typing import Any


class AppError(Exception):
    """An error a client can meet: a status, a message, and the request field it concerns."""

    status = 400
    type = "invalid_request_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.headers: dict[str, str] = {}


def error_body(type_: str, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """API.md's error shape: what every failed request answers (and a batch line's error, in its file)."""
    return {"error": {"type": type_, "message": message, "param": param, "code": code}}


class InvalidRequest(AppError):
    status = 422


class MalformedRequest(AppError):
    status = 400


class Unauthenticated(AppError):
    status = 401
    type = "authentication_error"


class Forbidden(AppError):
    status = 403
    type = "permission_error"


class NotFound(AppError):
    status = 404
    type = "not_found_error"


class Conflict(AppError):
    status = 409
    type = "conflict_error"


class RateLimited(AppError):
    """A rate or budget limit; the provider's own 429 as a synchronous caller meets it."""

    status = 429
    type = "rate_limit_error"


class BudgetExceeded(RateLimited):
    """A call whose worst-case cost would take a key or tenant over a budget; it never reaches a provider."""

    type = "budget_exceeded"


class ContentBlocked(AppError):
    """A moderation gate (or the provider's own content policy) refused the call: OpenAI's answer to a policy
    refusal, a 400, with `code: content_blocked`."""

    status = 400

    def __init__(self, message: str, *, param: str | None = None, code: str | None = "content_blocked") -> None:
        super().__init__(message, param=param, code=code)


class PayloadTooLarge(AppError):
    status = 413
    type = "request_too_large"


class UpstreamFailed(AppError):
    """The work ran and the provider or model failed it (synchronous endpoints)."""

    status = 502
    type = "provider_error"


class GatewayTimeout(AppError):
    """A synchronous endpoint stopped waiting; the task goes on and can be polled."""

    status = 504
    type = "timeout_error"


class UnsupportedMediaType(AppError):
    status = 415


class ServiceUnavailable(AppError):
    status = 503
    type = "service_unavailable"

    def __init__(self, message: str, *, retry_after_s: int = 5) -> None:
        super().__init__(message)
        self.headers["Retry-After"] = str(retry_after_s)


class GuardrailUnavailable(ServiceUnavailable):
    """A moderation gate could not check the call (its model unavailable) and its guardrail says `block`."""

    def __init__(self, message: str, *, retry_after_s: int = 5) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self.code = "guardrail_unavailable"


class ConfigError(Exception):
    """The configuration cannot be used; the message names the file, the key and the problem."""


class ProviderError(Exception):
    """A provider call failed. `retryable` decides between retry/failover and failing the task at once."""

    def __init__(
        self,
        error_type: str,
        message: str,
        *,
        retryable: bool,
        status_code: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.retryable = retryable
        self.status_code = status_code
        self.retry_after_s = retry_after_s
