"""A request-size limit enforced on the declared length and on the bytes actually received."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import orjson
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from switchyard.gateway_api.responses import error_body

# Room in an upload's body for the multipart framing and the form's other fields (which the upload route caps
# far below this), beyond the file's own limit.
UPLOAD_FRAMING_BYTES = 1024 * 1024


@dataclass(frozen=True)
class _Limit:
    max_bytes: int
    message: str
    param: str


class BodySizeLimit:
    """Answer 413 in the API's error shape for a body over `max_bytes`, chunked uploads included.

    `uploads` maps the paths of streamed file uploads to their own limit on the file: a `multipart/form-data`
    POST there may be that large (plus its framing); the route streams it to storage and checks the file's
    exact size itself. Any other body there (which might be read whole) keeps `max_bytes`."""

    def __init__(self, app: ASGIApp, max_bytes: int, uploads: Mapping[str, int] | None = None) -> None:
        self.app = app
        self.default = _Limit(max_bytes, f"request body exceeds {max_bytes} bytes", "body")
        self.uploads = {
            path: _Limit(
                limit + UPLOAD_FRAMING_BYTES,
                f"the file is larger than the limit of {limit} bytes (SWITCHYARD_MAX_FILE_BYTES)",
                "file",
            )
            for path, limit in (uploads or {}).items()
        }

    def _limit(self, scope: Scope) -> _Limit:
        upload = self.uploads.get(scope["path"]) if scope["method"] == "POST" else None
        if upload is not None:
            for name, value in scope.get("headers", ()):
                if name == b"content-type" and value.split(b";")[0].strip().lower() == b"multipart/form-data":
                    return upload
        return self.default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._limit(scope)
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    too_big = int(value) > limit.max_bytes
                except ValueError:
                    too_big = False
                if too_big:
                    await self._reject(send, limit)
                    return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit.max_bytes:
                    raise _TooLarge(413, limit.message)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._reject(send, limit)

    async def _reject(self, send: Send, limit: _Limit) -> None:
        body = orjson.dumps(error_body("request_too_large", limit.message, param=limit.param))
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _TooLarge(HTTPException):
    """An HTTPException so that FastAPI's body parsing re-raises it as is (it turns other errors into 400)."""
