"""Queries on batches, their lines and their lines' tasks."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Delete, Insert, delete, func, insert, select
from sqlalchemy.orm import Session

from switchyard.core.db import lock_for_update
from switchyard.core.models import BATCH_LINES, Batch, BatchLine, Task

from .schemas import LIVE

# The usage fields a batch sums over its lines' tasks.
USAGE_FIELDS = ("input_tokens", "output_tokens", "cached_input_tokens", "cache_write_tokens", "predictions")


def get_for_tenant(session: Session, tenant_id: str, batch_id: str) -> Batch | None:
    """A batch, or None when it does not exist or belongs to another tenant."""
    return session.scalar(select(Batch).where(Batch.id == batch_id, Batch.tenant_id == tenant_id))


def lock(session: Session, batch_id: str) -> Batch | None:
    """The batch, its row locked until the transaction ends: advances of one batch run one at a time."""
    lock_for_update(session)
    return session.scalar(select(Batch).where(Batch.id == batch_id).with_for_update())


def page(session: Session, tenant_id: str, *, after: str | None, limit: int) -> list[Batch]:
    """Newest first; ids sort by creation time, so the cursor is the last id seen. Fetches one extra row."""
    query = select(Batch).where(Batch.tenant_id == tenant_id)
    if after:
        query = query.where(Batch.id < after)
    return list(session.scalars(query.order_by(Batch.id.desc()).limit(limit + 1)))


@dataclass
class LineCounts:
    """A batch's line tasks by status, and what they have used and cost so far."""

    by_status: dict[str, int] = field(default_factory=dict)
    cost_usd: float = 0.0
    usage: dict[str, float] = field(default_factory=lambda: dict.fromkeys(USAGE_FIELDS, 0.0))

    def of(self, *statuses: str) -> int:
        return sum(self.by_status.get(s, 0) for s in statuses)

    def add(self, status: str, count: int, cost_usd: float, usage: Sequence[float]) -> None:
        self.by_status[status] = self.by_status.get(status, 0) + count
        self.cost_usd += cost_usd
        for name, value in zip(USAGE_FIELDS, usage, strict=True):
            self.usage[name] = self.usage.get(name, 0.0) + value

    def copy(self) -> LineCounts:
        return LineCounts(dict(self.by_status), self.cost_usd, dict(self.usage))

    def to_json(self) -> dict[str, Any]:
        return {"by_status": self.by_status, "cost_usd": self.cost_usd, "usage": self.usage}

    @classmethod
    def from_json(cls, stored: Mapping[str, Any] | None) -> LineCounts:
        if not stored:
            return cls()
        usage = dict.fromkeys(USAGE_FIELDS, 0.0) | {k: float(v) for k, v in stored["usage"].items()}
        return cls({k: int(v) for k, v in stored["by_status"].items()}, float(stored["cost_usd"]), usage)


def line_counts(session: Session, batch: Batch, unfinished: Collection[str]) -> LineCounts:
    """The batch's line tasks counted: its settled lines as stored, plus one aggregate over the lines from
    `settled_below` on (the index on tasks(batch_id, batch_line) serves it). The lines that have ended below
    the first unfinished one join the settled ones, on the batch row, saved with the caller's transaction.

    One statement, so one snapshot: the first unfinished line and the sums split at it agree. A line's task,
    once ended, never changes again, and every line below `released` has its task (made in the transaction
    that raised `released`, under the batch's lock)."""
    live = (
        select(Task.status, Task.batch_line, Task.cost_usd, Task.usage)
        .where(Task.batch_id == batch.id, Task.batch_line >= batch.settled_below)
        .cte("live")
    )
    first_unfinished = (
        select(func.coalesce(func.min(live.c.batch_line), batch.released))
        .where(live.c.status.in_(list(unfinished)))
        .scalar_subquery()
    )
    settles = (live.c.batch_line < first_unfinished).label("settles")
    sums = [func.coalesce(func.sum(live.c.usage[f].as_float()), 0) for f in USAGE_FIELDS]
    rows = session.execute(
        select(
            live.c.status,
            settles,
            first_unfinished.label("first_unfinished"),
            func.count(),
            func.coalesce(func.sum(live.c.cost_usd), 0),
            *sums,
        ).group_by(live.c.status, settles)
    ).all()
    settled = LineCounts.from_json(batch.settled)
    counts = settled.copy()
    for status, settles_now, _, count, cost, *usage in rows:
        values = (int(count), float(cost), [float(u) for u in usage])
        counts.add(status, *values)
        if settles_now:
            settled.add(status, *values)
    if rows:  # every row carries the same first unfinished line; none: nothing above the mark yet
        batch.settled_below = int(rows[0].first_unfinished)
        batch.settled = settled.to_json()
    return counts


def lines(session: Session, batch_id: str, start: int, stop: int) -> list[BatchLine]:
    """The validated lines `start <= line < stop`, in order."""
    return list(
        session.scalars(
            select(BatchLine)
            .where(BatchLine.batch_id == batch_id, BatchLine.line >= start, BatchLine.line < stop)
            .order_by(BatchLine.line)
        )
    )


def insert_lines() -> Insert:
    """The insert of validated lines (executed with a page of rows)."""
    return insert(BATCH_LINES)


def delete_lines(session: Session, batch_id: str) -> None:
    """Drop what a validation that failed had stored."""
    statement: Delete = delete(BatchLine).where(BatchLine.batch_id == batch_id)
    session.execute(statement)


def outcomes(session: Session, batch_id: str, start: int, stop: int) -> list[tuple[int, str, Task | None]]:
    """Lines `start <= line < stop`, in order, each with its custom id and its task (None where the line was
    never released).

    Two range scans on the (batch_id, line) indexes rather than a join: the join's plan hangs on statistics,
    and a batch's tasks arrive faster than autovacuum analyzes them; planned for one row, a nested loop took
    13 s a page at 10,000 lines."""
    custom_ids = session.execute(
        select(BatchLine.line, BatchLine.custom_id)
        .where(BatchLine.batch_id == batch_id, BatchLine.line >= start, BatchLine.line < stop)
        .order_by(BatchLine.line)
    ).all()
    tasks = session.scalars(
        select(Task).where(Task.batch_id == batch_id, Task.batch_line >= start, Task.batch_line < stop)
    )
    by_line = {t.batch_line: t for t in tasks}
    return [(line, custom_id, by_line.get(line)) for line, custom_id in custom_ids]


def live_ids(session: Session, stale: datetime, limit: int) -> list[str]:
    """Batches not yet ended that were last advanced before `stale` (or never), locked for this sweep."""
    return list(
        session.scalars(
            select(Batch.id)
            .where(
                Batch.status.in_([s.value for s in LIVE]), (Batch.advanced_at.is_(None)) | (Batch.advanced_at < stale)
            )
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )
