"""The tasks' sweep: no accepted task is lost. It re-publishes tasks left `queued` (a lost message, a flushed
or restarted broker, a due retry) and takes back `running` tasks whose worker lease expired (a killed
worker), failing those that have taken down too many workers. It is one of the periodic duties that
`workers/duties.py` composes and runs in the leading worker, in a transaction of the duty runner's.
Should two sweeps overlap anyway, rows are picked with SKIP LOCKED and changed by conditional updates."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select, update

from switchyard.core.db import Tx
from switchyard.core.models import Task
from switchyard.events.log import append_event
from switchyard.settings import Settings
from switchyard.tasks.service import Dispatcher

BATCH = 500


# A task that has taken down this many workers is failed rather than handed to another one.
MAX_RECLAIMS = 5


@dataclass
class TaskSweep:
    """What one pass did, by task id."""

    reclaimed: list[str] = field(default_factory=list)
    republished: list[str] = field(default_factory=list)
    abandoned: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """How many of each, for the duty's log line."""
        return {
            "reclaimed": len(self.reclaimed),
            "republished": len(self.republished),
            "abandoned": len(self.abandoned),
        }


def sweep_tasks(tx: Tx, dispatcher: Dispatcher, settings: Settings, now: datetime) -> TaskSweep:
    """One pass in the caller's transaction; the messages are published after its commit."""
    report = TaskSweep()
    session = tx.session
    expired = list(
        session.execute(
            select(Task.id, Task.type, Task.tenant_id, Task.reclaim_count, Task.run_id, Task.step_id)
            .where(Task.status == "running", Task.lease_expires_at < now)
            .limit(BATCH)
            .with_for_update(skip_locked=True)
        )
    )
    for row in expired:
        if row.reclaim_count + 1 >= MAX_RECLAIMS:
            error = {"type": "worker_lost", "message": f"the task's worker was lost {MAX_RECLAIMS} times"}
            session.execute(
                update(Task)
                .where(Task.id == row.id, Task.status == "running")
                .values(
                    status="failed",
                    error=error,
                    claim_id=None,
                    lease_expires_at=None,
                    finished_at=now,
                    reclaim_count=row.reclaim_count + 1,
                )
            )
            append_event(
                session,
                tenant_id=row.tenant_id,
                type="task.failed",
                task_id=row.id,
                run_id=row.run_id,
                step_id=row.step_id,
                data={"id": row.id, "status": "failed", "error": error},
            )
            report.abandoned.append(row.id)
            continue
        session.execute(
            update(Task)
            .where(Task.id == row.id, Task.status == "running")
            .values(
                status="queued",
                claim_id=None,
                lease_expires_at=None,
                published_at=now,
                reclaim_count=row.reclaim_count + 1,
            )
        )
        append_event(
            session,
            tenant_id=row.tenant_id,
            type="task.retrying",
            task_id=row.id,
            run_id=row.run_id,
            step_id=row.step_id,
            data={"id": row.id, "reason": "worker lease expired"},
        )
        report.reclaimed.append(row.id)
        _publish_after_commit(tx, dispatcher, row.id, row.type)

    stale = now - timedelta(seconds=settings.requeue_after_s)
    due = list(
        session.execute(
            select(Task.id, Task.type)
            .where(
                Task.status == "queued",
                Task.cancel_requested.is_(False),
                (Task.due_at.is_(None)) | (Task.due_at <= now),
                (Task.published_at.is_(None)) | (Task.published_at < stale),
            )
            .limit(BATCH)
            .with_for_update(skip_locked=True)
        )
    )
    if due:
        session.execute(update(Task).where(Task.id.in_([r.id for r in due])).values(published_at=now))
    for due_row in due:
        report.republished.append(due_row.id)
        _publish_after_commit(tx, dispatcher, due_row.id, due_row.type)
    return report


def _publish_after_commit(tx: Tx, dispatcher: Dispatcher, task_id: str, task_type: str) -> None:
    tx.after_commit(lambda: dispatcher.publish_task(task_id, task_type))
