"""Request validation: pydantic errors as our InvalidRequest naming the field the way clients wrote it, and the
strings Postgres cannot store (U+0000, lone surrogates), found with the path of the field that holds them."""

from __future__ import annotations

import re
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


# Characters Postgres cannot store: U+0000 (in text nor in JSONB) and UTF-16 surrogates (not encodable as UTF-8).
# JSON decoders join a valid surrogate pair into one character, so a surrogate left in a decoded string is lone.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")

# The only ways such a character gets into a JSON body: the escapes \u0000 and \ud800-\udfff, a NUL byte (a
# UTF-16/32 body, which the stdlib decoder accepts; raw control characters are invalid JSON) or a surrogate
# written as UTF-8 bytes (ED A0-BF .., which the stdlib decoder lets through). Searching the bytes for these
# is far cheaper than decoding the body a second time, so only a body that matches is decoded and walked.
_UNSTORABLE_JSON_BYTES = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])|\x00|\xed[\xa0-\xbf]")


def has_unstorable(text: str) -> bool:
    """Whether `text` holds U+0000 or a lone surrogate, which Postgres cannot store."""
    if text.isascii():  # the common case, and `in` is much faster than a regular expression
        return "\x00" in text
    return _UNSTORABLE.search(text) is not None


# Integers outside 64 bits: JSONB stores them, but nothing that reads them back can (orjson, which renders every
# answer, refuses them; so do Redis counters and most clients). 19 digits in a row is where they start: found by
# mapping every digit to "0" and everything else to " ", then a substring search (C loops, an order of magnitude
# faster than the regular expression [0-9]{19}).
_DIGITS_ONLY = bytes(0x30 if 0x30 <= i <= 0x39 else 0x20 for i in range(256))
_LONG_RUN = b"0" * 19
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def json_may_hold_unstorable(body: bytes) -> bool:
    """False when no value decoded from this JSON body can be a string holding U+0000 or a lone surrogate, or
    an integer outside 64 bits (true may be a false alarm, e.g. an escaped backslash followed by 'u0000', or
    19 digits inside a string)."""
    # Byte searches first: most bodies have none of these bytes, and those are cleared without the regex.
    if (b"\\u" in body or b"\x00" in body or b"\xed" in body) and _UNSTORABLE_JSON_BYTES.search(body) is not None:
        return True
    return may_hold_long_integer(body)


def may_hold_long_integer(body: bytes) -> bool:
    """Whether `body` has 19 digits in a row, where integers that do not fit in 64 bits start."""
    return _LONG_RUN in body.translate(_DIGITS_ONLY)


def printable(text: str) -> str:
    """`text` with U+0000 and surrogates written as `\\uXXXX`, safe to echo in an error (a lone surrogate
    cannot even be encoded in the JSON of a response)."""
    return _UNSTORABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def find_unstorable(value: Any, prefix: str = "") -> tuple[str, str] | None:
    """(param, problem) for the first string, object key or value, in decoded JSON `value` that Postgres
    cannot store; the param is written like `loc_to_param` writes it ('' for `value` itself)."""
    found = _find(value)
    if found is None:
        return None
    reversed_loc, problem = found
    loc = [printable(part) if isinstance(part, str) else part for part in reversed(reversed_loc)]
    return loc_to_param(loc, prefix), problem


def _find(value: Any) -> tuple[list[int | str], str] | None:
    """The location (innermost part first, so that it is only built on a find) and the problem."""
    if isinstance(value, str):
        return ([], _problem(value)) if has_unstorable(value) else None
    if isinstance(value, int):
        return None if INT64_MIN <= value <= INT64_MAX else ([], "must be an integer that fits in 64 bits")
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and has_unstorable(key):
                return [key], f"key {printable(key)!r} {_problem(key)}"
            if isinstance(item, str | int | dict | list) and (found := _find(item)) is not None:
                found[0].append(key if isinstance(key, str | int) else str(key))
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if isinstance(item, str | int | dict | list) and (found := _find(item)) is not None:
                found[0].append(i)
                return found
    return None


def _problem(text: str) -> str:
    if "\x00" in text:
        return "must not contain the NUL character (U+0000)"
    return "must not contain a lone UTF-16 surrogate (U+D800 to U+DFFF)"
