"""The queries of retention. Each function is one bounded step: it picks at most `limit` rows (locking them
with `FOR UPDATE SKIP LOCKED` on Postgres, so a row someone is changing is left for the next pass), deletes
their children, then them, and says how many it deleted. The caller commits each step on its own.

Ids are time-sortable (`core.ids`), so a row made after a cutoff has an id above `id_floor(prefix, cutoff)`: the
scans walk the primary key up to there instead of the whole table.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, exists, func, or_, select
from sqlalchemy.orm import Session

from switchyard.core.ids import id_floor
from switchyard.core.models import (
    Attempt,
    AuditEntry,
    Batch,
    BatchLine,
    Event,
    File,
    Run,
    Task,
    WebhookAttempt,
    WebhookDelivery,
)

FINISHED_TASK = ("succeeded", "failed", "canceled")
LIVE_TASK = ("queued", "running")
LIVE_RUN = ("queued", "running")
LIVE_BATCH = ("validating", "in_progress", "finalizing", "cancelling")
ENDED_BATCH = ("completed", "failed", "expired", "cancelled")
ENDED_DELIVERY = ("succeeded", "failed")


def delete_tasks(session: Session, cutoff: datetime, limit: int) -> int:
    """Tasks that finished before `cutoff` (with their attempts), unless their run or batch is still live."""
    live_run = exists().where(Run.id == Task.run_id, Run.status.in_(LIVE_RUN))
    live_batch = exists().where(Batch.id == Task.batch_id, Batch.status.in_(LIVE_BATCH))
    ids = list(
        session.scalars(
            select(Task.id)
            .where(
                Task.id < id_floor("task", cutoff),
                Task.status.in_(FINISHED_TASK),
                Task.finished_at < cutoff,
                or_(Task.run_id.is_(None), ~live_run),
                or_(Task.batch_id.is_(None), ~live_batch),
            )
            .order_by(Task.id)
            .limit(limit)
            .with_for_update(skip_locked=True, of=Task)
        )
    )
    if not ids:
        return 0
    # Children first: an attempt names its task.
    session.execute(delete(Attempt).where(Attempt.task_id.in_(ids)))
    return _count(session.execute(delete(Task).where(Task.id.in_(ids))))


def oldest_live(session: Session) -> datetime | None:
    """When the oldest task, run or batch still live was made: no event of it, nor any after it, is deleted."""
    candidates = [
        session.scalar(select(func.min(Task.created_at)).where(Task.status.in_(LIVE_TASK))),
        session.scalar(select(func.min(Run.created_at)).where(Run.status.in_(LIVE_RUN))),
        session.scalar(select(func.min(Batch.created_at)).where(Batch.status.in_(LIVE_BATCH))),
    ]
    found = [c for c in candidates if c is not None]
    return min(found) if found else None


@dataclass(frozen=True)
class EventsCut:
    """One step of a tenant's events: how many were deleted, and whether the tenant's expired prefix is done."""

    deleted: int
    done: bool


def delete_events_prefix(session: Session, tenant_id: str, horizon: datetime, limit: int) -> EventsCut:
    """Delete the oldest numbered events of a tenant made before `horizon`, by id order, stopping at the first
    one to keep: what remains of the tenant's ids is always a suffix (a reader paging by `since` never finds a
    hole), and the tenant's newest event always stays (the relay's `prev` of the next one stays meaningful)."""
    newest = session.scalar(select(func.max(Event.seq)).where(Event.tenant_id == tenant_id))
    if newest is None:
        return EventsCut(0, True)
    rows = session.execute(
        select(Event.id, Event.created_at)
        .where(Event.tenant_id == tenant_id, Event.seq.is_not(None), Event.seq < newest)
        .order_by(Event.seq)
        .limit(limit)
    ).all()
    expired = []
    for event_id, created_at in rows:
        if created_at >= horizon:
            break
        expired.append(event_id)
    if expired:
        session.execute(delete(Event).where(Event.id.in_(expired)))
    return EventsCut(len(expired), len(expired) < limit)


def delete_deliveries(session: Session, cutoff: datetime, limit: int) -> int:
    """Webhook deliveries that ended (delivered or failed for good) before `cutoff`, with their attempts."""
    ids = list(
        session.scalars(
            select(WebhookDelivery.id)
            .where(
                WebhookDelivery.id < id_floor("msg", cutoff),
                WebhookDelivery.status.in_(ENDED_DELIVERY),
                WebhookDelivery.finished_at < cutoff,
            )
            .order_by(WebhookDelivery.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )
    if not ids:
        return 0
    session.execute(delete(WebhookAttempt).where(WebhookAttempt.delivery_id.in_(ids)))
    return _count(session.execute(delete(WebhookDelivery).where(WebhookDelivery.id.in_(ids))))


def ended_batch(session: Session, cutoff: datetime) -> Batch | None:
    """A batch that ended before `cutoff` (the oldest), locked; None when there is none."""
    ended_at = func.coalesce(Batch.completed_at, Batch.failed_at, Batch.expired_at, Batch.cancelled_at)
    return session.scalar(
        select(Batch)
        .where(Batch.id < id_floor("batch", cutoff), Batch.status.in_(ENDED_BATCH), ended_at < cutoff)
        .order_by(Batch.id)
        .limit(1)
        .with_for_update(skip_locked=True)
    )


def delete_batch_lines(session: Session, batch_id: str, limit: int) -> int:
    """Up to `limit` of a batch's stored lines (a batch has up to 50,000: they go a step at a time)."""
    lines = list(session.scalars(select(BatchLine.line).where(BatchLine.batch_id == batch_id).limit(limit)))
    if not lines:
        return 0
    return _count(session.execute(delete(BatchLine).where(BatchLine.batch_id == batch_id, BatchLine.line.in_(lines))))


def batch_files(session: Session, batch: Batch) -> list[File]:
    """The files of a batch to delete with it: what it wrote, and its input unless another batch reads it too."""
    ids = [i for i in (batch.output_file_id, batch.error_file_id) if i]
    shared = session.scalar(
        select(func.count()).where(Batch.input_file_id == batch.input_file_id, Batch.id != batch.id)
    )
    if not shared:
        ids.append(batch.input_file_id)
    return list(session.scalars(select(File).where(File.id.in_(ids), File.tenant_id == batch.tenant_id)))


def delete_batch(session: Session, batch: Batch, files: list[File]) -> None:
    """The batch row and its files' rows (their bytes are removed once this has committed)."""
    if files:
        session.execute(delete(File).where(File.id.in_([f.id for f in files])))
    session.execute(delete(Batch).where(Batch.id == batch.id))


def delete_audit(session: Session, cutoff: datetime, limit: int) -> int:
    """Audit entries made before `cutoff`, oldest first: ids follow time, so the scan walks the primary key
    and stops at the first entry to keep."""
    rows = session.execute(
        select(AuditEntry.id, AuditEntry.created_at)
        .order_by(AuditEntry.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    ids = []
    for entry_id, created_at in rows:
        if created_at >= cutoff:
            break
        ids.append(entry_id)
    if not ids:
        return 0
    return _count(session.execute(delete(AuditEntry).where(AuditEntry.id.in_(ids))))


def _count(result: object) -> int:
    return int(getattr(result, "rowcount", 0) or 0)
