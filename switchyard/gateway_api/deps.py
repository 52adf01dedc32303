"""Request dependencies: the transaction (committed when the endpoint returns, before the response is sent)
and the caller's principal."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

import anyio.to_thread
from fastapi import Depends, Request, params
from starlette.requests import HTTPConnection

from switchyard.core.db import Tx
from switchyard.core.errors import Forbidden, MalformedRequest, Unauthenticated
from switchyard.gateway_api.state import ApiState
from switchyard.tenancy.jwt_auth import looks_like_jwt
from switchyard.tenancy.service import Principal, expired_message, hash_key, verify_key
from switchyard.tenancy.tickets import ticket_principal
from switchyard.workers.queues import PROVIDER


async def get_state(request: Request) -> ApiState:
    # async: FastAPI would run a sync dependency in a worker thread, a hop for nothing.
    return _state(request)


def _state(conn: HTTPConnection) -> ApiState:
    state: ApiState = conn.app.state.switchyard
    return state


def _transaction(request: Request) -> Iterator[Tx]:
    with _state(request).db.transaction() as tx:
        yield tx


# scope="function": commit before the response leaves, so a 2xx always means the rows are durable.
TxDep = Annotated[Tx, Depends(_transaction, scope="function")]
StateDep = Annotated[ApiState, Depends(get_state)]


def bearer_key(conn: HTTPConnection) -> str | None:
    """The key from `Authorization: Bearer`, else — on the WebSocket handshake only, browsers cannot set its
    headers — from `?api_key=`."""
    header = conn.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    if conn.scope["type"] == "websocket":
        return conn.query_params.get("api_key")
    return None


# Why `?api_key=` is refused on HTTP routes (it ends up in the access logs of every proxy on the way).
KEY_IN_URL = (
    "?api_key= is accepted only on the WebSocket handshake (GET /v1/ws): send 'Authorization: Bearer <key>', "
    "or, where a browser cannot set headers (EventSource), a ticket from POST /v1/ws/ticket as ?ticket="
)


def _lookup(state: ApiState, plain: str) -> Principal:
    # In a worker thread: a database read, and for a JWT perhaps a fetch of the JWKS.
    with state.db.sessions() as session:
        if state.jwt is not None and looks_like_jwt(plain):
            return state.jwt.principal(session, plain)
        return verify_key(session, plain)


def _redeemed(state: ApiState, record: dict[str, Any]) -> Principal:
    with state.db.sessions() as session:
        return ticket_principal(session, record)


async def principal_of(conn: HTTPConnection, *, tickets: bool = False) -> Principal:
    """The caller, from the key cache; only a miss reads the database (in a worker thread). With `tickets`
    (the WebSocket handshake and SSE streams) a `?ticket=` from POST /v1/ws/ticket is taken too (once)."""
    if conn.scope["type"] != "websocket" and "api_key" in conn.query_params:
        raise MalformedRequest(KEY_IN_URL, param="api_key")
    state = _state(conn)
    plain = bearer_key(conn)
    if plain is None:
        ticket = conn.query_params.get("ticket") if tickets else None
        if ticket is None:
            raise Unauthenticated("missing API key: send 'Authorization: Bearer <key>'")
        record = await state.tickets.redeem(ticket)
        if record is None:
            raise Unauthenticated("this ticket is unknown, used or expired: get a new one from POST /v1/ws/ticket")
        return await anyio.to_thread.run_sync(_redeemed, state, record)
    digest = hash_key(plain)
    cache = state.keys
    principal = cache.get(digest)
    if principal is None:
        generation = cache.generation
        principal = await anyio.to_thread.run_sync(_lookup, state, plain)
        cache.put(digest, principal, generation)
    # A cached key (or token) may have expired since it was cached.
    if principal.expires_at is not None and principal.expired():
        raise Unauthenticated(expired_message(principal))
    return principal


class RoleRequired:
    """A dependency admitting callers whose role is at least `role` (viewer < member < admin).

    A class rather than a closure so that the OpenAPI document can tell which routes need a key, and which role.
    """

    def __init__(self, role: str, *, tickets: bool = False) -> None:
        self.role = role
        self.tickets = tickets

    async def __call__(self, request: Request) -> Principal:
        principal = await principal_of(request, tickets=self.tickets)
        if not principal.allows(self.role):
            raise Forbidden(f"this key's role '{principal.role}' may not do this; '{self.role}' is needed")
        return principal


def require(role: str) -> RoleRequired:
    """The dependency admitting callers whose role is at least `role`."""
    return RoleRequired(role)


Viewer = Annotated[Principal, Depends(require("viewer"))]
# An SSE stream's viewer: `?ticket=` is taken too (EventSource cannot set headers).
StreamViewer = Annotated[Principal, Depends(RoleRequired("viewer", tickets=True))]
Member = Annotated[Principal, Depends(require("member"))]
Admin = Annotated[Principal, Depends(require("admin"))]


class Admission:
    """A dependency refusing a submission with 503 (`overloaded`, `Retry-After`) while `queue` is backed up
    (`shedding`). No I/O: the figures are kept fresh in the background."""

    def __init__(self, queue: str) -> None:
        self.queue = queue

    async def __call__(self, request: Request) -> None:
        _state(request).shedder.check(self.queue)


def admission(queue: str = PROVIDER) -> params.Depends:
    """`dependencies=[admission()]` on a route that submits work to `queue`."""
    depends: params.Depends = Depends(Admission(queue))
    return depends
