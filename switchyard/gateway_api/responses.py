"""JSON responses rendered with orjson, and the error shape of API.md."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.responses import JSONResponse

from switchyard.core.errors import AppError


class FastJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def error_body(type_: str, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"type": type_, "message": message, "param": param, "code": code}}


def error_response(exc: AppError) -> FastJSONResponse:
    return FastJSONResponse(
        error_body(exc.type, exc.message, exc.param, exc.code), status_code=exc.status, headers=exc.headers
    )
