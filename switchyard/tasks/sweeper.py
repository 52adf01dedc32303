"""The sweeper: nothing accepted is lost. It re-publishes tasks left `queued` (a lost message, a flushed or
restarted broker, a due retry) and takes back `running` tasks whose worker lease expired (a killed worker).
Several sweepers may run at once: rows are picked with SKIP LOCKED and changed by conditional updates."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

import structlog
from sqlalchemy import select, update

from switchyard.core.db import Database, Tx
from switchyard.core.models import Run, Task, WebhookDelivery, utcnow
from switchyard.events.log import append_event
from switchyard.settings import Settings
from switchyard.tasks.transitions import Dispatcher, RunDispatcher
from switchyard.webhooks.delivery import DeliveryDispatcher

log = structlog.get_logger(__name__)

BATCH = 500


# A task that has taken down this many workers is failed rather than handed to another one.
MAX_RECLAIMS = 5


@dataclass
class SweepReport:
    reclaimed: list[str] = field(default_factory=list)
    republished: list[str] = field(default_factory=list)
    abandoned: list[str] = field(default_factory=list)
    advanced: list[str] = field(default_factory=list)
    deliveries: list[str] = field(default_factory=list)


class SweepDispatcher(RunDispatcher, DeliveryDispatcher, Protocol):
    """Everything the sweeper may have to publish again."""


def sweep(db: Database, dispatcher: SweepDispatcher, settings: Settings) -> SweepReport:
    """One pass; returns what it did."""
    report = SweepReport()
    now = utcnow()
    with db.transaction() as tx:
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

        # Runs that have sat still (a lost advance message, a step task finished by the sweeper): advance them;
        # advancing is idempotent.
        still = list(
            session.scalars(
                select(Run.id)
                .where(Run.status.in_(("queued", "running")), (Run.advanced_at.is_(None)) | (Run.advanced_at < stale))
                .limit(BATCH)
                .with_for_update(skip_locked=True)
            )
        )
        if still:
            session.execute(update(Run).where(Run.id.in_(still)).values(advanced_at=now))
        for run_id in still:
            report.advanced.append(run_id)
            _advance_after_commit(tx, dispatcher, run_id)

        _sweep_deliveries(tx, dispatcher, now, stale, report)
    if report.reclaimed or report.republished or report.abandoned or report.advanced or report.deliveries:
        log.info(
            "swept",
            reclaimed=len(report.reclaimed),
            republished=len(report.republished),
            abandoned=len(report.abandoned),
            deliveries=len(report.deliveries),
        )
    return report


def _sweep_deliveries(tx: Tx, dispatcher: SweepDispatcher, now: datetime, stale: datetime, report: SweepReport) -> None:
    """Webhook deliveries: publish those that fell due (or whose message was lost), and take back the
    ones whose worker stopped holding its lease (the receiver may have had that attempt: the webhook-id
    stays the same, so it can tell)."""
    session = tx.session
    lapsed = list(
        session.scalars(
            select(WebhookDelivery.id)
            .where(WebhookDelivery.status == "delivering", WebhookDelivery.lease_expires_at < now)
            .limit(BATCH)
            .with_for_update(skip_locked=True)
        )
    )
    if lapsed:
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id.in_(lapsed), WebhookDelivery.status == "delivering")
            .values(status="pending", claim_id=None, lease_expires_at=None, next_attempt_at=now, published_at=now)
        )
    due = list(
        session.scalars(
            select(WebhookDelivery.id)
            .where(
                WebhookDelivery.status == "pending",
                WebhookDelivery.next_attempt_at <= now,
                (WebhookDelivery.published_at.is_(None)) | (WebhookDelivery.published_at < stale),
            )
            .limit(BATCH)
            .with_for_update(skip_locked=True)
        )
    )
    if due:
        session.execute(update(WebhookDelivery).where(WebhookDelivery.id.in_(due)).values(published_at=now))
    for delivery_id in [*lapsed, *due]:
        report.deliveries.append(delivery_id)
        _deliver_after_commit(tx, dispatcher, delivery_id)


def _deliver_after_commit(tx: Tx, dispatcher: DeliveryDispatcher, delivery_id: str) -> None:
    tx.after_commit(lambda: dispatcher.publish_delivery(delivery_id))


def _advance_after_commit(tx: Tx, dispatcher: RunDispatcher, run_id: str) -> None:
    tx.after_commit(lambda: dispatcher.publish_advance(run_id))


def _publish_after_commit(tx: Tx, dispatcher: Dispatcher, task_id: str, task_type: str) -> None:
    tx.after_commit(lambda: dispatcher.publish_task(task_id, task_type))
