"""The webhook deliveries' sweep, one of the periodic duties that `workers/duties.py` runs in the leading
worker: it publishes the deliveries that fell due (a retry's wait is over, or their message was lost) and
takes back those whose worker stopped holding its lease (the receiver may have had that attempt: the
webhook-id stays the same, so it can tell)."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select, update

from switchyard.core.db import Tx
from switchyard.core.models import WebhookDelivery
from switchyard.settings import Settings
from switchyard.webhooks.delivery import DeliveryDispatcher

BATCH = 500


def sweep_deliveries(tx: Tx, dispatcher: DeliveryDispatcher, settings: Settings, now: datetime) -> list[str]:
    """One pass in the caller's transaction; the ids it publishes after the commit."""
    session = tx.session
    stale = now - timedelta(seconds=settings.requeue_after_s)
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
    published = [*lapsed, *due]
    for delivery_id in published:
        _deliver_after_commit(tx, dispatcher, delivery_id)
    return published


def _deliver_after_commit(tx: Tx, dispatcher: DeliveryDispatcher, delivery_id: str) -> None:
    tx.after_commit(lambda: dispatcher.publish_delivery(delivery_id))
