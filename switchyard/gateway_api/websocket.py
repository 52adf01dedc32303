"""`GET /v1/ws`: subscriptions to tasks, runs, batches or a whole tenant over one WebSocket.

One loop per connection takes, in order, the client's commands and the live events of its subscriptions
from one queue (events.feed.Listener), so a subscription's replay (`since`) is sent before any live event
that follows it, and the stored events up to the position the feed had when it subscribed are exactly the
ones it has not seen live. A live event goes out once per connection, however many of its subscriptions
match it; a replay is per subscription.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
import orjson
import structlog
from sqlalchemy import select
from starlette.websockets import WebSocket, WebSocketDisconnect

from switchyard.core.models import Batch, Run, Task
from switchyard.core.validation import find_unstorable
from switchyard.events.feed import ALL, FeedEvent, Key, Listener, SlowConsumer, TenantFeed, object_key, replay
from switchyard.gateway_api.open_streams import StreamHandle
from switchyard.gateway_api.state import ApiState
from switchyard.tenancy.service import Principal

log = structlog.get_logger(__name__)

# Close codes: 1008 policy (bad or revoked key, too many frames), 1013 try again later (slow consumer, too many
# connections). A frame over ws_max_frame_bytes is closed by the server itself with 1009.
CLOSE_POLICY = 1008
CLOSE_TRY_LATER = 1013
_TARGETS = ("task_id", "run_id", "batch_id")


@dataclass
class Subscription:
    key: Key
    start: int  # the feed's position when it subscribed: live events after it are sent


@dataclass(frozen=True)
class _Command:
    frame: Any  # a parsed client frame, or None when the client has gone


class WebSocketSession:
    """One connection. Its bounds (docs/api.md, "Stream limits"): `ws_max_subscriptions` subscriptions,
    `ws_max_pending_frames` client frames read but not handled (more and the connection is closed, 1008),
    `ws_max_queue` events behind (1013), a frame that cannot go out within `ws_send_timeout_s` (1013), a replay
    only while the tenant has fewer than `ws_max_replays_per_tenant` running here; and the key: revoked, the
    connection is closed (1008)."""

    def __init__(
        self, websocket: WebSocket, state: ApiState, principal: Principal, feed: TenantFeed, handle: StreamHandle
    ) -> None:
        self.ws = websocket
        self.state = state
        self.principal = principal
        self.feed = feed
        self.handle = handle
        settings = state.settings
        self.listener = Listener(settings.ws_max_queue)
        self.subs: dict[Key, Subscription] = {}
        self.max_subscriptions = settings.ws_max_subscriptions
        self.max_pending = settings.ws_max_pending_frames
        self.send_timeout_s = settings.ws_send_timeout_s
        self.pending = 0  # client frames read and not yet handled
        self.closing: tuple[int, str] | None = None

    async def serve(self) -> None:
        receiver = asyncio.create_task(self._receive())
        main = asyncio.create_task(self._loop())
        ended = asyncio.create_task(self.handle.ended.wait())
        try:
            await asyncio.wait({receiver, main, ended}, return_when=asyncio.FIRST_COMPLETED)
            if ended.done():
                self.closing = (CLOSE_POLICY, self.handle.reason)
            elif main.done() and not main.cancelled():
                exc = main.exception()
                if isinstance(exc, SlowConsumer | TimeoutError):
                    message = str(exc) or f"slow consumer: a frame could not be sent within {self.send_timeout_s:g}s"
                    self.closing = (CLOSE_TRY_LATER, message)
        finally:
            for task in (receiver, main, ended):
                task.cancel()
            await asyncio.gather(receiver, main, ended, return_exceptions=True)
            self.feed.detach(self.listener)
        if self.closing is not None:
            await self._close(*self.closing)

    async def _close(self, code: int, message: str) -> None:
        """Say why, then close with `code`; a client that does not read gets neither, and is let go."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                await self.ws.send_text(orjson.dumps({"type": "error", "message": message}).decode())
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.send_timeout_s):
                await self.ws.close(code=code, reason=message[:120])

    async def _loop(self) -> None:
        while True:
            item = await self.listener.next()
            if isinstance(item, FeedEvent):
                if self._wanted(item):
                    await self._send_text(item.text)
            else:
                self.pending -= 1
                if not await self._command(item):
                    return

    async def _send_text(self, text: str) -> None:
        # A client that does not read would hold the loop (and its queue) for ever: TimeoutError ends it.
        async with asyncio.timeout(self.send_timeout_s):
            await self.ws.send_text(text)

    def _wanted(self, event: FeedEvent) -> bool:
        for key in event.keys():
            sub = self.subs.get(key)
            if sub is not None and (event.seq is None or event.seq > sub.start):
                return True
        return False

    async def _receive(self) -> None:
        """Client frames, handed to the main loop through the listener's queue (so they keep their place).
        Returns when the client has gone, or has sent more frames than may wait (the connection is then closed)."""
        try:
            while True:
                text = await self.ws.receive_text()
                if self.pending >= self.max_pending:
                    self.closing = (
                        CLOSE_POLICY,
                        f"too many frames: more than {self.max_pending} sent and not yet answered",
                    )
                    return
                try:
                    frame = orjson.loads(text)
                except orjson.JSONDecodeError:
                    frame = {"action": "__invalid__"}
                self.pending += 1
                self.listener.post(_Command(frame))
        except (WebSocketDisconnect, RuntimeError, KeyError):
            # KeyError: a binary frame (receive_text finds no "text").
            self.listener.post(_Command(None))

    async def _command(self, item: Any) -> bool:
        """Handle a client frame; False when the connection is over."""
        frame = item.frame
        if frame is None:
            return False
        # An id with U+0000 would make the database refuse the lookup (and end the connection): say so instead.
        unstorable = find_unstorable(frame)
        if unstorable is not None:
            param, problem = unstorable
            await self._send({"type": "error", "message": f"{param or 'frame'}: {problem}", "param": param or None})
            return True
        action = frame.get("action") if isinstance(frame, dict) else None
        if action == "ping":
            await self._send({"type": "pong"})
        elif action == "subscribe":
            await self._subscribe(frame)
        elif action == "unsubscribe":
            key = await self._target(frame)
            if key is not None:
                self.subs.pop(key, None)
                self.feed.unsubscribe(self.listener, key)
                await self._send({"type": "unsubscribed", **_target_fields(key)})
        elif action == "__invalid__":
            await self._send({"type": "error", "message": "frames must be JSON objects"})
        else:
            await self._send(
                {"type": "error", "message": "action must be one of subscribe, unsubscribe, ping", "param": "action"}
            )
        return True

    async def _subscribe(self, frame: dict[str, Any]) -> None:
        since = frame.get("since")
        if since is not None and (isinstance(since, bool) or not isinstance(since, int) or since < 0):
            await self._send(
                {"type": "error", "message": "since must be an event id (an integer >= 0)", "param": "since"}
            )
            return
        key = await self._target(frame)
        if key is None:
            return
        if key not in self.subs and len(self.subs) >= self.max_subscriptions:
            await self._send(
                {
                    "type": "error",
                    "code": "too_many_subscriptions",
                    "message": f"a connection may have {self.max_subscriptions} subscriptions; unsubscribe first "
                    "(or subscribe to all: true)",
                    "param": "action",
                }
            )
            return
        replays = self.state.replays
        tenant_id = self.principal.tenant_id
        if since is not None and not replays.try_enter(tenant_id):
            await self._send(
                {
                    "type": "error",
                    "code": "too_many_replays",
                    "message": f"this tenant has {replays.limit} replays running; subscribe again in a moment",
                    "param": "since",
                    "retry_after": 1,
                }
            )
            return
        try:
            start = self.feed.subscribe(self.listener, key)
            self.subs[key] = Subscription(key, start)
            await self._send({"type": "subscribed", **_target_fields(key), "since": since, "position": start})
            if since is not None:
                async for event in replay(self.state.hub.reader, tenant_id, key, since, start):
                    await self._send_text(event.text)
        finally:
            if since is not None:
                replays.leave(tenant_id)

    async def _target(self, frame: dict[str, Any]) -> Key | None:
        """The key a frame names (checked to be the caller's), or None after telling the client why not."""
        named = [field for field in _TARGETS if frame.get(field) is not None]
        if frame.get("all") is True and not named:
            return ALL
        if len(named) != 1 or not isinstance(frame[named[0]], str):
            await self._send(
                {
                    "type": "error",
                    "message": "name exactly one of task_id, run_id, batch_id, or all: true",
                    "param": named[0] if len(named) == 1 else "task_id",
                }
            )
            return None
        field, object_id = named[0], frame[named[0]]
        if not await anyio.to_thread.run_sync(self._owned, field, object_id):
            await self._send({"type": "error", "message": f"no {field[:-3]} '{object_id}'", "param": field})
            return None
        return object_key(field[:-3], object_id)

    def _owned(self, field: str, object_id: str) -> bool:
        """Whether the object exists and is the caller's (another tenant's ids look unknown)."""
        model: type[Task] | type[Run] | type[Batch] = _MODELS[field]
        with self.state.db.sessions() as session:
            found = session.scalar(
                select(model.id).where(model.id == object_id, model.tenant_id == self.principal.tenant_id)
            )
        return found is not None

    async def _send(self, frame: dict[str, Any]) -> None:
        await self._send_text(orjson.dumps(frame).decode())


# What an object id names, by the field that gives it.
_MODELS: dict[str, type[Task] | type[Run] | type[Batch]] = {"task_id": Task, "run_id": Run, "batch_id": Batch}


def _target_fields(key: Key) -> dict[str, Any]:
    kind, object_id = key
    return {"all": True} if kind == "all" else {f"{kind}_id": object_id}
