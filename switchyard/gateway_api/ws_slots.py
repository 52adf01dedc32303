"""Per-tenant limits on open streams (WebSocket connections, SSE streams)."""

from __future__ import annotations

import asyncio
import contextlib
import time

import redis
import redis.asyncio
import structlog

from switchyard.core.aio import stop_task
from switchyard.core.ids import new_id

log = structlog.get_logger(__name__)


class ConnectionSlots:
    """Per-tenant limits on open streams of one kind (`name`: "ws", "sse"). With Redis the count spans every
    API process: each connection is a member of a sorted set scored by when its registration lapses, renewed
    while it lives, so the connections of a process that died stop counting within a minute."""

    TTL_S = 60.0

    def __init__(self, redis_url: str | None, limit: int, name: str = "ws") -> None:
        self.limit = limit
        self.name = name
        self._redis = redis.asyncio.Redis.from_url(redis_url) if redis_url else None
        self._local: dict[str, set[str]] = {}
        self._renewer: asyncio.Task[None] | None = None

    async def acquire(self, tenant_id: str) -> str | None:
        """A slot id, or None when the tenant is at its limit."""
        slot = new_id(self.name)
        mine = self._local.setdefault(tenant_id, set())
        if self._redis is None:
            if len(mine) >= self.limit:
                return None
        else:
            key, now = _slots_key(self.name, tenant_id), time.time()
            pipe = self._redis.pipeline(transaction=True)
            pipe.zremrangebyscore(key, "-inf", now)
            pipe.zadd(key, {slot: now + self.TTL_S})
            pipe.zcard(key)
            pipe.expire(key, int(self.TTL_S * 2))
            _, _, count, _ = await pipe.execute()
            if count > self.limit:
                await self._redis.zrem(key, slot)
                return None
            if self._renewer is None:
                self._renewer = asyncio.create_task(self._renew())
        mine.add(slot)
        return slot

    async def release(self, tenant_id: str, slot: str) -> None:
        self._local.get(tenant_id, set()).discard(slot)
        if self._redis is not None:
            with contextlib.suppress(redis.RedisError):
                await self._redis.zrem(_slots_key(self.name, tenant_id), slot)

    async def _renew(self) -> None:
        assert self._redis is not None
        while True:
            await asyncio.sleep(self.TTL_S / 3)
            try:
                pipe = self._redis.pipeline(transaction=False)
                expires = time.time() + self.TTL_S
                for tenant_id, slots in self._local.items():
                    if slots:
                        pipe.zadd(_slots_key(self.name, tenant_id), dict.fromkeys(slots, expires))
                        pipe.expire(_slots_key(self.name, tenant_id), int(self.TTL_S * 2))
                await pipe.execute()
            except redis.RedisError:
                log.warning("stream_slots_renew_failed", kind=self.name, exc_info=True)

    async def close(self) -> None:
        await stop_task(self._renewer)
        if self._redis is not None:
            await self._redis.aclose()


def _slots_key(name: str, tenant_id: str) -> str:
    return f"switchyard:{name}:{tenant_id}"
