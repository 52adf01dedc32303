"""`/v1/webhooks`: subscriptions, the tenant's signing secret, delivery logs and retries by hand (admin)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from starlette.responses import Response

from switchyard.gateway_api.deps import Admin, StateDep, TxDep
from switchyard.gateway_api.responses import FastJSONResponse
from switchyard.webhooks import service
from switchyard.webhooks.service import WebhookCreate, WebhookUpdate

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])

DeliveryStatus = Literal["pending", "delivering", "succeeded", "failed"]


@router.post("", status_code=201)
def create_webhook(body: WebhookCreate, principal: Admin, tx: TxDep, state: StateDep) -> FastJSONResponse:
    view = service.create(tx, principal.tenant_id, body, allow_private=state.settings.webhook_allow_private)
    return FastJSONResponse(view, status_code=201)


@router.get("")
def list_webhooks(principal: Admin, tx: TxDep) -> FastJSONResponse:
    return FastJSONResponse({"data": service.list_webhooks(tx, principal.tenant_id)})


@router.get("/signing-secret")
def signing_secret(principal: Admin, tx: TxDep) -> FastJSONResponse:
    """The secret that signs deliveries of the `webhook` given on tasks, runs and batches."""
    return FastJSONResponse({"secret": service.signing_secret(tx, principal.tenant_id)})


@router.get("/{webhook_id}")
def get_webhook(webhook_id: str, principal: Admin, tx: TxDep) -> FastJSONResponse:
    return FastJSONResponse(service.webhook_view(service.get(tx, principal.tenant_id, webhook_id)))


@router.patch("/{webhook_id}")
def update_webhook(
    webhook_id: str, body: WebhookUpdate, principal: Admin, tx: TxDep, state: StateDep
) -> FastJSONResponse:
    hook = service.update_webhook(
        tx, principal.tenant_id, webhook_id, body, allow_private=state.settings.webhook_allow_private
    )
    return FastJSONResponse(service.webhook_view(hook))


@router.delete("/{webhook_id}", status_code=204)
def delete_webhook(webhook_id: str, principal: Admin, tx: TxDep) -> Response:
    service.delete(tx, principal.tenant_id, webhook_id)
    return Response(status_code=204)


@router.get("/{webhook_id}/deliveries")
def list_deliveries(
    webhook_id: str,
    principal: Admin,
    tx: TxDep,
    status: DeliveryStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(max_length=40)] = None,
) -> FastJSONResponse:
    return FastJSONResponse(
        service.list_deliveries(tx, principal.tenant_id, webhook_id, status=status, after=after, limit=limit)
    )


@router.post("/{webhook_id}/deliveries/{delivery_id}/retry", status_code=202)
def retry_delivery(webhook_id: str, delivery_id: str, principal: Admin, tx: TxDep, state: StateDep) -> FastJSONResponse:
    delivery = service.retry_delivery(tx, principal.tenant_id, webhook_id, delivery_id)
    dispatcher = state.dispatcher
    tx.after_commit(lambda: dispatcher.publish_delivery(delivery_id))
    return FastJSONResponse(service.delivery_view(delivery, []), status_code=202)
