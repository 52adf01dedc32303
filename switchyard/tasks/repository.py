"""Queries on tasks and attempts."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from switchyard.core.models import Attempt, Task


def get_for_tenant(session: Session, tenant_id: str, task_id: str) -> Task | None:
    """A task, or None when it does not exist or belongs to another tenant."""
    return session.scalar(select(Task).where(Task.id == task_id, Task.tenant_id == tenant_id))


def get_by_idempotency_key(session: Session, tenant_id: str, key: str) -> Task | None:
    return session.scalar(select(Task).where(Task.tenant_id == tenant_id, Task.idempotency_key == key))


def attempts_of(session: Session, task_ids: Sequence[str]) -> dict[str, list[Attempt]]:
    """Attempts of several tasks in one query, keyed by task id."""
    by_task: dict[str, list[Attempt]] = defaultdict(list)
    if task_ids:
        for attempt in session.scalars(
            select(Attempt).where(Attempt.task_id.in_(task_ids)).order_by(Attempt.task_id, Attempt.n)
        ):
            by_task[attempt.task_id].append(attempt)
    return by_task


def page(
    session: Session,
    tenant_id: str,
    *,
    status: str | None,
    type: str | None,
    model: str | None,
    after: str | None,
    limit: int,
) -> list[Task]:
    """Newest first; ids sort by creation time, so the cursor is the last id seen. Fetches one extra row."""
    query = select(Task).where(Task.tenant_id == tenant_id)
    if status:
        query = query.where(Task.status == status)
    if type:
        query = query.where(Task.type == type)
    if model:
        query = query.where(Task.model == model)
    if after:
        query = query.where(Task.id < after)
    return list(session.scalars(query.order_by(Task.id.desc()).limit(limit + 1)))
