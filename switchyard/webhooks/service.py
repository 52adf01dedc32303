"""Webhook use cases of the HTTP edge: subscriptions, the tenant's signing secret, per-object webhooks, the
delivery log and retries by hand. No HTTP here, no commit."""

from __future__ import annotations

import fnmatch
import re
from typing import Annotated, Any, Literal

import structlog
from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import select, update

from switchyard.audit.service import record
from switchyard.core.db import Tx, lock_for_update
from switchyard.core.errors import Conflict, InvalidRequest, NotFound
from switchyard.core.ids import new_id
from switchyard.core.models import Tenant, Webhook, WebhookAttempt, WebhookDelivery, utcnow
from switchyard.webhooks.destinations import BlockedDestination, check_destination
from switchyard.webhooks.sender import new_secret

log = structlog.get_logger(__name__)

# `task.succeeded`, `task.*`, `run.step.*`, `*`.
_PATTERN = re.compile(r"^(\*|(task|run|batch)(\.([a-z_]+|\*))+)$")
KINDS = ("task", "run", "batch")


def _check_patterns(patterns: list[str]) -> list[str]:
    for i, pattern in enumerate(patterns):
        if not _PATTERN.match(pattern):
            raise ValueError(
                f"events[{i}]: '{pattern}' is not an event type or pattern (such as task.succeeded, task.*, *)"
            )
    return patterns


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


EventPatterns = Annotated[list[Annotated[str, Field(min_length=1, max_length=60)]], Field(max_length=50)]


class WebhookCreate(_Strict):
    url: AnyHttpUrl
    events: EventPatterns = Field(min_length=1)
    description: Annotated[str, Field(max_length=500)] | None = None

    _patterns = field_validator("events")(_check_patterns)


class WebhookUpdate(_Strict):
    url: AnyHttpUrl | None = None
    events: EventPatterns | None = None
    description: Annotated[str, Field(max_length=500)] | None = None
    status: Literal["enabled", "disabled"] | None = None

    _patterns = field_validator("events")(lambda v: v if v is None else _check_patterns(v))


class WebhookTarget(_Strict):
    """The `webhook` of a task, run or batch: that object's events (all of them when `events` is empty)."""

    url: AnyHttpUrl
    events: EventPatterns = Field(default_factory=list)

    _patterns = field_validator("events")(_check_patterns)


def check_url(url: str, *, allow_private: bool, param: str) -> None:
    """Refuse, naming the field, a URL whose host is loopback, private, link-local or cloud metadata. The
    tenant is told that much, with `code: destination_not_allowed`; the operator's log says what the host
    resolved to."""
    try:
        check_destination(url, allow_private=allow_private)
    except BlockedDestination as exc:
        log.info("webhook_destination_refused", param=param, reason=exc.reason)
        raise InvalidRequest(f"{param}: {exc.public}", param=param, code="destination_not_allowed") from None


def matches(patterns: list[str], event_type: str) -> bool:
    return any(fnmatch.fnmatchcase(event_type, p) for p in patterns)


def webhook_view(hook: Webhook, *, secret: str | None = None) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": hook.id,
        "url": hook.url,
        "events": hook.events,
        "description": hook.description,
        "status": hook.status,
        "disabled_reason": hook.disabled_reason,
        "object_id": hook.object_id,
        "created_at": hook.created_at.isoformat(),
        "updated_at": hook.updated_at.isoformat(),
    }
    if secret is not None:
        view["secret"] = secret  # shown once, when the subscription is made
    return view


def create(tx: Tx, tenant_id: str, body: WebhookCreate, *, allow_private: bool, actor: str) -> dict[str, Any]:
    """A subscription, recorded in the audit log (without its secret) as done by `actor`."""
    check_url(str(body.url), allow_private=allow_private, param="url")
    hook = _new_webhook(tx, tenant_id, str(body.url), body.events, secret=new_secret(), description=body.description)
    tx.session.flush()
    record(tx.session, tenant_id, actor, "webhook.create", "webhook", hook.id, after=webhook_view(hook))
    return webhook_view(hook, secret=hook.secret)


def object_webhook(
    tx: Tx, tenant_id: str, object_id: str, target: WebhookTarget, *, allow_private: bool, param: str
) -> dict[str, Any]:
    """The webhook of one task, run or batch; returns what the object shows of it."""
    check_url(str(target.url), allow_private=allow_private, param=f"{param}.url")
    signing_secret(tx, tenant_id)  # its deliveries are signed with the tenant's secret: make sure there is one
    hook = _new_webhook(tx, tenant_id, str(target.url), target.events, object_id=object_id)
    return {"id": hook.id, "url": hook.url, "events": hook.events}


def _new_webhook(
    tx: Tx,
    tenant_id: str,
    url: str,
    events: list[str],
    *,
    secret: str | None = None,
    description: str | None = None,
    object_id: str | None = None,
) -> Webhook:
    now = utcnow()
    hook = Webhook(
        id=new_id("wh"),
        tenant_id=tenant_id,
        url=url,
        events=list(dict.fromkeys(events)),
        description=description,
        secret=secret,
        object_id=object_id,
        status="enabled",
        created_at=now,
        updated_at=now,
    )
    tx.session.add(hook)
    return hook


def list_webhooks(tx: Tx, tenant_id: str) -> list[dict[str, Any]]:
    hooks = tx.session.scalars(
        select(Webhook)
        .where(Webhook.tenant_id == tenant_id, Webhook.object_id.is_(None))
        .order_by(Webhook.created_at.desc())
    )
    return [webhook_view(h) for h in hooks]


def get(tx: Tx, tenant_id: str, webhook_id: str, *, lock: bool = False) -> Webhook:
    """A subscription or per-object webhook of the tenant (another tenant's ids are unknown)."""
    query = select(Webhook).where(Webhook.id == webhook_id, Webhook.tenant_id == tenant_id)
    if lock:
        lock_for_update(tx.session)
    hook = tx.session.scalar(query.with_for_update() if lock else query)
    if hook is None:
        raise NotFound(f"no webhook '{webhook_id}'", param="id")
    return hook


def update_webhook(
    tx: Tx, tenant_id: str, webhook_id: str, body: WebhookUpdate, *, allow_private: bool, actor: str
) -> Webhook:
    hook = get(tx, tenant_id, webhook_id, lock=True)
    before = webhook_view(hook)
    if body.url is not None:
        check_url(str(body.url), allow_private=allow_private, param="url")
        hook.url = str(body.url)
    if body.events is not None:
        if not body.events and hook.object_id is None:
            raise InvalidRequest("a subscription needs at least one event pattern", param="events")
        hook.events = list(dict.fromkeys(body.events))
    if body.description is not None:
        hook.description = body.description
    if body.status is not None and body.status != hook.status:
        hook.status = body.status
        hook.disabled_reason = "disabled by request" if body.status == "disabled" else None
    hook.updated_at = utcnow()
    tx.session.flush()
    after = webhook_view(hook)
    record(tx.session, tenant_id, actor, "webhook.update", "webhook", hook.id, before=before, after=after)
    return hook


def delete(tx: Tx, tenant_id: str, webhook_id: str, *, actor: str) -> None:
    """Deleting a subscription drops its deliveries, pending ones included."""
    hook = get(tx, tenant_id, webhook_id)
    record(tx.session, tenant_id, actor, "webhook.delete", "webhook", hook.id, before=webhook_view(hook))
    tx.session.delete(hook)
    tx.session.flush()


def signing_secret(tx: Tx, tenant_id: str) -> str:
    """The tenant's secret for per-object webhooks, made on first use (two racing requests agree: the
    conditional update lets only the first one set it)."""
    secret = tx.session.scalar(select(Tenant.webhook_secret).where(Tenant.id == tenant_id))
    if secret is None:
        tx.session.execute(
            update(Tenant)
            .where(Tenant.id == tenant_id, Tenant.webhook_secret.is_(None))
            .values(webhook_secret=new_secret())
            .execution_options(synchronize_session=False)
        )
        secret = tx.session.scalar(select(Tenant.webhook_secret).where(Tenant.id == tenant_id))
    assert secret is not None
    return secret


def delivery_view(delivery: WebhookDelivery, attempts: list[WebhookAttempt]) -> dict[str, Any]:
    return {
        "id": delivery.id,
        "webhook_id": delivery.webhook_id,
        "event_id": delivery.event_seq,
        "event_type": delivery.event_type,
        "status": delivery.status,
        "attempt_count": delivery.attempt_count,
        "next_attempt_at": delivery.next_attempt_at.isoformat()
        if delivery.next_attempt_at and delivery.status == "pending"
        else None,
        "last_status_code": delivery.last_status_code,
        "last_error": delivery.last_error,
        "created_at": delivery.created_at.isoformat(),
        "finished_at": delivery.finished_at.isoformat() if delivery.finished_at else None,
        "attempts": [
            {
                "n": a.n,
                "status_code": a.status_code,
                "error": a.error,
                "response": a.response_excerpt,
                "latency_ms": a.latency_ms,
                "started_at": a.started_at.isoformat(),
            }
            for a in sorted(attempts, key=lambda a: a.n)
        ],
    }


def list_deliveries(
    tx: Tx, tenant_id: str, webhook_id: str, *, status: str | None, after: str | None, limit: int
) -> dict[str, Any]:
    """The delivery log of a webhook, newest first, with every attempt."""
    get(tx, tenant_id, webhook_id)
    query = select(WebhookDelivery).where(WebhookDelivery.webhook_id == webhook_id)
    if status:
        query = query.where(WebhookDelivery.status == status)
    if after:
        query = query.where(WebhookDelivery.id < after)
    rows = list(tx.session.scalars(query.order_by(WebhookDelivery.id.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    attempts: dict[str, list[WebhookAttempt]] = {}
    if rows:
        for attempt in tx.session.scalars(
            select(WebhookAttempt).where(WebhookAttempt.delivery_id.in_([r.id for r in rows]))
        ):
            attempts.setdefault(attempt.delivery_id, []).append(attempt)
    return {
        "data": [delivery_view(r, attempts.get(r.id, [])) for r in rows],
        "next": rows[-1].id if more and rows else None,
    }


def retry_delivery(tx: Tx, tenant_id: str, webhook_id: str, delivery_id: str) -> WebhookDelivery:
    """A failed delivery goes out again (same `webhook-id`), with a fresh schedule; the caller publishes it."""
    hook = get(tx, tenant_id, webhook_id)
    lock_for_update(tx.session)
    delivery = tx.session.scalar(
        select(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, WebhookDelivery.webhook_id == webhook_id)
        .with_for_update()
    )
    if delivery is None:
        raise NotFound(f"no delivery '{delivery_id}'", param="delivery_id")
    if delivery.status != "failed":
        raise Conflict(f"delivery '{delivery_id}' is {delivery.status}; only failed ones are retried", param="id")
    if hook.status != "enabled":
        raise Conflict(f"webhook '{webhook_id}' is disabled; enable it first", param="id")
    now = utcnow()
    delivery.status, delivery.attempt_count = "pending", 0
    delivery.next_attempt_at, delivery.published_at, delivery.finished_at = now, now, None
    tx.session.flush()
    return delivery
