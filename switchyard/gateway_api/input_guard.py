"""One guard, run before every endpoint, against strings Postgres cannot store: U+0000 (refused in text and in
JSONB) and lone UTF-16 surrogates (not encodable as UTF-8). Such a string in a path parameter, a query parameter
or anywhere in a JSON or YAML body — value or key — is answered with a 4xx naming the field, instead of the 500
that the database's refusal would be. Endpoints need not know: they never see such a string. The same goes for
an integer that does not fit in 64 bits in a body: JSONB keeps it, but no answer holding it could be rendered."""

from __future__ import annotations

import json
from typing import Any

import yaml
from starlette.requests import HTTPConnection, Request

from switchyard.core.errors import AppError, InvalidRequest, MalformedRequest
from switchyard.core.validation import find_unstorable, json_may_hold_unstorable, may_hold_long_integer

# The OpenAI-compatible routes answer bad input with a 400, as OpenAI does (the others: 422).
OPENAI_TAG = "openai"

_YAML_TYPES = frozenset({"application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def openai_style(conn: HTTPConnection) -> bool:
    """Whether the matched route is one of the OpenAI-compatible ones."""
    return OPENAI_TAG in getattr(conn.scope.get("route"), "tags", ())


def unstorable_error(conn: HTTPConnection, message: str, param: str | None) -> AppError:
    """The error for a string that cannot be stored, in the style of the route that received it."""
    return (MalformedRequest if openai_style(conn) else InvalidRequest)(message, param=param)


async def reject_unstorable_strings(conn: HTTPConnection) -> None:
    """An app-wide dependency: refuse a request that carries U+0000 or a lone surrogate, naming the field.

    The cost on the common path is one regular-expression search over the body's bytes; only a body that
    matches is decoded (again) and walked to find the field."""
    found = find_unstorable(conn.path_params)
    # A URL cannot carry a surrogate (percent-decoding replaces invalid UTF-8) nor a raw NUL byte (the HTTP
    # server refuses it): only %00 decodes to NUL.
    if found is None and b"%00" in conn.scope.get("query_string", b""):
        found = next(
            (f for name, value in conn.query_params.multi_items() if (f := find_unstorable({name: value}))), None
        )
    if found is None and isinstance(conn, Request) and conn.method in _BODY_METHODS:
        try:
            found = await _find_in_body(conn)
        except RecursionError:
            raise MalformedRequest("request body is nested too deeply", param="body") from None
    if found is not None:
        param, problem = found
        raise unstorable_error(conn, f"{param or 'body'}: {problem}", param or "body")


async def _find_in_body(request: Request) -> tuple[str, str] | None:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    # Multipart uploads are left to stream into their parser (CSV cells must parse as numbers anyway).
    if content_type.startswith("multipart/"):
        return None
    body = await request.body()  # cached: the endpoint reads the same bytes
    decoded: Any
    if content_type in _YAML_TYPES:
        # Every way of writing U+0000 or a surrogate in YAML is a backslash escape in a double-quoted string
        # (raw control characters and invalid UTF-8 are refused by the YAML reader).
        if b"\\" not in body and not may_hold_long_integer(body):
            return None
        try:
            decoded = yaml.safe_load(body)
        except (yaml.YAMLError, ValueError):
            return None  # the endpoint reports the syntax error
    else:
        # Any other body may be parsed as JSON by its endpoint (the OpenAI routes ignore the content type).
        if not json_may_hold_unstorable(body):
            return None
        try:
            # The stdlib decoder, not orjson: it decodes lone surrogates (orjson refuses the whole body with
            # an error that names no field) and is what FastAPI decodes pydantic bodies with.
            decoded = json.loads(body)
        except ValueError:
            return None  # not JSON: the endpoint reports it
    return find_unstorable(decoded)
