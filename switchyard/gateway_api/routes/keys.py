"""`/v1/keys`: API keys made, listed, changed and revoked over the API (admin)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from starlette.responses import Response

from switchyard.gateway_api.api_docs import errors
from switchyard.gateway_api.deps import Admin, StateDep, TxDep
from switchyard.gateway_api.responses import FastJSONResponse
from switchyard.tenancy import service
from switchyard.tenancy.schemas import KeyCreate, KeyCreated, KeyPage, KeyUpdate, KeyView

router = APIRouter(prefix="/v1/keys", tags=["keys"])


@router.post("", status_code=201, response_model=KeyCreated)
def create_key(body: KeyCreate, principal: Admin, tx: TxDep, state: StateDep) -> FastJSONResponse:
    """Make a key for the caller's tenant, with a role no higher than the caller's. The key (`key`) is in this
    answer only; afterwards only its prefix is shown. 422 names an unknown model or tier."""
    return FastJSONResponse(service.issue_key(tx, state.config, principal, body), status_code=201)


@router.get("", response_model=KeyPage)
def list_keys(
    principal: Admin,
    tx: TxDep,
    revoked: bool = False,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(max_length=40)] = None,
) -> FastJSONResponse:
    """The tenant's keys, newest first (`revoked=true`: revoked ones too); `next` is the `after` of the
    following page. Never the keys themselves."""
    page = service.list_keys(tx.session, principal.tenant_id, revoked=revoked, after=after, limit=limit)
    return FastJSONResponse(page)


@router.get("/{key_id}", response_model=KeyView, responses=errors(404))
def get_key(key_id: str, principal: Admin, tx: TxDep) -> FastJSONResponse:
    """A key (revoked ones too)."""
    return FastJSONResponse(service.get_key(tx.session, principal.tenant_id, key_id))


@router.patch("/{key_id}", response_model=KeyView, responses=errors(404, 409))
def update_key(key_id: str, body: KeyUpdate, principal: Admin, tx: TxDep, state: StateDep) -> FastJSONResponse:
    """Change a key's name, models, limits, budget, tier or expiry (a field sent as null is cleared). Every API
    process applies the change from the key's next request. 409 for a revoked key."""
    return FastJSONResponse(service.update_key(tx, state.config, principal, key_id, body, state.announcer))


@router.delete("/{key_id}", status_code=204, responses=errors(404))
def revoke_key(key_id: str, principal: Admin, tx: TxDep, state: StateDep) -> Response:
    """Revoke a key: every API process refuses it from its next request. Revoking it again does nothing."""
    service.revoke_key(tx, principal.tenant_id, key_id, principal.key_id, state.announcer)
    return Response(status_code=204)
