"""`GET /v1/usage`: tokens, requests, errors and cost of a tenant's provider calls, grouped."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from sqlalchemy import case, func, select

from switchyard.core.db import Tx
from switchyard.core.models import Attempt, Task

GroupBy = Literal["model", "provider", "day"]

_SUMS = ("input_tokens", "output_tokens", "cached_input_tokens", "cache_write_tokens", "predictions")


def usage(tx: Tx, tenant_id: str, *, group_by: GroupBy, since: datetime, until: datetime) -> dict[str, Any]:
    """Every attempt counts (a failed one may have cost money); `requests` are provider calls, `tasks` the
    tasks they were made for. By model means the logical model the call was for (a fallback's, maybe)."""
    key = {
        "model": func.coalesce(Attempt.model, Task.model),
        "provider": Attempt.provider,
        "day": func.date(Attempt.started_at),
    }[group_by]
    columns = [
        func.count().label("requests"),
        func.sum(case((Attempt.status == "failed", 1), else_=0)).label("errors"),
        func.count(func.distinct(Attempt.task_id)).label("tasks"),
        *(func.sum(getattr(Attempt, name)).label(name) for name in _SUMS),
        func.sum(Attempt.cost_usd).label("cost_usd"),
    ]
    rows = tx.session.execute(
        select(key.label("key"), *columns)
        .join(Task, Task.id == Attempt.task_id)
        .where(Task.tenant_id == tenant_id, Attempt.started_at >= since, Attempt.started_at < until)
        .group_by(key)
        .order_by(key)
    )
    data = []
    for row in rows:
        entry: dict[str, Any] = {group_by: str(row.key)}
        entry.update({name: int(getattr(row, name) or 0) for name in ("requests", "errors", "tasks", *_SUMS)})
        entry["cost_usd"] = float(row.cost_usd or 0.0)
        data.append(entry)
    total: dict[str, Any] = {name: sum(d[name] for d in data) for name in ("requests", "errors", *_SUMS)}
    total["cost_usd"] = sum(d["cost_usd"] for d in data)
    return {
        "object": "usage",
        "group_by": group_by,
        "from": since.isoformat(),
        "to": until.isoformat(),
        "data": data,
        "total": total,
    }
