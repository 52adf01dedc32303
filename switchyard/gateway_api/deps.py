"""Request dependencies: the transaction (committed when the endpoint returns, before the response is sent)
and the caller's principal."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, Request

from switchyard.core.db import Tx
from switchyard.core.errors import Forbidden, Unauthenticated
from switchyard.gateway_api.state import ApiState
from switchyard.tenancy.service import Principal, authenticate, hash_key


def get_state(request: Request) -> ApiState:
    state: ApiState = request.app.state.switchyard
    return state


def _transaction(request: Request) -> Iterator[Tx]:
    with get_state(request).db.transaction() as tx:
        yield tx


# scope="function": commit before the response leaves, so a 2xx always means the rows are durable.
TxDep = Annotated[Tx, Depends(_transaction, scope="function")]
StateDep = Annotated[ApiState, Depends(get_state)]


def bearer_key(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return request.query_params.get("api_key")


def _principal(request: Request) -> Principal:
    plain = bearer_key(request)
    if plain is None:
        raise Unauthenticated("missing API key: send 'Authorization: Bearer <key>'")
    state = get_state(request)
    digest = hash_key(plain)
    principal = state.keys.get(digest)
    if principal is None:
        with state.db.sessions() as session:
            principal = authenticate(session, plain)
        if principal is None:
            raise Unauthenticated("invalid API key")
        state.keys.put(digest, principal)
    return principal


def require(role: str) -> Callable[[Request], Principal]:
    """A dependency admitting callers whose role is at least `role` (viewer < member < admin)."""

    def dependency(request: Request) -> Principal:
        principal = _principal(request)
        if not principal.allows(role):
            raise Forbidden(f"this key's role '{principal.role}' may not do this; '{role}' is needed")
        return principal

    return dependency


Viewer = Annotated[Principal, Depends(require("viewer"))]
Member = Annotated[Principal, Depends(require("member"))]
Admin = Annotated[Principal, Depends(require("admin"))]
