"""The event log: each state change appends one row in the transaction that made the change."""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session

from switchyard.core.models import EVENTS, Event, utcnow


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


def event_view(event: Event) -> dict[str, Any]:
    """An event as API.md shows it."""
    return {
        "id": event.id,
        "type": event.type,
        "task_id": event.task_id,
        "run_id": event.run_id,
        "step_id": event.step_id,
        "batch_id": event.batch_id,
        "data": event.data,
        "created_at": event.created_at.isoformat(),
    }
