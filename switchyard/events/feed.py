"""Live events in an API process: one feed per tenant, shared by every listener of that tenant.

A feed follows the tenant's numbered events in `seq` order. With Redis it takes them from the tenant's
pub/sub channel (one connection per process for all feeds) and reads from the table whatever a message's
`prev` shows it missed; it also looks at the table every few seconds, in case the last message was lost.
Without Redis (embedded mode) it tails the table, and streamed chunks come from the workers over a local
socket (`local_bus`), as the same messages. Each event is offered once to every listener subscribed to one of
its keys: the tenant (`all`), its task, its run, its batch.

A relay that starts leading, or that failed to publish, tells every feed to look at the table (the
resync channel), so the periodic look is only a last resort.

A listener that subscribes learns the feed's position at that instant; every later event reaches its queue,
so "the stored events up to the position, then the queue" has no gap and no duplicate (`follow`). A
listener whose queue is full is a slow consumer: it is told so and should be disconnected, rather than
the process buffering without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio.to_thread
import orjson
import redis
import redis.asyncio
import structlog

from switchyard.core.aio import stop_task
from switchyard.core.db import Database
from switchyard.events.bus import EVENTS_PREFIX, RESYNC, tenant_channel
from switchyard.events.local_bus import LocalDeltaListener
from switchyard.events.log import TERMINAL_TYPES, event_view, events_after, last_seq

log = structlog.get_logger(__name__)

Key = tuple[str, str]
ALL: Key = ("all", "")
_PAGE = 1000


def object_key(kind: str, object_id: str) -> Key:
    """The key of one task, run or batch."""
    return (kind, object_id)


@dataclass(frozen=True)
class FeedEvent:
    """An event as listeners get it: API.md's view, and the same serialised once for every listener."""

    seq: int | None  # None: a task.delta, which is not stored
    view: dict[str, Any]
    text: str

    @property
    def type(self) -> str:
        return str(self.view["type"])

    @property
    def terminal(self) -> bool:
        return self.view["type"] in TERMINAL_TYPES

    def keys(self) -> list[Key]:
        keys = [] if self.seq is None else [ALL]  # deltas only reach those following the task
        for kind in ("task", "run", "batch"):
            object_id = self.view.get(f"{kind}_id")
            if object_id:
                keys.append((kind, object_id))
        return keys

    @classmethod
    def of(cls, view: dict[str, Any]) -> FeedEvent:
        return cls(view["id"], view, orjson.dumps(view).decode())


class SlowConsumer(Exception):
    """The listener fell too far behind; the message says how far."""


class Listener:
    """A queue of the events of the keys it subscribed to, bounded at `max_queue` events. Its owner may also
    `post` items of its own (a WebSocket's client frames) so that they keep their place among the events."""

    def __init__(self, max_queue: int) -> None:
        self.max_queue = max_queue
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.keys: set[Key] = set()
        self.overflowed = False

    def offer(self, event: FeedEvent) -> None:
        if self.overflowed:
            return
        if self.queue.qsize() >= self.max_queue:
            # Too far behind: drop the backlog and leave the marker that ends the listener.
            self.overflowed = True
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(_OVERFLOW)
            return
        self.queue.put_nowait(event)

    def post(self, item: Any) -> None:
        if not self.overflowed:
            self.queue.put_nowait(item)

    async def next(self) -> Any:
        """The next event (or posted item); SlowConsumer once events had to be dropped."""
        item = await self.queue.get()
        if item is _OVERFLOW:
            raise SlowConsumer(f"slow consumer: more than {self.max_queue} events behind")
        return item


_OVERFLOW = object()
# Put in a feed's inbox: look at the table now (after Redis was away).
_CATCH_UP = object()


class EventReader:
    """The table side: positions and replays, run in worker threads."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def last_seq(self, tenant_id: str) -> int:
        def read() -> int:
            with self.db.sessions() as session:
                return last_seq(session, tenant_id)

        return await anyio.to_thread.run_sync(read)

    async def after(
        self, tenant_id: str, after: int, *, until: int | None = None, key: Key = ALL, limit: int = _PAGE
    ) -> list[FeedEvent]:
        kind, object_id = key
        filters = {f"{kind}_id": object_id} if kind != "all" else {}

        def read() -> list[FeedEvent]:
            with self.db.sessions() as session:
                rows = events_after(session, tenant_id, after, until=until, limit=limit, **filters)
                return [FeedEvent.of(event_view(row)) for row in rows]

        return await anyio.to_thread.run_sync(read)


class TenantFeed:
    def __init__(self, tenant_id: str, reader: EventReader, *, poll_s: float) -> None:
        self.tenant_id = tenant_id
        self.reader = reader
        self.poll_s = poll_s
        self.position = 0
        self.ready = asyncio.Event()
        self.subscribed = asyncio.Event()  # the Redis subscription is confirmed (set at once without Redis)
        self.inbox: asyncio.Queue[Any] = asyncio.Queue()  # raw messages, or _CATCH_UP
        self.listeners: dict[Key, set[Listener]] = {}
        self.users = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"feed-{self.tenant_id}")

    async def stop(self) -> None:
        await stop_task(self._task)

    # --- listeners ----------------------------------------------------------------------------------------------

    def subscribe(self, listener: Listener, key: Key) -> int:
        """Events of `key` after the returned position reach the listener's queue."""
        self.listeners.setdefault(key, set()).add(listener)
        listener.keys.add(key)
        return self.position

    def unsubscribe(self, listener: Listener, key: Key) -> None:
        listener.keys.discard(key)
        members = self.listeners.get(key)
        if members is not None:
            members.discard(listener)
            if not members:
                del self.listeners[key]

    def detach(self, listener: Listener) -> None:
        for key in list(listener.keys):
            self.unsubscribe(listener, key)

    # --- following ----------------------------------------------------------------------------------------------

    async def _run(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.subscribed.wait(), 5.0)
        while True:
            try:
                self.position = await self.reader.last_seq(self.tenant_id)
                break
            except Exception:
                log.warning("feed_start_failed", tenant_id=self.tenant_id, exc_info=True)
                await asyncio.sleep(1.0)
        self.ready.set()
        while True:
            try:
                try:
                    raw = await asyncio.wait_for(self.inbox.get(), self.poll_s)
                except TimeoutError:
                    await self._catch_up()
                    continue
                if raw is _CATCH_UP:
                    await self._catch_up()
                else:
                    await self._handle(raw)
            except asyncio.CancelledError:
                raise
            except Exception:
                # The database is away: keep the position, the next look at the table fills the gap.
                log.warning("feed_failed", tenant_id=self.tenant_id, exc_info=True)
                await asyncio.sleep(0.5)

    async def _handle(self, raw: bytes) -> None:
        message = orjson.loads(raw)
        delta = message.get("delta")
        if delta is not None:
            self._offer(FeedEvent(None, delta, orjson.dumps(delta).decode()))
            return
        for view in message.get("events", ()):
            seq = view["id"]
            if seq <= self.position:
                continue  # already read from the table
            if view.pop("prev") > self.position or view.pop("data_omitted", False):
                await self._catch_up(until=seq)
                continue
            self._deliver(FeedEvent.of(view))

    async def _catch_up(self, until: int | None = None) -> None:
        """Deliver what the table holds after the position (up to `until`)."""
        while True:
            events = await self.reader.after(self.tenant_id, self.position, until=until)
            for event in events:
                if event.seq is not None and event.seq > self.position:
                    self._deliver(event)
            if len(events) < _PAGE:
                return

    def _deliver(self, event: FeedEvent) -> None:
        assert event.seq is not None
        self.position = event.seq
        self._offer(event)

    def _offer(self, event: FeedEvent) -> None:
        reached: set[Listener] = set()
        for key in event.keys():
            reached.update(self.listeners.get(key, ()))
        for listener in reached:
            listener.offer(event)


class EventHub:
    """The feeds of one API process and the single Redis connection that carries them. The process serves
    with Redis down too: feeds then find events in the table, and the subscriptions are made again once
    Redis answers."""

    def __init__(
        self,
        db: Database,
        redis_url: str | None,
        *,
        poll_s: float,
        idle_s: float = 30.0,
        deltas_dir: Path | None = None,
    ) -> None:
        """`deltas_dir`: without Redis, where to listen for the workers' streamed chunks (`local_bus`)."""
        self.reader = EventReader(db)
        self.redis_url = redis_url
        # With Redis the table is only a safety net; without it, it is the only source.
        self.poll_s = poll_s if redis_url else min(poll_s, 0.1)
        self.idle_s = idle_s
        self.feeds: dict[str, TenantFeed] = {}
        self._redis: redis.asyncio.Redis | None = None
        self._pubsub: Any = None
        self._connected = False
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._local: LocalDeltaListener | None = None
        if redis_url is None and deltas_dir is not None:
            self._local = LocalDeltaListener(deltas_dir, self._local_delta)

    async def start(self) -> None:
        if self.redis_url is not None:
            self._redis = redis.asyncio.Redis.from_url(self.redis_url)
            self._reader = asyncio.create_task(self._read(), name="event-hub")
        if self._local is not None:
            await self._local.start()

    async def close(self) -> None:
        if self._local is not None:
            await self._local.close()
        for feed in list(self.feeds.values()):
            await feed.stop()
        self.feeds.clear()
        await stop_task(self._reader)
        await self._drop_connection()
        if self._redis is not None:
            await self._redis.aclose()

    async def acquire(self, tenant_id: str) -> TenantFeed:
        """The tenant's feed, started (and subscribed) if it was not; pair with `release`."""
        async with self._lock:
            feed = self.feeds.get(tenant_id)
            if feed is None:
                feed = TenantFeed(tenant_id, self.reader, poll_s=self.poll_s)
                self.feeds[tenant_id] = feed
                if self._connected:
                    try:
                        await self._pubsub.subscribe(tenant_channel(tenant_id))
                    except (redis.RedisError, OSError):
                        self._connected = False  # the reader connects again and subscribes every feed
                        feed.subscribed.set()
                else:
                    feed.subscribed.set()  # nothing to wait for: the table is read at once
                feed.start()
            feed.users += 1
        await feed.ready.wait()
        return feed

    def release(self, feed: TenantFeed) -> None:
        feed.users -= 1
        if feed.users == 0:
            asyncio.get_running_loop().call_later(self.idle_s, lambda: asyncio.ensure_future(self._retire(feed)))

    async def _retire(self, feed: TenantFeed) -> None:
        async with self._lock:
            if feed.users > 0 or self.feeds.get(feed.tenant_id) is not feed:
                return
            del self.feeds[feed.tenant_id]
            if self._connected:
                with contextlib.suppress(redis.RedisError, OSError):
                    await self._pubsub.unsubscribe(tenant_channel(feed.tenant_id))
        await feed.stop()

    def _local_delta(self, tenant_id: str, message: bytes) -> None:
        # A tenant nobody here follows: nobody to give the chunk to.
        feed = self.feeds.get(tenant_id)
        if feed is not None:
            feed.inbox.put_nowait(message)

    async def _connect(self) -> None:
        assert self._redis is not None
        async with self._lock:
            self._pubsub = self._redis.pubsub()
            # A channel of its own keeps the connection subscribed while no tenant is followed.
            channels = [f"switchyard:hub:{os.getpid()}", RESYNC, *(tenant_channel(t) for t in self.feeds)]
            await self._pubsub.subscribe(*channels)
            self._connected = True
            for feed in self.feeds.values():
                feed.inbox.put_nowait(_CATCH_UP)  # whatever was published while we were away

    async def _drop_connection(self) -> None:
        self._connected = False
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
            self._pubsub = None

    async def _read(self) -> None:
        while True:
            try:
                if not self._connected:
                    await self._connect()
                message = await self._pubsub.get_message(timeout=1.0)
            except asyncio.CancelledError:
                raise
            except Exception:
                # Redis is away. Feeds keep reading the table meanwhile; subscriptions are made afresh.
                log.warning("event_hub_redis_failed", exc_info=True)
                await self._drop_connection()
                await asyncio.sleep(1.0)
                continue
            if message is None:
                continue
            channel = message["channel"].decode()
            if channel == RESYNC and message["type"] == "message":
                for each in list(self.feeds.values()):
                    each.inbox.put_nowait(_CATCH_UP)
                continue
            if not channel.startswith(EVENTS_PREFIX):
                continue
            feed = self.feeds.get(channel[len(EVENTS_PREFIX) :])
            if feed is None:
                continue
            if message["type"] == "subscribe":
                feed.subscribed.set()
            elif message["type"] == "message":
                feed.inbox.put_nowait(message["data"])


class Following:
    """A listener on one key of a tenant's feed, attached on entry: every event after `start` reaches it.
    Entering before the object's first event is published (a task made with an id chosen beforehand)
    means none is missed, not even the first streamed chunk."""

    def __init__(self, hub: EventHub, tenant_id: str, key: Key, *, max_queue: int) -> None:
        self.hub, self.tenant_id, self.key = hub, tenant_id, key
        self.listener = Listener(max_queue)
        self.start = 0
        self._feed: TenantFeed | None = None

    async def __aenter__(self) -> Following:
        self._feed = await self.hub.acquire(self.tenant_id)
        self.start = self._feed.subscribe(self.listener, self.key)
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._feed is not None:
            self._feed.detach(self.listener)
            self.hub.release(self._feed)

    async def events(self, since: int | None) -> AsyncIterator[FeedEvent]:
        """The stored events after `since` (none when None) up to `start`, then live ones, in order."""
        if since is not None:
            async for stored in replay(self.hub.reader, self.tenant_id, self.key, since, self.start):
                yield stored
        while True:
            live: FeedEvent = await self.listener.next()
            yield live


async def follow(
    hub: EventHub, tenant_id: str, key: Key, *, since: int | None, max_queue: int
) -> AsyncGenerator[FeedEvent]:
    """The events of one key: the stored ones after `since` (none when None), then live ones, in order."""
    async with Following(hub, tenant_id, key, max_queue=max_queue) as following:
        async for event in following.events(since):
            yield event


async def replay(reader: EventReader, tenant_id: str, key: Key, since: int, until: int) -> AsyncIterator[FeedEvent]:
    """Stored events of `key` with `since < seq <= until`, page by page."""
    after = since
    while after < until:
        page = await reader.after(tenant_id, after, until=until, key=key)
        for event in page:
            yield event
        if len(page) < _PAGE:
            return
        assert page[-1].seq is not None
        after = page[-1].seq
