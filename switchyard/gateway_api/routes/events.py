"""Events: `GET /v1/events` (a page of the tenant's log), `GET /v1/{tasks|runs}/{id}/events` (Server-Sent
Events, resumable with `Last-Event-ID`, ending after the object's terminal event) and `GET /v1/ws`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

import anyio.to_thread
import orjson
from fastapi import APIRouter, Header, Query, WebSocket
from sqlalchemy import select
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from switchyard.core.errors import AppError, InvalidRequest, NotFound, RateLimited, error_body
from switchyard.core.models import EVENTS, Batch, Run, Task
from switchyard.events.feed import FeedEvent, follow, object_key
from switchyard.events.log import TERMINAL_TYPES, event_view, events_after
from switchyard.gateway_api.api_docs import errors
from switchyard.gateway_api.deps import StateDep, StreamViewer, Viewer, principal_of
from switchyard.gateway_api.responses import FastJSONResponse, error_response
from switchyard.gateway_api.schemas import SSE_DESCRIPTION, EventPage, StreamTicket, sse_event_schema
from switchyard.gateway_api.state import ApiState
from switchyard.gateway_api.websocket import CLOSE_POLICY, CLOSE_TRY_LATER, WebSocketSession
from switchyard.tenancy.service import Principal

router = APIRouter(tags=["events"])

_SSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": SSE_DESCRIPTION,
        "content": {"text/event-stream": {"schema": sse_event_schema("An event of the object.", named=True)}},
    }
}


# Event numbers are Postgres bigints: a `since` past them is a 422, not a query the database refuses.
_MAX_SEQ = 2**63 - 1


@router.get("/v1/events", response_model=EventPage)
def list_events(
    principal: Viewer,
    state: StateDep,
    since: Annotated[int, Query(ge=0, le=_MAX_SEQ)] = 0,
    task_id: Annotated[str | None, Query(max_length=40)] = None,
    run_id: Annotated[str | None, Query(max_length=40)] = None,
    batch_id: Annotated[str | None, Query(max_length=40)] = None,
    type: Annotated[list[str] | None, Query(max_length=20)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> FastJSONResponse:
    """The tenant's events after `since`, oldest first; `next` is the `since` of the following page."""
    with state.db.sessions() as session:
        rows = events_after(
            session,
            principal.tenant_id,
            since,
            task_id=task_id,
            run_id=run_id,
            batch_id=batch_id,
            types=type,
            limit=limit,
        )
    data = [event_view(row) for row in rows]
    return FastJSONResponse({"data": data, "next": data[-1]["id"] if len(data) == limit else None})


@router.get("/v1/tasks/{task_id}/events", response_class=StreamingResponse, responses={**_SSE, **errors(404)})
async def task_events(
    task_id: str,
    principal: StreamViewer,
    state: StateDep,
    last_event_id: Annotated[str | None, Header()] = None,
    since: Annotated[int | None, Query(ge=0, le=_MAX_SEQ)] = None,
) -> StreamingResponse:
    """The task's events as Server-Sent Events, from after `Last-Event-ID` (or `since`) to its terminal one."""
    return await _event_stream(state, principal, "task", task_id, _since(last_event_id, since))


@router.get("/v1/runs/{run_id}/events", response_class=StreamingResponse, responses={**_SSE, **errors(404)})
async def run_events(
    run_id: str,
    principal: StreamViewer,
    state: StateDep,
    last_event_id: Annotated[str | None, Header()] = None,
    since: Annotated[int | None, Query(ge=0, le=_MAX_SEQ)] = None,
) -> StreamingResponse:
    """The run's events (its steps' included) as Server-Sent Events, ending after its terminal one."""
    return await _event_stream(state, principal, "run", run_id, _since(last_event_id, since))


@router.get("/v1/batches/{batch_id}/events", response_class=StreamingResponse, responses={**_SSE, **errors(404)})
async def batch_events(
    batch_id: str,
    principal: StreamViewer,
    state: StateDep,
    last_event_id: Annotated[str | None, Header()] = None,
    since: Annotated[int | None, Query(ge=0, le=_MAX_SEQ)] = None,
) -> StreamingResponse:
    """The batch's events (`batch.progress`, then its terminal one) as Server-Sent Events."""
    return await _event_stream(state, principal, "batch", batch_id, _since(last_event_id, since))


def _since(last_event_id: str | None, since: int | None) -> int:
    if last_event_id is not None and last_event_id.strip():
        try:
            value = int(last_event_id)
        except ValueError:
            raise InvalidRequest("Last-Event-ID must be an event id", param="Last-Event-ID") from None
        if value < 0:
            raise InvalidRequest("Last-Event-ID must be an event id", param="Last-Event-ID")
        return value
    return since or 0


async def _event_stream(
    state: ApiState, principal: Principal, kind: str, object_id: str, since: int
) -> StreamingResponse:
    tenant_id = principal.tenant_id
    model: type[Task] | type[Run] | type[Batch] = _MODELS[kind]

    def finished_before() -> bool | None:
        """None: no such object; True: it is finished and its last terminal event is at or before `since`."""
        with state.db.sessions() as session:
            status = session.scalar(select(model.status).where(model.id == object_id, model.tenant_id == tenant_id))
            if status is None:
                return None
            if status not in _ENDED:
                return False
            column = EVENTS.c[f"{kind}_id"]
            latest = session.execute(
                select(EVENTS.c.seq, EVENTS.c.type)
                .where(column == object_id, EVENTS.c.seq.is_not(None))
                .order_by(EVENTS.c.seq.desc())
                .limit(1)
            ).first()
            return latest is not None and latest.type in TERMINAL_TYPES and latest.seq <= since

    done = await anyio.to_thread.run_sync(finished_before)
    if done is None:
        raise NotFound(f"no {kind} '{object_id}'", param="id")
    slot: str | None = None
    if not done:
        # Each open stream holds a listener, a connection and a slot of the thread pool's work: counted per
        # tenant like WebSocket connections, refused (429, Retry-After) past the cap rather than piled up.
        slot = await state.sse_slots.acquire(tenant_id)
        if slot is None:
            refusal = RateLimited(
                f"this tenant has {state.sse_slots.limit} event streams open; close one or use one WebSocket "
                "with several subscriptions",
                code="too_many_streams",
            )
            refusal.headers["Retry-After"] = "5"
            raise refusal

    async def stream() -> AsyncIterator[bytes]:
        if done:
            return
        assert slot is not None
        handle = state.streams.open(principal)
        events = follow(
            state.hub, tenant_id, object_key(kind, object_id), since=since, max_queue=state.settings.ws_max_queue
        )
        ended = asyncio.ensure_future(handle.ended.wait())
        # The wait for the next event outlives each keep-alive: cancelling a pending `anext` (as `wait_for` does
        # on its timeout) would close the generator, and the stream would end at the next event.
        pending: asyncio.Task[FeedEvent] | None = None
        try:
            while True:
                if pending is None:
                    pending = asyncio.ensure_future(anext(events))
                ready, _ = await asyncio.wait(
                    {pending, ended}, timeout=state.settings.sse_keepalive_s, return_when=asyncio.FIRST_COMPLETED
                )
                if ended in ready:
                    # The key was revoked: say so (EventSource would otherwise reconnect at once) and end.
                    error = error_body("authentication_error", handle.reason, None, "key_revoked")
                    yield b"event: error\ndata: " + orjson.dumps(error) + b"\n\n"
                    return
                if not ready:
                    yield b": keep-alive\n\n"
                    continue
                event, pending = pending.result(), None
                yield _sse(event)
                if event.terminal and event.view.get(f"{kind}_id") == object_id and event.type.startswith(kind):
                    return
        finally:
            ended.cancel()
            state.streams.release(handle)
            if pending is not None:
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await pending
            await events.aclose()

    async def release() -> None:
        if slot is not None:
            await state.sse_slots.release(tenant_id, slot)

    return _EventStream(stream(), release)


class _EventStream(StreamingResponse):
    """An SSE response that gives its slot back however it ends: the client gone before the first byte leaves
    a body generator that never started (its `finally` never runs), so the release is here."""

    def __init__(self, body: AsyncIterator[bytes], release: Callable[[], Awaitable[None]]) -> None:
        super().__init__(
            body, media_type="text/event-stream", headers={"cache-control": "no-cache", "x-accel-buffering": "no"}
        )
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._release()


# The objects that have events of their own, by kind.
_MODELS: dict[str, type[Task] | type[Run] | type[Batch]] = {"task": Task, "run": Run, "batch": Batch}
# The statuses a task, run or batch ends in.
_ENDED = frozenset({"succeeded", "failed", "canceled", "completed", "expired", "cancelled"})


def _sse(event: FeedEvent) -> bytes:
    head = f"id: {event.seq}\n" if event.seq is not None else ""
    return f"{head}event: {event.type}\ndata: {event.text}\n\n".encode()


@router.post("/v1/ws/ticket", response_model=StreamTicket, status_code=201)
async def stream_ticket(principal: Viewer, state: StateDep) -> FastJSONResponse:
    """A single-use ticket for `?ticket=` on `GET /v1/ws` or an SSE stream's URL (EventSource cannot set
    headers; a key in a URL ends up in access logs). Valid `expires_in` seconds, for one handshake."""
    ticket = await state.tickets.issue(principal)
    return FastJSONResponse({"ticket": ticket, "expires_in": state.tickets.ttl_s}, status_code=201)


@router.websocket("/v1/ws")
async def websocket(websocket: WebSocket) -> None:
    state: ApiState = websocket.app.state.switchyard
    try:
        principal = await principal_of(websocket, tickets=True)
    except AppError as exc:
        await _refuse(websocket, exc, CLOSE_POLICY)
        return
    slot = await state.ws_slots.acquire(principal.tenant_id)
    if slot is None:
        limit = state.settings.ws_max_connections_per_tenant
        refusal = RateLimited(f"this tenant has {limit} WebSocket connections open")
        refusal.headers["Retry-After"] = "5"
        await _refuse(websocket, refusal, CLOSE_TRY_LATER)
        return
    try:
        await websocket.accept()
        feed = await state.hub.acquire(principal.tenant_id)
        handle = state.streams.open(principal)
        try:
            await WebSocketSession(websocket, state, principal, feed, handle).serve()
        finally:
            state.streams.release(handle)
            state.hub.release(feed)
    finally:
        await state.ws_slots.release(principal.tenant_id, slot)


async def _refuse(websocket: WebSocket, exc: AppError, code: int) -> None:
    """Refuse the handshake with the error as an HTTP response where the server can send one."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(error_response(exc))
    else:
        await websocket.close(code=code, reason=exc.message[:120])
