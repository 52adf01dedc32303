"""The fake provider's markers: ``[[name:args@model]]`` in a request's text, parsed into what they ask for.

The grammar and each marker's effect are documented in :mod:`switchyard.fake_provider.app`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# name, optional numeric argument(s), optional "@model". A model name may itself contain "@" or ":" (Vertex's
# "claude-3-5-haiku@20241022", Bedrock's "...-v1:0"), so it runs to the closing brackets.
_MARKER_RE = re.compile(r"\[\[([a-z-]+)(?::([0-9:]+))?(?:@([^\[\]\s]+))?\]\]")


@dataclass(slots=True)
class _Markers:
    fail_status: int | None = None
    fail_times: int | None = None
    fail_model: str | None = None  # the "@model" of the fail marker that applied: it keys its own counter
    sleep_ms: int = 0
    trickle_ms: int = 0  # [[trickle:MS]]: a pause before each streamed event after the first
    retry_after: str | None = None
    cached: int = 0
    cache_write: int = 0
    break_after: int | None = None
    tool: bool = False
    context: bool = False
    policy: bool = False
    flag: bool = False
    flag_score: float | None = None
    tag: str | None = None  # [[tag:N]]: the request is counted under N in GET /control/tags


_NO_MARKERS = _Markers()


def _parse_markers(text: str, model: str) -> _Markers:
    """The markers in ``text`` that apply to a request for ``model``: the first applicable one of each kind."""
    if "[[" not in text:
        return _NO_MARKERS
    m = _Markers()
    seen: set[str] = set()
    for match in _MARKER_RE.finditer(text):
        name, arg, only_for = match.group(1), match.group(2), match.group(3)
        if name in seen or (only_for is not None and only_for != model):
            continue
        if name == "tool" and arg is None:
            m.tool = True
        elif name == "context" and arg is None:
            m.context = True
        elif name == "policy" and arg is None:
            m.policy = True
        elif name == "flag" and arg is None:
            m.flag = True
        elif arg is None:
            continue
        elif name == "fail":
            parts = arg.split(":")
            if len(parts) > 2 or not parts[0] or (len(parts) == 2 and not parts[1]):
                continue
            status = int(parts[0])
            if not 400 <= status <= 599:
                continue
            m.fail_status = status
            m.fail_times = int(parts[1]) if len(parts) == 2 else None
            m.fail_model = only_for
        elif ":" in arg:
            continue
        elif name == "flag":
            if int(arg) > 100:
                continue
            m.flag_score = int(arg) / 100
        elif name == "sleep":
            m.sleep_ms = int(arg)
        elif name == "trickle":
            m.trickle_ms = int(arg)
        elif name == "retry-after":
            m.retry_after = str(int(arg))
        elif name == "cached":
            m.cached = int(arg)
        elif name == "cache-write":
            m.cache_write = int(arg)
        elif name == "break":
            m.break_after = int(arg)
        elif name == "tag":
            m.tag = arg
        else:
            continue
        seen.add(name)
    return m
