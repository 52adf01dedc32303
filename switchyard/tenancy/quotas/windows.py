"""Fixed UTC windows and the Redis keys that count in them, and the `x-ratelimit-*` headers.

Windows are fixed and keyed by their start (the minute, hour or day since the epoch; the UTC day and month of
a budget), so a counter rolls over by its key changing and goes by its TTL: no reset job, nothing several
replicas could run twice. A fixed window admits up to twice a limit across a window boundary in the worst
case; the trade buys one counter per window instead of a log of every request."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from switchyard.tenancy.quotas.scripts import PREFIX

WindowName = Literal["daily", "monthly"]
# How long a budget window's counters outlive it (GET /v1/budget reads the current window only).
_BUDGET_TTL_EXTRA_S = 2 * 86400


@dataclass(frozen=True)
class BudgetWindow:
    """A UTC day or calendar month: where its spend and reservations are counted, and when it ends."""

    name: WindowName
    start: datetime
    end: datetime
    tag: str

    def spent_key(self, scope: str) -> str:
        return f"{PREFIX}{scope}:s:{self.name[0]}:{self.tag}"

    def reserved_key(self, scope: str) -> str:
        return f"{PREFIX}{scope}:r:{self.name[0]}:{self.tag}"

    def ttl_s(self, now: float) -> int:
        return int(self.end.timestamp() - now) + _BUDGET_TTL_EXTRA_S


def budget_windows(now: float) -> tuple[BudgetWindow, BudgetWindow]:
    """The UTC day and the UTC calendar month `now` falls in."""
    at = datetime.fromtimestamp(now, UTC)
    day = at.replace(hour=0, minute=0, second=0, microsecond=0)
    month = day.replace(day=1)
    next_month = (month + timedelta(days=32)).replace(day=1)
    return (
        BudgetWindow("daily", day, day + timedelta(days=1), day.strftime("%Y%m%d")),
        BudgetWindow("monthly", month, next_month, month.strftime("%Y%m")),
    )


@dataclass(frozen=True)
class Counter:
    """One fixed window of a rate limit: its key, its limit and the seconds until it resets."""

    key: str
    limit: int
    reset_s: float
    ttl_s: int
    kind: Literal["requests", "tokens"]


_SPANS = {"rpm": 60, "tpm": 60, "rph": 3600, "rpd": 86400}


def counter(scope: str, field: str, limit: int, now: float) -> Counter:
    """The window of `field` (rpm, tpm, rph, rpd) that `now` falls in."""
    span = _SPANS[field]
    index = int(now // span)
    return Counter(
        key=f"{PREFIX}{scope}:{field}:{index}",
        limit=limit,
        reset_s=(index + 1) * span - now,
        ttl_s=span + 60,
        kind="tokens" if field == "tpm" else "requests",
    )


def reset_text(seconds: float) -> str:
    """A duration as OpenAI writes it in `x-ratelimit-reset-*`: `20ms`, `1s`, `6m0s`, `1h2m3s`."""
    if seconds < 1:
        return f"{max(1, math.ceil(seconds * 1000))}ms"
    whole = math.ceil(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def ratelimit_headers(counters: list[Counter], values: list[int]) -> dict[str, str]:
    """`x-ratelimit-{limit,remaining,reset}-{requests,tokens}` of the tightest window of each kind (the one
    with the fewest left; a tie goes to the one that resets first)."""
    headers: dict[str, str] = {}
    for kind in ("requests", "tokens"):
        rows = [(max(0, c.limit - v), c.reset_s, c) for c, v in zip(counters, values, strict=True) if c.kind == kind]
        if not rows:
            continue
        left, reset_s, c = min(rows, key=lambda r: (r[0], r[1]))
        headers[f"x-ratelimit-limit-{kind}"] = str(c.limit)
        headers[f"x-ratelimit-remaining-{kind}"] = str(left)
        headers[f"x-ratelimit-reset-{kind}"] = reset_text(reset_s)
    return headers
