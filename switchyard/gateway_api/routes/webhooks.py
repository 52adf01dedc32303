"""`/v1/webhooks`: subscriptions, the tenant's signing secret, delivery logs and retries by hand (admin)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from starlette.responses import Response

from switchyard.gateway_api.api_docs import errors
from switchyard.gateway_api.deps import Admin, StateDep, TxDep
from switchyard.gateway_api.responses import FastJSONResponse
from switchyard.gateway_api.state import ApiState
from switchyard.webhooks import rotation, service
from switchyard.webhooks.rotation import RotatedSecret, SecretRotation
from switchyard.webhooks.schemas import (
    DeliveryPage,
    DeliveryView,
    SigningSecret,
    WebhookCreated,
    WebhookList,
    WebhookView,
)
from switchyard.webhooks.service import WebhookCreate, WebhookUpdate

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])

DeliveryStatus = Literal["pending", "delivering", "succeeded", "failed"]


@router.post("", status_code=201, response_model=WebhookCreated)
def create_webhook(body: WebhookCreate, principal: Admin, tx: TxDep, state: StateDep) -> FastJSONResponse:
    """Subscribe a URL to the tenant's events (`task.succeeded`, `run.*`, `*`); its secret is shown only here."""
    view = service.create(
        tx, principal.tenant_id, body, allow_private=state.settings.webhook_allow_private, actor=principal.key_id
    )
    return FastJSONResponse(view, status_code=201)


@router.get("", response_model=WebhookList)
def list_webhooks(principal: Admin, tx: TxDep) -> FastJSONResponse:
    """The tenant's subscriptions (their secrets are not shown again)."""
    return FastJSONResponse({"data": service.list_webhooks(tx, principal.tenant_id)})


@router.get("/signing-secret", response_model=SigningSecret)
def signing_secret(principal: Admin, tx: TxDep) -> FastJSONResponse:
    """The secret that signs deliveries of the `webhook` given on tasks, runs and batches."""
    return FastJSONResponse({"secret": service.signing_secret(tx, principal.tenant_id)})


# The body is optional: none means the default overlap.
_NO_BODY = SecretRotation()


@router.post("/signing-secret/rotate", response_model=RotatedSecret)
def rotate_signing_secret(
    principal: Admin, tx: TxDep, state: StateDep, body: SecretRotation = _NO_BODY
) -> FastJSONResponse:
    """A new signing secret for the `webhook` of tasks, runs and batches. The replaced one keeps signing beside
    it (two signatures in `webhook-signature`) for `overlap_s` (default `SWITCHYARD_WEBHOOK_SECRET_OVERLAP_S`)."""
    overlap = _overlap(body, state)
    return FastJSONResponse(rotation.rotate_signing_secret(tx, principal.tenant_id, overlap, actor=principal.key_id))


@router.post("/{webhook_id}/secret/rotate", response_model=RotatedSecret, responses=errors(404, 409))
def rotate_webhook_secret(
    webhook_id: str, principal: Admin, tx: TxDep, state: StateDep, body: SecretRotation = _NO_BODY
) -> FastJSONResponse:
    """A new secret for a subscription, shown only now; the replaced one keeps signing beside it for
    `overlap_s` (default `SWITCHYARD_WEBHOOK_SECRET_OVERLAP_S`)."""
    overlap = _overlap(body, state)
    view = rotation.rotate_webhook_secret(tx, principal.tenant_id, webhook_id, overlap, actor=principal.key_id)
    return FastJSONResponse(view)


def _overlap(body: SecretRotation, state: ApiState) -> float:
    if body.overlap_s is None:
        return state.settings.webhook_secret_overlap_s
    return body.overlap_s


@router.get("/{webhook_id}", response_model=WebhookView, responses=errors(404))
def get_webhook(webhook_id: str, principal: Admin, tx: TxDep) -> FastJSONResponse:
    """A subscription."""
    return FastJSONResponse(service.webhook_view(service.get(tx, principal.tenant_id, webhook_id)))


@router.patch("/{webhook_id}", response_model=WebhookView, responses=errors(404))
def update_webhook(
    webhook_id: str, body: WebhookUpdate, principal: Admin, tx: TxDep, state: StateDep
) -> FastJSONResponse:
    """Change a subscription's URL, events, description, or enable or disable it."""
    hook = service.update_webhook(
        tx,
        principal.tenant_id,
        webhook_id,
        body,
        allow_private=state.settings.webhook_allow_private,
        actor=principal.key_id,
    )
    return FastJSONResponse(service.webhook_view(hook))


@router.delete("/{webhook_id}", status_code=204, responses=errors(404))
def delete_webhook(webhook_id: str, principal: Admin, tx: TxDep) -> Response:
    """Remove a subscription; nothing more is delivered to it."""
    service.delete(tx, principal.tenant_id, webhook_id, actor=principal.key_id)
    return Response(status_code=204)


@router.get("/{webhook_id}/deliveries", response_model=DeliveryPage, responses=errors(404))
def list_deliveries(
    webhook_id: str,
    principal: Admin,
    tx: TxDep,
    status: DeliveryStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(max_length=40)] = None,
) -> FastJSONResponse:
    """The subscription's deliveries, newest first, with every attempt."""
    return FastJSONResponse(
        service.list_deliveries(tx, principal.tenant_id, webhook_id, status=status, after=after, limit=limit)
    )


@router.post(
    "/{webhook_id}/deliveries/{delivery_id}/retry",
    status_code=202,
    response_model=DeliveryView,
    responses=errors(404, 409),
)
def retry_delivery(webhook_id: str, delivery_id: str, principal: Admin, tx: TxDep, state: StateDep) -> FastJSONResponse:
    """Send a failed delivery again (same `webhook-id`), on a fresh schedule."""
    delivery = service.retry_delivery(tx, principal.tenant_id, webhook_id, delivery_id)
    dispatcher = state.dispatcher
    tx.after_commit(lambda: dispatcher.publish_delivery(delivery_id))
    return FastJSONResponse(service.delivery_view(delivery, []), status_code=202)
