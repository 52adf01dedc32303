"""uvicorn's HTTP protocol with a bound on a request's head (request line and headers).

uvicorn's default parser (httptools) buffers a head of any size: a client sending megabytes of headers is held
in memory until they end. h11 has a bound (`h11_max_incomplete_event_size`), httptools none, so this protocol
counts the bytes received while a head is being read and answers `431 Request Header Fields Too Large` (and
closes) past `max_header_bytes`, which it reads from uvicorn's `h11_max_incomplete_event_size` (the CLI sets both
from SWITCHYARD_MAX_HEADER_BYTES, so either parser applies the same bound). Cost: an addition and a comparison
per read of the socket."""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

DEFAULT_MAX_HEADER_BYTES = 16 * 1024
_BODY = b"request header fields too large"
_RESPONSE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-length: " + str(len(_BODY)).encode() + b"\r\nconnection: close\r\n\r\n" + _BODY
)


class HeaderLimitedProtocol(HttpToolsProtocol):
    """HttpToolsProtocol refusing a request head over the configured size with 431."""

    def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self._max_head = int(getattr(config, "h11_max_incomplete_event_size", None) or DEFAULT_MAX_HEADER_BYTES)
        # Bytes of the head being read; None while a body is (or nothing is expected).
        self._head: int | None = 0

    def data_received(self, data: bytes) -> None:
        if self._head is None or not hasattr(self, "parser"):
            super().data_received(data)
            return
        self._head += len(data)
        super().data_received(data)
        # Still in the head after this read, and past the bound: refuse rather than keep buffering it.
        if self._head is not None and self._head > self._max_head and not self.transport.is_closing():
            self.transport.write(_RESPONSE)
            self.transport.close()

    def on_headers_complete(self) -> None:
        self._head = None
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._head = 0  # the next request on this connection starts with its head


def http_protocol() -> str:
    """What to give uvicorn as `http`: this protocol, or h11 (which applies the bound itself) without httptools."""
    try:
        import httptools  # noqa: F401
    except ImportError:  # pragma: no cover
        return "h11"
    return "switchyard.gateway_api.http_protocol:HeaderLimitedProtocol"
