"""The request id: an incoming `X-Request-ID` kept (else one made), bound for every log line of the request and
echoed on the response."""

from __future__ import annotations

import logging
import os

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = structlog.get_logger(__name__)

HEADER = b"x-request-id"
# Longer or stranger ids are replaced: the value is echoed as a header and written to logs.
_MAX_LENGTH = 128


def _acceptable(value: bytes) -> bool:
    return 0 < len(value) <= _MAX_LENGTH and all(33 <= b <= 126 for b in value)


class RequestId:
    """Pure ASGI (no per-request objects beyond a closure): on the hot path, it costs a few microseconds."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # Decided once (logging is configured before the app is built): a disabled structlog call still costs
        # about 2 µs through its lazy proxy.
        self.debug = logging.getLogger().isEnabledFor(logging.DEBUG)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        raw: bytes | None = None
        for name, value in scope["headers"]:
            if name == HEADER:
                raw = value if _acceptable(value) else None
                break
        if raw is None:
            raw = os.urandom(16).hex().encode()
        # Each request runs in a task of its own: what is bound here is seen by its endpoint (threads included,
        # which start with a copy of this context) and by nothing else.
        tokens = structlog.contextvars.bind_contextvars(request_id=raw.decode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (HEADER, raw)]
                # At DEBUG only: the route's template is not known here, and a line per
                # request is an access log, which production leaves to the proxy in front.
                if self.debug:
                    log.debug("request", method=scope.get("method"), path=scope["path"], status=message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_with_id if scope["type"] == "http" else send)
        finally:
            structlog.contextvars.reset_contextvars(**tokens)
