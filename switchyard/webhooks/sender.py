"""One webhook delivery attempt to a user-supplied URL, signed per the Standard Webhooks specification.

The URL belongs to a tenant, so the request is treated as hostile in both directions: the destination is resolved
and checked before anything is sent (no requests into our own network or a cloud metadata service; the checks are in
:mod:`switchyard.webhooks.destinations`), the connection goes to the checked address itself, redirects are never
followed, and every phase — DNS, connect, write, read, the response body — is bounded so a slow or oversized
receiver cannot hold a worker thread.

Used from Celery worker threads: one `WebhookSender` per worker process, shared by all its threads.
"""

from __future__ import annotations

import base64
import codecs
import math
import re
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from ipaddress import IPv6Address
from types import TracebackType
from typing import Any

import httpx
import standardwebhooks
import structlog

# BlockedDestination and check_destination live in destinations.py; they are exported from here too, where the
# tests import them.
from switchyard.webhooks.destinations import (
    BlockedDestination,
    IPAddress,
    _check,
    _getaddrinfo,
    check_destination,
)

__all__ = [
    "BlockedDestination",
    "DeliveryResult",
    "WebhookSender",
    "check_destination",
    "new_secret",
]

log = structlog.get_logger(__name__)

_SECRET_BYTES = 32  # the specification asks for 24 to 64 bytes; 256 bits is the strength of HMAC-SHA256
_EXCERPT_CHARS = 1000
# Enough bytes for 1,000 characters in any encoding (at most 4 bytes a character), so a large body is not decoded.
_EXCERPT_BYTES = 4 * _EXCERPT_CHARS
_RETRY_AFTER_CAP_S = 24 * 3600.0
_LOCATION_CHARS = 200
# A name may resolve to several addresses; a refused or unreachable one should not fail the attempt, but a name
# with dozens of dead addresses must not multiply the time spent.
_MAX_ADDRESSES_TRIED = 3
# httpx's timeouts bound each socket operation, not the attempt: a receiver trickling one byte per almost-timeout
# would otherwise hold the thread for hours. The whole attempt gets this multiple of the per-operation timeout.
_ATTEMPT_BUDGET_FACTOR = 2.0
# Lookups run on their own threads so that a hanging resolver is bounded by our timeout, not the system's.
_DNS_THREADS = 32


def new_secret() -> str:
    """A fresh signing secret in the Standard Webhooks format: ``whsec_`` and the base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(_SECRET_BYTES)).decode("ascii")


@dataclass(frozen=True)
class DeliveryResult:
    """The outcome of one delivery attempt. ``ok`` is false exactly when ``error`` says what went wrong.

    ``response_bytes`` is how much of the response body was read (at most ``max_response_bytes``).
    """

    ok: bool
    status_code: int | None
    retry_after_s: float | None
    gone: bool
    error: str | None
    response_excerpt: str
    latency_ms: int
    response_bytes: int = 0


class WebhookSender:
    """Sends webhook deliveries, one attempt per `send`; thread-safe, made once per worker process."""

    def __init__(
        self,
        *,
        timeout_s: float,
        max_response_bytes: int,
        allow_private: bool,
        user_agent: str = "Switchyard-Webhooks/1.0",
        ssl_context: ssl.SSLContext | None = None,
        resolve: Callable[[str, int], list[str]] | None = None,
    ) -> None:
        """Make the shared HTTP client.

        ``timeout_s`` bounds each of DNS, connect, write, read and pool wait; the whole attempt is bounded by twice
        that. ``ssl_context`` replaces the default trust store (certifi), e.g. for a private CA; it must keep
        ``check_hostname`` on, since certificates are checked against the URL's host name. ``resolve(host, port)``
        replaces the system resolver (getaddrinfo); it returns address strings and is called once per attempt.
        """
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        if max_response_bytes < 0:
            raise ValueError("max_response_bytes must not be negative")
        self._timeout_s = timeout_s
        self._budget_s = timeout_s * _ATTEMPT_BUDGET_FACTOR
        self._max_response_bytes = max_response_bytes
        self._allow_private = allow_private
        self._user_agent = user_agent
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout_s),
            # No keep-alive: the pool keys connections by the address in the URL, so a TLS connection verified for
            # one host name could otherwise be reused for another name on the same address, unverified.
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=0),
            follow_redirects=False,
            # The environment must not redirect the request elsewhere (HTTP(S)_PROXY) or add credentials (.netrc)
            # to a tenant's URL.
            trust_env=False,
            verify=ssl_context if ssl_context is not None else True,
        )
        self._resolve = resolve if resolve is not None else _getaddrinfo
        self._dns = ThreadPoolExecutor(max_workers=_DNS_THREADS, thread_name_prefix="webhook-dns")

    def close(self) -> None:
        """Close the HTTP client and stop the resolver threads."""
        self._client.close()
        self._dns.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> WebhookSender:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def send(
        self, url: str, *, msg_id: str, timestamp: datetime, body: bytes, secret: str | Sequence[str]
    ) -> DeliveryResult:
        """POST ``body`` to ``url`` once, signed with ``secret`` (several: one signature each, space-separated in
        ``webhook-signature``, during a rotation's overlap); network failures come back as a failed result.

        ``msg_id`` must stay the same across retries of one message. A naive ``timestamp`` is taken as UTC.
        Raises ValueError only for caller mistakes: a body that is not UTF-8 or a malformed secret.
        """
        started = time.monotonic()
        headers = self._signed_headers(msg_id=msg_id, timestamp=timestamp, body=body, secret=secret)
        watchdog = _Watchdog(self._budget_s)
        watchdog.start()
        try:
            return self._attempt(url, headers=headers, body=body, watchdog=watchdog, started=started)
        finally:
            watchdog.cancel()

    def _signed_headers(
        self, *, msg_id: str, timestamp: datetime, body: bytes, secret: str | Sequence[str]
    ) -> dict[str, str]:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            # The SDK signs text; a body that is not UTF-8 would be signed over different bytes than are sent.
            raise ValueError("webhook body must be UTF-8") from exc
        # The SDK replaces the time zone instead of converting, so an aware non-UTC time would be signed wrongly.
        when = timestamp.replace(tzinfo=UTC) if timestamp.tzinfo is None else timestamp.astimezone(UTC)
        try:
            secrets_ = [secret] if isinstance(secret, str) else list(secret)
            if not secrets_:
                raise ValueError("no secret")
            signature = " ".join(standardwebhooks.Webhook(each).sign(msg_id, when, text) for each in secrets_)
        except Exception as exc:  # the SDK raises binascii.Error, its own EmptyWebhookSecretError, ...
            raise ValueError(f"invalid webhook secret: {exc}") from exc
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": str(math.floor(when.timestamp())),
            "webhook-signature": signature,
            "content-type": "application/json",
            "user-agent": self._user_agent,
            # Raw bytes are read and cut; a compressed body could expand far beyond the cut in one chunk.
            "accept-encoding": "identity",
        }

    def _attempt(
        self,
        url: str,
        *,
        headers: dict[str, str],
        body: bytes,
        watchdog: _Watchdog,
        started: float,
    ) -> DeliveryResult:
        def failed(error: str) -> DeliveryResult:
            return DeliveryResult(
                ok=False,
                status_code=None,
                retry_after_s=None,
                gone=False,
                error=error,
                response_excerpt="",
                latency_ms=_elapsed_ms(started),
            )

        try:
            target, addresses = _check(url, allow_private=self._allow_private, resolve=self._resolve_bounded)
        except BlockedDestination as exc:
            # The attempt's error is the tenant's to read; what the name resolved to is the operator's.
            log.info("webhook_destination_refused", reason=exc.reason)
            return failed(f"blocked destination: {exc.public}")
        except _ResolutionTimeout as exc:
            return failed(f"timeout: DNS resolution of {exc.host} took longer than {self._timeout_s:g} s")

        host = target.raw_host.decode("ascii")
        request_headers = {**headers, "host": target.netloc.decode("ascii")}
        extensions: dict[str, Any] = {"trace": watchdog.trace}
        if target.scheme == "https":
            # The connection goes to the address, but TLS must name and verify the host the tenant gave us.
            extensions["sni_hostname"] = host

        connect_errors: list[str] = []
        for address in addresses[:_MAX_ADDRESSES_TRIED]:
            request = self._client.build_request(
                "POST",
                _url_for_address(target, address),
                headers=request_headers,
                content=body,
                extensions=extensions,
            )
            try:
                response = self._client.send(request, stream=True)
            except httpx.ConnectError as exc:
                if watchdog.expired:
                    return failed(self._budget_error())
                # Nothing was sent on a connection that failed to open, so another address is safe to try.
                connect_errors.append(f"{_describe(exc)} ({_address_port(target, address)})")
                continue
            except (httpx.HTTPError, OSError) as exc:
                return failed(self._budget_error() if watchdog.expired else _describe(exc))
            try:
                return self._read(response, started=started)
            finally:
                response.close()
        return failed("; ".join(connect_errors))

    def _read(self, response: httpx.Response, *, started: float) -> DeliveryResult:
        status = response.status_code
        content = bytearray()
        try:
            for chunk in response.iter_raw():
                content += chunk
                if len(content) >= self._max_response_bytes:
                    # Stop here: the rest is never read, and closing the response drops the connection.
                    del content[self._max_response_bytes :]
                    break
        except (httpx.HTTPError, OSError):
            # The status already arrived, and it is the receiver's verdict; a body cut short only shortens the
            # excerpt.
            pass

        error: str | None = None
        if 300 <= status < 400:
            location = response.headers.get("location")
            target = "with no Location" if location is None else f"to {location[:_LOCATION_CHARS]}"
            error = f"redirect not followed ({status} {target})"
        elif not 200 <= status < 300:
            error = f"HTTP {status}"
        return DeliveryResult(
            ok=error is None,
            status_code=status,
            retry_after_s=_parse_retry_after(response.headers.get("retry-after")),
            gone=status == 410,
            error=error,
            response_excerpt=_excerpt(bytes(content[:_EXCERPT_BYTES]), response.charset_encoding),
            latency_ms=_elapsed_ms(started),
            response_bytes=len(content),
        )

    def _resolve_bounded(self, host: str, port: int) -> list[str]:
        future = self._dns.submit(self._resolve, host, port)
        try:
            return future.result(timeout=self._timeout_s)
        except TimeoutError:
            # The lookup thread finishes on its own when the system resolver gives up; nobody waits for it.
            future.cancel()
            raise _ResolutionTimeout(host) from None

    def _budget_error(self) -> str:
        return f"timeout: the attempt took longer than its budget of {self._budget_s:g} s"


class _ResolutionTimeout(Exception):
    def __init__(self, host: str) -> None:
        super().__init__(host)
        self.host = host


class _Watchdog:
    """Shuts the attempt's socket down when the whole attempt's budget is spent.

    httpcore reports each new connection through the ``trace`` request extension; shutting the socket down from
    this timer thread wakes the worker thread from whatever read or write it is blocked in.
    """

    def __init__(self, budget_s: float) -> None:
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self.expired = False
        self._timer = threading.Timer(budget_s, self._expire)
        self._timer.daemon = True

    def start(self) -> None:
        self._timer.start()

    def cancel(self) -> None:
        self._timer.cancel()

    def trace(self, event: str, info: Mapping[str, Any]) -> None:
        # After TLS starts, the plain socket is detached and the TLS socket is the one to shut down.
        if event not in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
            return
        stream = info.get("return_value")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if not isinstance(sock, socket.socket):
            return
        with self._lock:
            self._socket = sock
            if self.expired:
                _shutdown(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            if self._socket is not None:
                _shutdown(self._socket)


def _shutdown(sock: socket.socket) -> None:
    try:
        # The plain socket method, not SSLSocket.shutdown, which also drops the TLS state the other thread is using.
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass  # already closed


def _url_for_address(target: httpx.URL, address: IPAddress) -> httpx.URL:
    """The URL with its host replaced by the address (bracketed if IPv6), keeping scheme, port, path and query."""
    return target.copy_with(host=str(address))


def _address_port(target: httpx.URL, address: IPAddress) -> str:
    port = target.port if target.port is not None else (443 if target.scheme == "https" else 80)
    return f"[{address}]:{port}" if isinstance(address, IPv6Address) else f"{address}:{port}"


def _describe(exc: BaseException) -> str:
    """A short error for the delivery log: the kind of failure first, then the library's words."""
    if isinstance(exc, httpx.TimeoutException):
        phase = {
            httpx.ConnectTimeout: "connect",
            httpx.ReadTimeout: "read",
            httpx.WriteTimeout: "write",
            httpx.PoolTimeout: "pool",
        }.get(type(exc), "network")
        return f"timeout: {phase}"
    detail = str(exc) or type(exc).__name__
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLError):
            return f"TLS error: {cause}"
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, httpx.ConnectError):
        return f"connection error: {detail}"
    if isinstance(exc, httpx.RemoteProtocolError | httpx.LocalProtocolError):
        return f"protocol error: {detail}"
    return f"network error: {detail}"


_DELAY_SECONDS = re.compile(r"\d+(\.\d+)?")


def _parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delay-seconds or an HTTP date), capped at 24 h; None if absent
    or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if _DELAY_SECONDS.fullmatch(value):
        return min(float(value), _RETRY_AFTER_CAP_S)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)  # HTTP dates are GMT
    seconds = (when - datetime.now(UTC)).total_seconds()
    return min(max(seconds, 0.0), _RETRY_AFTER_CAP_S)


def _excerpt(content: bytes, charset: str | None) -> str:
    encoding = "utf-8"
    if charset:
        try:
            encoding = codecs.lookup(charset).name
        except LookupError:
            pass
    return content.decode(encoding, errors="replace")[:_EXCERPT_CHARS]


def _elapsed_ms(started: float) -> int:
    return round((time.monotonic() - started) * 1000)
