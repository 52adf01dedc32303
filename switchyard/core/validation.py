"""Pydantic validation errors as our InvalidRequest, naming the field the way clients wrote it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from switchyard.core.errors import InvalidRequest


def loc_to_param(loc: Sequence[int | str], prefix: str = "") -> str:
    """('input', 'messages', 0, 'content') -> 'input.messages[0].content'."""
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def error_message(err: Any) -> str:
    """One pydantic error in the words clients see."""
    if err["type"] == "extra_forbidden":
        return "unknown field"
    if err["type"] == "missing":
        return "field required"
    return str(err["msg"])


def invalid_request(exc: ValidationError, prefix: str = "") -> InvalidRequest:
    """The first problem names the param; the message lists every problem."""
    errors = exc.errors()
    # Union members each report their own failure; a name without the union member's tag reads better.
    params = [loc_to_param([p for p in e["loc"] if not _is_union_tag(p)], prefix) for e in errors]
    problems = [f"{param or 'body'}: {error_message(e)}" for param, e in zip(params, errors, strict=True)]
    unique = list(dict.fromkeys(problems))
    return InvalidRequest("; ".join(unique[:10]), param=params[0] if params else None)


def _is_union_tag(part: int | str) -> bool:
    return isinstance(part, str) and (part in {"str", "int", "float", "bool", "list[str]"} or "[" in part)
