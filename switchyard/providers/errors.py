"""Mapping of HTTP failures to our error types; shared by every SDK-based adapter."""

from __future__ import annotations

import re
from collections.abc import Mapping

import aiohttp

from switchyard.core.errors import ProviderError

# Retry only what another try can fix: timeouts, conflicts, rate limits and server errors.
RETRYABLE_STATUS = frozenset({408, 409, 429})


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from a `Retry-After` (or `retry-after-ms`) header, when present and numeric."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            return None
    return None


# How providers word a prompt too long for the model (OpenAI, Anthropic, vLLM and others).
_CONTEXT_WORDS = ("context_length_exceeded", "maximum context length", "prompt is too long", "context window")


def status_error(status: int, message: str, headers: Mapping[str, str], code: str | None = None) -> ProviderError:
    """A ProviderError for an HTTP status answered by a provider."""
    retryable = status in RETRYABLE_STATUS or status >= 500
    lowered = f"{code or ''} {message}".lower()
    if status == 429:
        error_type = "rate_limited"
    elif status == 408:
        error_type = "timeout"
    elif status in (400, 404, 413, 422):
        if any(words in lowered for words in _CONTEXT_WORDS):
            error_type = "context_length_exceeded"
        elif "content_policy" in lowered or ("content" in lowered and "policy" in lowered):
            error_type = "content_blocked"
        else:
            error_type = "invalid_request"
    else:
        error_type = "provider_error"
    return ProviderError(
        error_type,
        f"provider answered {status}: {message}"[:2000],
        retryable=retryable,
        status_code=status,
        retry_after_s=parse_retry_after(headers),
    )


# Where a provider lives is the server's business: a connection error's text names the host, its port and the
# addresses it resolved to ("Cannot connect to host models.internal:8001 ... ('10.0.3.7', 8001)"), and it ends up
# in the task's attempts, which its tenant reads.
_WHERE = re.compile(
    r"https?://\S+"  # a URL
    r"|\bhost \S+"  # aiohttp's "host NAME:PORT"
    r"|\('[^']*', \d+(?:, \d+, \d+)?\)"  # a socket address tuple
    r"|\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b"  # an IPv4 address
    r"|\[?(?:[0-9a-fA-F]{0,4}:){1,7}:[0-9a-fA-F]{0,4}(?::[0-9a-fA-F]{1,4})*\]?"  # an IPv6 address with "::"
    r"|\b(?:[0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4}\b"  # and one in full
)


def _without_addresses(message: str) -> str:
    return _WHERE.sub(lambda m: "host <provider>" if m.group().startswith("host ") else "<provider>", message)


def timeout_error(message: str) -> ProviderError:
    return ProviderError("timeout", _without_addresses(message) or "provider call timed out", retryable=True)


def connection_error(message: str) -> ProviderError:
    return ProviderError("provider_error", f"connection failed: {_without_addresses(message)}", retryable=True)


def timeout_or_refused(exc: BaseException) -> ProviderError:
    """An SDK timeout error, unless the connection failed without timing out: OpenAI's aiohttp transport reports
    every aiohttp connection error as a connect timeout, but a refused connection, or one the server closed
    ("Server disconnected", a reset), is no timeout: it fails fast and says the connection went away."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, aiohttp.ClientConnectionError) and not isinstance(cause, aiohttp.ServerTimeoutError):
            return connection_error(str(cause))
        cause = cause.__cause__ or cause.__context__
    return timeout_error(str(exc))
