"""`/v1/audit`: who changed keys, the tenant's limits and budget, webhooks and workflows, and when (admin)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from switchyard.audit import service
from switchyard.audit.schemas import AuditPage
from switchyard.gateway_api.deps import Admin, TxDep
from switchyard.gateway_api.responses import FastJSONResponse

router = APIRouter(tags=["audit"])


@router.get("/v1/audit", response_model=AuditPage)
def list_audit(
    principal: Admin,
    tx: TxDep,
    action: Annotated[str | None, Query(max_length=64, description="`key.revoke`, or `key.*` for a family.")] = None,
    target_id: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[int | None, Query(ge=0)] = None,
) -> FastJSONResponse:
    """The tenant's audit log, newest first; `next` is the `after` of the following page."""
    page = service.list_entries(
        tx.session, principal.tenant_id, action=action, target_id=target_id, after=after, limit=limit
    )
    return FastJSONResponse(page)
