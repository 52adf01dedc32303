"""Rotating a signing secret with an overlap window: the tenant's (per-object webhooks) and a subscription's.

A rotation makes a new secret and keeps the one it replaces, with the time until which it still signs. Until
then every delivery carries two signatures in `webhook-signature` (Standard Webhooks allows several,
space-separated), so a receiver verifying with either secret accepts it and can switch at its own pace; after
that only the new one. Rotating again within the window replaces the oldest: only the two latest sign."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from switchyard.audit.service import record
from switchyard.core.db import Tx, lock_for_update
from switchyard.core.errors import Conflict
from switchyard.core.models import Tenant, utcnow
from switchyard.webhooks.sender import new_secret
from switchyard.webhooks.service import get, signing_secret

MAX_OVERLAP_S = 30 * 24 * 3600


class SecretRotation(BaseModel):
    """`POST .../rotate`: how long the replaced secret keeps signing (unset: the server's default)."""

    model_config = ConfigDict(extra="forbid")

    overlap_s: Annotated[float, Field(ge=0, le=MAX_OVERLAP_S)] | None = Field(
        default=None, description="Seconds the replaced secret keeps signing beside the new one (0: none)."
    )


class RotatedSecret(BaseModel):
    secret: str = Field(description="The new secret; shown only now (the signing secret can be read again).")
    previous_secret_expires_at: str | None = Field(
        description="Until when deliveries are signed with the replaced secret too (null: no overlap)."
    )


def _until(now: datetime, overlap_s: float) -> datetime | None:
    return now + timedelta(seconds=overlap_s) if overlap_s > 0 else None


def rotate_signing_secret(tx: Tx, tenant_id: str, overlap_s: float, *, actor: str) -> dict[str, Any]:
    """A new tenant signing secret; the current one signs too for `overlap_s`."""
    signing_secret(tx, tenant_id)  # there is one to rotate
    lock_for_update(tx.session)
    tenant = tx.session.scalar(select(Tenant).where(Tenant.id == tenant_id).with_for_update())
    assert tenant is not None
    now = utcnow()
    until = _until(now, overlap_s)
    tenant.previous_webhook_secret = tenant.webhook_secret if until is not None else None
    tenant.previous_webhook_secret_until = until
    tenant.webhook_secret = new_secret()
    tx.session.flush()
    view = {"previous_secret_expires_at": until.isoformat() if until else None}
    record(tx.session, tenant_id, actor, "webhook.signing_secret.rotate", "tenant", tenant_id, after=view)
    return {"secret": tenant.webhook_secret, **view}


def rotate_webhook_secret(tx: Tx, tenant_id: str, webhook_id: str, overlap_s: float, *, actor: str) -> dict[str, Any]:
    """A new secret for a subscription; the current one signs too for `overlap_s`."""
    hook = get(tx, tenant_id, webhook_id, lock=True)
    if hook.secret is None:
        raise Conflict(
            f"webhook '{webhook_id}' is a task's, run's or batch's webhook, signed with the tenant's secret: "
            "rotate that with POST /v1/webhooks/signing-secret/rotate",
            param="id",
        )
    now = utcnow()
    until = _until(now, overlap_s)
    hook.previous_secret = hook.secret if until is not None else None
    hook.previous_secret_until = until
    hook.secret = new_secret()
    hook.updated_at = now
    tx.session.flush()
    view = {"previous_secret_expires_at": until.isoformat() if until else None}
    record(tx.session, tenant_id, actor, "webhook.secret.rotate", "webhook", hook.id, after=view)
    return {"secret": hook.secret, **view}
