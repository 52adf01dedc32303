"""What a request body is declared to be. A body that fails to parse as JSON while its Content-Type says it is
something else (curl's `-d` sends `application/x-www-form-urlencoded`) is answered with a 415 naming the header,
not with a complaint about the JSON the client never said it sent."""

from __future__ import annotations

from starlette.requests import HTTPConnection

from switchyard.core.errors import AppError, UnsupportedMediaType

YAML_TYPES = frozenset({"application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"})


def media_type(conn: HTTPConnection) -> str:
    """The request's Content-Type without its parameters, lower-cased ('' when absent)."""
    return conn.headers.get("content-type", "").split(";")[0].strip().lower()


def is_json_type(kind: str) -> bool:
    """True for a missing Content-Type (read as JSON), `application/json` and `application/*+json`."""
    return kind in ("", "application/json") or (kind.startswith("application/") and kind.endswith("+json"))


def unparsed_body_error(conn: HTTPConnection, error: AppError, accepted: str = "application/json") -> AppError:
    """`error` (the body is not a JSON object), unless the Content-Type explains why: then a 415 that names
    the accepted types and the one received."""
    kind = media_type(conn)
    if is_json_type(kind):
        return error
    return UnsupportedMediaType(
        f"the body must be sent with Content-Type: {accepted} (got {kind})",
        param="Content-Type",
        code="unsupported_media_type",
    )
