"""Every error leaves in one shape. Nothing a client can send produces a 500; a dependency that is down is a 503."""

from __future__ import annotations

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from kombu.exceptions import OperationalError as BrokerError
from psycopg import OperationalError as PgOperationalError
from psycopg import errors as pg_errors
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DataError, DBAPIError
from sqlalchemy.exc import TimeoutError as SqlPoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from switchyard.core.errors import AppError, InvalidRequest, MalformedRequest, ServiceUnavailable
from switchyard.core.validation import loc_to_param
from switchyard.gateway_api.bodies import unparsed_body_error
from switchyard.gateway_api.input_guard import unstorable_error
from switchyard.gateway_api.responses import FastJSONResponse, error_body, error_response

log = structlog.get_logger(__name__)

_HTTP_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
}


def _validation_error(request: Request, exc: RequestValidationError) -> AppError:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return MalformedRequest("request body is not valid JSON", param="body")
    if any(list(e.get("loc", ())) == ["body"] for e in errors):
        # FastAPI parses a body as JSON only when its Content-Type says so; anything else arrives as bytes.
        whole = MalformedRequest("request body must be a JSON object", param="body")
        if (error := unparsed_body_error(request, whole)) is not whole:
            return error
    problems = []
    params = []
    for err in errors:
        loc = list(err.get("loc", ()))
        where = loc[0] if loc else "body"
        param = loc_to_param(loc[1:]) or str(where)
        if err.get("type") == "missing":
            msg = "field required"
        elif err.get("type") == "extra_forbidden":
            msg = "unknown field"
        elif err.get("type") in ("model_attributes_type", "dict_type") and not loc[1:]:
            msg = "request body must be a JSON object"
        else:
            msg = str(err.get("msg"))
        params.append(param)
        problems.append(f"{param}: {msg}")
    return InvalidRequest("; ".join(dict.fromkeys(problems)), param=params[0] if params else None)


_UNSTORABLE_MESSAGE = "a string in the request holds a character that cannot be stored (U+0000 or a lone surrogate)"


def unstorable_in_database(exc: BaseException) -> bool:
    """The database or its driver refused a string for U+0000 or a lone surrogate. That is the client's input,
    which `input_guard` refuses earlier with the field named; this is the backstop for a path it does not see."""
    if isinstance(exc, UnicodeEncodeError):  # psycopg cannot encode a surrogate in a text parameter as UTF-8
        return exc.reason == "surrogates not allowed"
    if not isinstance(exc, DBAPIError):
        return False
    orig = exc.orig
    if isinstance(orig, pg_errors.UntranslatableCharacter):  # \u0000 in JSONB
        return True
    if isinstance(orig, pg_errors.InvalidTextRepresentation):  # a lone \ud800 escape in JSONB
        return "surrogate" in str(getattr(orig.diag, "message_detail", "") or "")
    # psycopg refuses NUL in a text parameter itself, as a DataError without a SQLSTATE.
    return isinstance(exc, DataError) and "NUL" in str(orig)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AppError)
    async def _app_error(_: Request, exc: AppError) -> Response:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        return error_response(_validation_error(request, exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> Response:
        type_ = _HTTP_TYPES.get(exc.status_code, "invalid_request_error")
        return FastJSONResponse(
            error_body(type_, str(exc.detail)), status_code=exc.status_code, headers=getattr(exc, "headers", None)
        )

    @app.exception_handler(DBAPIError)
    async def _database(request: Request, exc: DBAPIError) -> Response:
        if unstorable_in_database(exc):
            log.warning("unstorable_string", path=request.url.path, error=str(exc.orig))
            return error_response(unstorable_error(request, _UNSTORABLE_MESSAGE, None))
        if exc.connection_invalidated or "connect" in str(exc.orig).lower():
            log.warning("database_unavailable", error=str(exc.orig))
            return error_response(ServiceUnavailable("database unavailable"))
        log.exception("database_error")
        return FastJSONResponse(error_body("api_error", "internal error"), status_code=500)

    @app.exception_handler(UnicodeEncodeError)
    async def _encoding(request: Request, exc: UnicodeEncodeError) -> Response:
        if not unstorable_in_database(exc):
            log.exception("unhandled_error")
            return FastJSONResponse(error_body("api_error", "internal error"), status_code=500)
        log.warning("unstorable_string", path=request.url.path, error=str(exc))
        return error_response(unstorable_error(request, _UNSTORABLE_MESSAGE, None))

    @app.exception_handler(BrokerError)
    async def _broker(_: Request, exc: BrokerError) -> Response:
        log.warning("broker_unavailable", error=str(exc))
        return error_response(ServiceUnavailable("broker unavailable"))

    # The asyncio pool's connections (psycopg's own errors, not wrapped by SQLAlchemy; its PoolTimeout is one),
    # and a wait for a pooled connection that ran out because none could be made: the database is down or not
    # answering.
    @app.exception_handler(PgOperationalError)
    @app.exception_handler(SqlPoolTimeout)
    async def _database_unreachable(_: Request, exc: Exception) -> Response:
        log.warning("database_unavailable", error=f"{type(exc).__name__}: {exc}")
        return error_response(ServiceUnavailable("database unavailable"))

    @app.exception_handler(RedisConnectionError)
    @app.exception_handler(RedisTimeoutError)
    async def _redis(_: Request, exc: Exception) -> Response:
        log.warning("redis_unavailable", error=str(exc))
        return error_response(ServiceUnavailable("redis unavailable"))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> Response:
        log.exception("unhandled_error")
        return FastJSONResponse(error_body("api_error", "internal error"), status_code=500)
