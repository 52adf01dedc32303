"""How the fake provider's answers go on the wire: JSON bodies, error types, SSE and AWS event-stream framing,
and the deliberate mid-stream connection drop of ``[[break:K]]``."""

from __future__ import annotations

import asyncio
import base64
import logging
import struct
import zlib
from collections.abc import Mapping
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

_JSON = "application/json"
_SSE = "text/event-stream"
_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
_EVENTSTREAM = "application/vnd.amazon.eventstream"


class _AbortStream(Exception):
    """Raised after a partial stream to make the server drop the connection ([[break:K]])."""


def _is_abort(exc: BaseException | None) -> bool:
    seen: set[int] = set()
    stack: list[BaseException] = [exc] if exc is not None else []
    while stack:
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, _AbortStream):
            return True
        if isinstance(e, BaseExceptionGroup):
            stack.extend(e.exceptions)
        if e.__cause__ is not None:
            stack.append(e.__cause__)
        if e.__context__ is not None:
            stack.append(e.__context__)
    return False


class _AbortLogFilter(logging.Filter):
    """Hides uvicorn's 'Exception in ASGI application' record for deliberate stream aborts."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and _is_abort(record.exc_info[1]))


def _install_log_filter() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _AbortLogFilter) for f in logger.filters):
        logger.addFilter(_AbortLogFilter())


# Error ``type`` names that both APIs use for the same status.
_ERROR_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error", 429: "rate_limit_error"}
# Statuses only Anthropic names specially; OpenAI reports them by the general rules below.
_ANTHROPIC_ERROR_TYPES = {413: "request_too_large", 503: "overloaded_error", 529: "overloaded_error"}


def _error_type(status: int, *, anthropic: bool) -> str:
    """The error ``type`` a real provider reports for a status, so SDKs map it to the right exception."""
    if anthropic and status in _ANTHROPIC_ERROR_TYPES:
        return _ANTHROPIC_ERROR_TYPES[status]
    if status in _ERROR_TYPES:
        return _ERROR_TYPES[status]
    if status >= 500:
        return "api_error" if anthropic else "server_error"
    return "invalid_request_error"


def _json_response(obj: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(orjson.dumps(obj), status_code=status, headers=headers, media_type=_JSON)


class _StreamResponse(Response):
    """Sends pre-built stream events (SSE or AWS event-stream messages); optionally drops the connection
    instead of finishing the body."""

    def __init__(
        self, events: list[bytes], headers: Mapping[str, str], abort: bool, media_type: str, pause_s: float = 0.0
    ) -> None:
        self.events = events
        self.abort = abort
        self.pause_s = pause_s
        self.status_code = 200
        self.background = None
        self.body = b""
        self.media_type = media_type
        self.init_headers({**_SSE_HEADERS, **headers} if media_type == _SSE else headers)
        # init_headers adds content-length for an empty body; a stream has none.
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        try:
            for i, event in enumerate(self.events):
                if i and self.pause_s:
                    await asyncio.sleep(self.pause_s)
                await send({"type": "http.response.body", "body": event, "more_body": True})
            if self.abort:
                raise _AbortStream("deliberate stream abort ([[break:K]])")
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:  # client went away
            return


def _sse_data(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _sse_event(event: str, obj: Any) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"


def _eventstream_message(headers: Mapping[str, str], payload: bytes) -> bytes:
    """One message of the AWS event-stream binary framing, as botocore's EventStreamBuffer decodes it.

    Layout: total length and headers length (uint32 big-endian each), CRC32 of those 8 bytes, the headers
    (name length as 1 byte, name, value type 7 = string, value length as uint16, value), the payload, and
    the CRC32 of everything before it.
    """
    encoded = bytearray()
    for name, value in headers.items():
        raw_name, raw_value = name.encode(), value.encode()
        encoded += struct.pack(">B", len(raw_name)) + raw_name + struct.pack(">BH", 7, len(raw_value)) + raw_value
    prelude = struct.pack(">II", 12 + len(encoded) + len(payload) + 4, len(encoded))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + bytes(encoded) + payload
    return message + struct.pack(">I", zlib.crc32(message))


_CHUNK_HEADERS = {":event-type": "chunk", ":content-type": _JSON, ":message-type": "event"}


def _bedrock_chunk(event: str, obj: Any) -> bytes:
    """An Anthropic stream event as Bedrock sends it: a ``chunk`` whose payload carries the event JSON as
    base64 ``bytes``. The event name is not sent: the SDK takes it from the JSON's ``type``."""
    payload = orjson.dumps({"bytes": base64.b64encode(orjson.dumps(obj)).decode("ascii")})
    return _eventstream_message(_CHUNK_HEADERS, payload)


def _stream(
    head: list[bytes],
    content: list[bytes],
    tail: list[bytes],
    break_after: int | None,
    headers: Mapping[str, str],
    media_type: str = _SSE,
    trickle_ms: int = 0,
) -> Response:
    """A streamed chat answer of either API: opening events, content events, closing events.

    ``[[break:K]]`` keeps only the first K content events and then drops the connection, so a client sees a
    stream that dies mid-answer (no closing events at all). ``[[trickle:MS]]`` waits MS ms before each event
    after the first, so a stream can outlast a client's whole-call timeout with every read well within its own.
    """
    pause_s = trickle_ms / 1000.0
    if break_after is not None:
        return _StreamResponse([*head, *content[:break_after]], headers, True, media_type, pause_s)
    return _StreamResponse([*head, *content, *tail], headers, False, media_type, pause_s)
