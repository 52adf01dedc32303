"""Every API process hears about changed and revoked keys at once: a subscription to the invalidation channel
(`tenancy.invalidation`), made in the lifespan, that drops the principals the key cache holds.

The subscription pings Redis every `ping_s`; each answer (and each message) tells the cache that the channel
works for `live_s` more. When Redis goes away, answers stop and the cache falls back to its short TTL within
`live_s`; when the subscription is made again, the whole cache is dropped, for messages may have been missed
in between."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import redis
import redis.asyncio
import structlog

from switchyard.core.aio import stop_task
from switchyard.gateway_api.state import KeyCache
from switchyard.tenancy.invalidation import CHANNEL, Message, decode

log = structlog.get_logger(__name__)


def apply(cache: KeyCache, message: Message) -> None:
    """Drop what a message says is out of date."""
    cache.drop(key_id=message.get("key_id"), tenant_id=message.get("tenant_id"))


class KeyEvents:
    """The subscription of one API process."""

    def __init__(
        self,
        cache: KeyCache,
        redis_url: str,
        *,
        ping_s: float = 1.0,
        live_s: float = 3.0,
        on_change: Callable[[Message | None], None] | None = None,
    ) -> None:
        """`on_change`: told of each message too (None: messages may have been missed), after the cache."""
        self.cache = cache
        self.on_change = on_change
        self.redis_url = redis_url
        self.ping_s = ping_s
        self.live_s = live_s
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="key-events")

    async def close(self) -> None:
        await stop_task(self._task)

    async def _run(self) -> None:
        while True:
            client = redis.asyncio.Redis.from_url(self.redis_url, socket_connect_timeout=2)
            pubsub: Any = client.pubsub()
            try:
                await pubsub.subscribe(CHANNEL)
                await self._listen(pubsub)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("key_events_redis_failed", exc_info=True)
            finally:
                self.cache.live_until = 0.0
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                with contextlib.suppress(Exception):
                    await client.aclose()
            await asyncio.sleep(0.5)

    async def _listen(self, pubsub: Any) -> None:
        pinged = time.monotonic()
        while True:
            message = await pubsub.get_message(timeout=self.ping_s)
            now = time.monotonic()
            if now - pinged >= self.ping_s:
                await pubsub.ping()
                pinged = now
            if message is None:
                continue
            kind = message["type"]
            if kind == "subscribe":
                # Whatever was published while this process was not subscribed is lost: forget everything.
                self.cache.clear()
                if self.on_change is not None:
                    self.on_change(None)
            elif kind == "message":
                decoded = decode(message["data"])
                if decoded is not None:
                    apply(self.cache, decoded)
                    if self.on_change is not None:
                        self.on_change(decoded)
            self.cache.live_until = time.monotonic() + self.live_s
