"""The sweeper's transitions: taking back tasks whose worker lease lapsed, re-publishing lost or due ones."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select

from switchyard.core.db import Tx
from switchyard.core.models import Task
from switchyard.events.log import append_event
from switchyard.tasks.transitions.common import (
    MAX_RECLAIMS,
    Dispatcher,
    TaskStatus,
    publish_after_commit,
    task_update,
)
from switchyard.tasks.transitions.settle import settle_after_commit


def reclaim_expired(tx: Tx, dispatcher: Dispatcher, now: datetime, limit: int) -> tuple[list[str], list[str]]:
    """Running tasks whose lease lapsed (a killed or hung worker) go back to the queue, or fail once they have
    taken down MAX_RECLAIMS workers. Returns (reclaimed ids, abandoned ids)."""
    session = tx.session
    expired = list(
        session.execute(
            select(
                Task.id,
                Task.type,
                Task.model,
                Task.tenant_id,
                Task.reclaim_count,
                Task.run_id,
                Task.step_id,
                Task.batch_id,
                Task.admission,
                Task.cost_usd,
            )
            .where(Task.status == TaskStatus.RUNNING, Task.lease_expires_at < now)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )
    reclaimed: list[str] = []
    abandoned: list[str] = []
    for row in expired:
        common = {"tenant_id": row.tenant_id, "task_id": row.id, "run_id": row.run_id, "step_id": row.step_id}
        if row.reclaim_count + 1 >= MAX_RECLAIMS:
            error = {"type": "worker_lost", "message": f"the task's worker was lost {MAX_RECLAIMS} times"}
            session.execute(
                task_update()
                .where(Task.id == row.id, Task.status == TaskStatus.RUNNING)
                .values(
                    status=TaskStatus.FAILED,
                    error=error,
                    claim_id=None,
                    lease_expires_at=None,
                    finished_at=now,
                    reclaim_count=row.reclaim_count + 1,
                )
            )
            append_event(session, type="task.failed", data={"id": row.id, "status": "failed", "error": error}, **common)
            # Settled to what its finished attempts cost (the lost ones' usage is unknown).
            settle_after_commit(tx, row.id, row.admission, row.cost_usd or 0.0, None)
            abandoned.append(row.id)
            continue
        session.execute(
            task_update()
            .where(Task.id == row.id, Task.status == TaskStatus.RUNNING)
            .values(
                status=TaskStatus.QUEUED,
                claim_id=None,
                lease_expires_at=None,
                published_at=now,
                reclaim_count=row.reclaim_count + 1,
            )
        )
        append_event(session, type="task.retrying", data={"id": row.id, "reason": "worker lease expired"}, **common)
        reclaimed.append(row.id)
        publish_after_commit(tx, dispatcher, row.id, row.type, row.model, row.run_id, row.batch_id)
    return reclaimed, abandoned


def republish_due(tx: Tx, dispatcher: Dispatcher, now: datetime, stale: datetime, limit: int) -> list[str]:
    """Queued tasks that are due and whose message is older than `stale` (or was never sent) are published
    again: a lost message, a flushed or restarted broker, a due retry. The claim makes a duplicate harmless."""
    session = tx.session
    due = list(
        session.execute(
            select(Task.id, Task.type, Task.model, Task.run_id, Task.batch_id)
            .where(
                Task.status == TaskStatus.QUEUED,
                Task.cancel_requested.is_(False),
                (Task.due_at.is_(None)) | (Task.due_at <= now),
                (Task.published_at.is_(None)) | (Task.published_at < stale),
            )
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )
    if due:
        session.execute(task_update().where(Task.id.in_([r.id for r in due])).values(published_at=now))
    for row in due:
        publish_after_commit(tx, dispatcher, row.id, row.type, row.model, row.run_id, row.batch_id)
    return [row.id for row in due]
