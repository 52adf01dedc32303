"""`/v1/tenant/limits` and `/v1/tenant/budget`: the caller's tenant's own limits, budget and tier (admin)."""

from __future__ import annotations

from fastapi import APIRouter

from switchyard.core.policy import Limits
from switchyard.gateway_api.deps import Admin, StateDep, TxDep
from switchyard.gateway_api.responses import FastJSONResponse
from switchyard.tenancy import service
from switchyard.tenancy.schemas import TenantBudget

router = APIRouter(prefix="/v1/tenant", tags=["keys"])


@router.get("/limits", response_model=Limits)
def get_limits(principal: Admin, tx: TxDep) -> FastJSONResponse:
    """The limits every key of the tenant shares (null: unlimited)."""
    return FastJSONResponse(service.tenant_limits(tx.session, principal.tenant_id))


@router.put("/limits", response_model=Limits)
def put_limits(body: Limits, principal: Admin, tx: TxDep, state: StateDep) -> FastJSONResponse:
    """Replace the tenant's limits with the body (a field left out is unlimited; `{}` removes them all).
    Every API process applies them from the next request."""
    return FastJSONResponse(service.set_tenant_limits(tx, principal, body, state.announcer))


@router.get("/budget", response_model=TenantBudget)
def get_budget(principal: Admin, tx: TxDep) -> FastJSONResponse:
    """The tenant's budget and tier (null: none)."""
    return FastJSONResponse(service.tenant_budget(tx.session, principal.tenant_id))


@router.put("/budget", response_model=TenantBudget)
def put_budget(body: TenantBudget, principal: Admin, tx: TxDep, state: StateDep) -> FastJSONResponse:
    """Replace the tenant's budget and tier with the body (a field left out is none): `{"daily_usd": 50}`,
    `{"tier": "standard"}`, or both. 422 names a tier the config file does not define."""
    return FastJSONResponse(service.set_tenant_budget(tx, state.config, principal, body, state.announcer))
