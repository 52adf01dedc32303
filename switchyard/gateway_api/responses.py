"""JSON responses rendered with orjson, and the error shape of API.md."""

from __future__ import annotations

import json
from typing import Any

import orjson
from fastapi.responses import JSONResponse

from switchyard.core.errors import AppError, error_body

__all__ = ["FastJSONResponse", "error_body", "error_response"]


class FastJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        try:
            return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
        except TypeError:
            # orjson stops at 64-bit integers; JSON has no such bound, and a larger one stored before the input
            # guard refused them must still render rather than make every answer showing it a 500.
            return json.dumps(content, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def error_response(exc: AppError) -> FastJSONResponse:
    return FastJSONResponse(
        error_body(exc.type, exc.message, exc.param, exc.code), status_code=exc.status, headers=exc.headers
    )
