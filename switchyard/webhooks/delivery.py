"""Webhook deliveries, worker side: derived from events by the relay, delivered durably.

In the relay's batch transaction every numbered event that a webhook wants becomes a delivery row, due at
once, and its id is published to the webhooks queue after commit. A worker claims the row (a lease), makes
one signed POST, and records the attempt: success, a retry at the next step of the schedule (never sooner
than the receiver's `Retry-After`), or failure after the last step. `410 Gone` disables the webhook. The
deliveries' sweep (`webhooks/sweeper.py`) publishes those that fall due and takes back the leases of workers
that died.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol, cast

import orjson
import structlog
from sqlalchemy import Table, and_, false, func, insert, or_, select, update

from switchyard.core.db import Database, Tx
from switchyard.core.ids import new_id
from switchyard.core.models import EVENTS, Run, Task, Tenant, Webhook, WebhookAttempt, WebhookDelivery, utcnow
from switchyard.events.relay import RelayedEvent
from switchyard.observability import metrics, tracing
from switchyard.settings import Settings
from switchyard.webhooks.sender import DeliveryResult, WebhookSender
from switchyard.webhooks.service import matches

log = structlog.get_logger(__name__)

DELIVERIES = cast(Table, WebhookDelivery.__table__)


class DeliveryDispatcher(Protocol):
    """Hands a delivery id to the webhook workers (after commit)."""

    def publish_delivery(self, delivery_id: str) -> None: ...


def _wants(hook: Any, event: RelayedEvent) -> bool:
    """A subscription wants the tenant's events its patterns match; a per-object webhook wants its object's
    own events (`task.*` of its task, `run.*` of its run), those its patterns match if it has any."""
    if hook.tenant_id != event.tenant_id:
        return False
    event_type = event.view["type"]
    if hook.object_id is None:
        return matches(hook.events, event_type)
    kind = hook.object_id.split("_", 1)[0]
    if event.view.get(f"{kind}_id") != hook.object_id or not event_type.startswith(f"{kind}."):
        return False
    return not hook.events or matches(hook.events, event_type)


def derive_deliveries(dispatcher: DeliveryDispatcher, tx: Tx, relayed: Sequence[RelayedEvent]) -> None:
    """In the relay's transaction: a delivery for every (webhook, event) that wants it."""
    tenants = {e.tenant_id for e in relayed}
    objects = {e.view[f"{k}_id"] for e in relayed for k in ("task", "run", "batch") if e.view.get(f"{k}_id")}
    hooks = list(
        tx.session.execute(
            select(Webhook.id, Webhook.tenant_id, Webhook.events, Webhook.object_id).where(
                Webhook.status == "enabled",
                or_(
                    and_(Webhook.tenant_id.in_(tenants), Webhook.object_id.is_(None)),
                    Webhook.object_id.in_(objects) if objects else false(),
                ),
            )
        )
    )
    if not hooks:
        return
    now = utcnow()
    rows = [
        {
            "id": new_id("msg"),
            "tenant_id": event.tenant_id,
            "webhook_id": hook.id,
            "event_seq": event.view["id"],
            "event_type": event.view["type"],
            "status": "pending",
            "attempt_count": 0,
            "next_attempt_at": now,
            "published_at": now,
            "created_at": now,
        }
        for event in relayed
        for hook in hooks
        if _wants(hook, event)
    ]
    if not rows:
        return
    tx.session.execute(insert(DELIVERIES), rows)
    ids = [r["id"] for r in rows]

    def publish() -> None:
        for delivery_id in ids:
            dispatcher.publish_delivery(delivery_id)

    tx.after_commit(publish)


class Deliverer:
    """Delivers with the resources of one worker process."""

    def __init__(self, db: Database, sender: WebhookSender, settings: Settings) -> None:
        self.db = db
        self.sender = sender
        self.schedule = settings.webhook_retry_schedule_s
        self.lease_s = 2 * settings.webhook_timeout_s + settings.lease_grace_s

    def deliver(self, delivery_id: str) -> None:
        claim = self._claim(delivery_id)
        if claim is None:
            return  # delivered, not yet due, or held by another worker
        if claim["url"] is None:
            return
        # Traced, a delivery is a span linked to the trace of the task or run whose event it carries.
        links = [self._cause(claim["task_id"], claim["run_id"])] if tracing.enabled() else []
        with (
            structlog.contextvars.bound_contextvars(
                delivery_id=delivery_id, task_id=claim["task_id"], run_id=claim["run_id"]
            ),
            tracing.span(
                "webhook.deliver",
                kind="producer",
                links=links,
                attributes={"switchyard.delivery_id": delivery_id, "switchyard.attempt": claim["attempt_count"] + 1},
            ),
        ):
            started = utcnow()
            result = self.sender.send(
                claim["url"], msg_id=delivery_id, timestamp=started, body=claim["body"], secret=claim["secret"]
            )
            self._record(delivery_id, claim["claim_id"], claim["attempt_count"], started, result)

    def _cause(self, task_id: str | None, run_id: str | None) -> str | None:
        """The traceparent stored with the task (or else the run) an event is about."""
        with self.db.sessions() as session:
            if task_id is not None:
                return session.scalar(select(Task.traceparent).where(Task.id == task_id))
            if run_id is not None:
                return session.scalar(select(Run.traceparent).where(Run.id == run_id))
        return None

    def _claim(self, delivery_id: str) -> dict[str, Any] | None:
        now = utcnow()
        claim_id = new_id("clm")
        with self.db.transaction() as tx:
            row = tx.session.execute(
                update(WebhookDelivery)
                .where(
                    WebhookDelivery.id == delivery_id,
                    WebhookDelivery.status == "pending",
                    WebhookDelivery.next_attempt_at <= now,
                )
                .values(status="delivering", claim_id=claim_id, lease_expires_at=now + timedelta(seconds=self.lease_s))
                .returning(WebhookDelivery.webhook_id, WebhookDelivery.event_seq, WebhookDelivery.attempt_count)
                .execution_options(synchronize_session=False)
            ).first()
            if row is None:
                return None
            hook = tx.session.execute(
                select(
                    Webhook.url,
                    Webhook.secret,
                    Webhook.previous_secret,
                    Webhook.previous_secret_until,
                    Webhook.status,
                    Tenant.webhook_secret,
                    Tenant.previous_webhook_secret,
                    Tenant.previous_webhook_secret_until,
                )
                .join(Tenant, Tenant.id == Webhook.tenant_id)
                .where(Webhook.id == row.webhook_id)
            ).first()
            event = tx.session.execute(
                select(EVENTS.c.type, EVENTS.c.data, EVENTS.c.created_at, EVENTS.c.task_id, EVENTS.c.run_id).where(
                    EVENTS.c.seq == row.event_seq
                )
            ).first()
            if hook is None or hook.status != "enabled" or event is None:
                why = "the webhook is disabled" if hook is not None and event is not None else "its event is gone"
                self._settle(tx, delivery_id, claim_id, status="failed", error=why)
                return {"url": None}
            body = orjson.dumps({"type": event.type, "timestamp": event.created_at.isoformat(), "data": event.data})
            return {
                "url": hook.url,
                "secret": signing_secrets(hook, now),
                "body": body,
                "claim_id": claim_id,
                "attempt_count": row.attempt_count,
                "task_id": event.task_id,
                "run_id": event.run_id,
            }

    def _record(
        self, delivery_id: str, claim_id: str, attempt_count: int, started: Any, result: DeliveryResult
    ) -> None:
        now = utcnow()
        with self.db.transaction() as tx:
            session = tx.session
            # Attempts keep counting across a retry by hand; attempt_count restarts the schedule.
            last = session.scalar(select(func.max(WebhookAttempt.n)).where(WebhookAttempt.delivery_id == delivery_id))
            n = (last or 0) + 1
            session.add(
                WebhookAttempt(
                    delivery_id=delivery_id,
                    n=n,
                    status_code=result.status_code,
                    error=result.error,
                    response_excerpt=result.response_excerpt or None,
                    latency_ms=result.latency_ms,
                    started_at=started,
                )
            )
            done = attempt_count + 1
            if result.ok:
                self._settle(tx, delivery_id, claim_id, status="succeeded", attempts=done, result=result)
                return
            if result.gone:
                webhook_id = self._settle(tx, delivery_id, claim_id, status="failed", attempts=done, result=result)
                if webhook_id is not None:
                    session.execute(
                        update(Webhook)
                        .where(Webhook.id == webhook_id)
                        .values(status="disabled", disabled_reason="the receiver answered 410 Gone", updated_at=now)
                    )
                return
            if done > len(self.schedule):
                self._settle(tx, delivery_id, claim_id, status="failed", attempts=done, result=result)
                return
            wait = max(self.schedule[done - 1], result.retry_after_s or 0.0)
            self._settle(
                tx,
                delivery_id,
                claim_id,
                status="pending",
                attempts=done,
                result=result,
                next_attempt_at=now + timedelta(seconds=wait),
            )

    @staticmethod
    def _settle(
        tx: Tx,
        delivery_id: str,
        claim_id: str,
        *,
        status: str,
        attempts: int | None = None,
        result: DeliveryResult | None = None,
        error: str | None = None,
        next_attempt_at: Any = None,
    ) -> str | None:
        """Write the outcome if the claim still holds; the webhook's id, or None when the lease was lost."""
        values: dict[str, Any] = {
            "status": status,
            "claim_id": None,
            "lease_expires_at": None,
            "next_attempt_at": next_attempt_at,
            # A retry is published by the sweeper when it falls due.
            "published_at": None,
            "finished_at": None if status == "pending" else utcnow(),
        }
        if attempts is not None:
            values["attempt_count"] = attempts
        if result is not None:
            values["last_status_code"] = result.status_code
            values["last_error"] = result.error
        if error is not None:
            values["last_error"] = error
        webhook_id = tx.session.scalar(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id, WebhookDelivery.claim_id == claim_id)
            .values(**values)
            .returning(WebhookDelivery.webhook_id)
            .execution_options(synchronize_session=False)
        )
        if webhook_id is None:
            log.warning("webhook_lease_lost", delivery_id=delivery_id)
        else:
            metrics.webhook_delivered("retry" if status == "pending" else status)
        return webhook_id


def signing_secrets(hook: Any, now: datetime) -> list[str]:
    """The secrets a delivery is signed with: the subscription's own (else the tenant's), and, within a
    rotation's overlap, the one it replaced as well (Standard Webhooks: several signatures in one header)."""
    if hook.secret is not None:
        current, previous, until = hook.secret, hook.previous_secret, hook.previous_secret_until
    else:
        current, previous, until = hook.webhook_secret, hook.previous_webhook_secret, hook.previous_webhook_secret_until
    secrets = [current]
    if previous is not None and until is not None and until > now:
        secrets.append(previous)
    return secrets
