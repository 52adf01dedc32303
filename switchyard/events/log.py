"""Writing and reading the event log.

Each state change appends one row in the transaction that made the change. Rows are not readable as events
until the relay has numbered them (`seq`, the public event id): readers only ever see numbered events, in
`seq` order, so a cursor never skips an event that commits late.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Row, func, insert, select
from sqlalchemy.orm import Session

from switchyard.core.models import EVENTS, utcnow

TERMINAL_TYPES = frozenset(
    {
        "task.succeeded",
        "task.failed",
        "task.canceled",
        "run.succeeded",
        "run.failed",
        "run.canceled",
        "batch.completed",
        "batch.failed",
        "batch.canceled",
        "batch.expired",
    }
)


def append_event(
    session: Session,
    *,
    tenant_id: str,
    type: str,
    data: dict[str, Any],
    task_id: str | None = None,
    run_id: str | None = None,
    step_id: str | None = None,
    batch_id: str | None = None,
) -> None:
    """Add an event row to the current transaction (a Core insert: no unit-of-work bookkeeping, no autoflush)."""
    session.execute(
        insert(EVENTS).values(
            tenant_id=tenant_id,
            type=type,
            task_id=task_id,
            run_id=run_id,
            step_id=step_id,
            batch_id=batch_id,
            data=data,
            created_at=utcnow(),
        )
    )


# The columns an event is shown with; `seq` is shown as `id`.
COLUMNS = (
    EVENTS.c.seq,
    EVENTS.c.tenant_id,
    EVENTS.c.type,
    EVENTS.c.task_id,
    EVENTS.c.run_id,
    EVENTS.c.step_id,
    EVENTS.c.batch_id,
    EVENTS.c.data,
    EVENTS.c.created_at,
)


def event_view(row: Row[Any] | Any) -> dict[str, Any]:
    """An event as API.md shows it (from a row holding COLUMNS)."""
    return {
        "id": row.seq,
        "type": row.type,
        "task_id": row.task_id,
        "run_id": row.run_id,
        "step_id": row.step_id,
        "batch_id": row.batch_id,
        "data": row.data,
        "created_at": row.created_at.isoformat(),
    }


def events_after(
    session: Session,
    tenant_id: str,
    after: int,
    *,
    until: int | None = None,
    task_id: str | None = None,
    run_id: str | None = None,
    batch_id: str | None = None,
    types: Sequence[str] | None = None,
    limit: int = 1000,
) -> list[Row[Any]]:
    """Numbered events of the tenant with `after < seq <= until`, oldest first, optionally of one object."""
    query = select(*COLUMNS).where(EVENTS.c.tenant_id == tenant_id, EVENTS.c.seq > after)
    if until is not None:
        query = query.where(EVENTS.c.seq <= until)
    if task_id is not None:
        query = query.where(EVENTS.c.task_id == task_id)
    if run_id is not None:
        query = query.where(EVENTS.c.run_id == run_id)
    if batch_id is not None:
        query = query.where(EVENTS.c.batch_id == batch_id)
    if types:
        query = query.where(EVENTS.c.type.in_(types))
    return list(session.execute(query.order_by(EVENTS.c.seq).limit(limit)))


def last_seq(session: Session, tenant_id: str) -> int:
    """The newest numbered event of the tenant (0 when it has none)."""
    value = session.scalar(select(func.max(EVENTS.c.seq)).where(EVENTS.c.tenant_id == tenant_id))
    return int(value or 0)
