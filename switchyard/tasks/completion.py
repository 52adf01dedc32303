"""Waiting for a task to finish, for the synchronous endpoints.

The worker pushes the finished task (as the API shows it) to a per-task Redis key after the commit that
finished it; the API blocks on that key (BLPOP) in short slices and checks the row between slices, so a
lost signal costs a second, not a request. The pushed task spares the API reading it back; a task too big
to push is pushed as a bare signal and read from the table. Embedded mode has no Redis and polls the row.
"""

from __future__ import annotations

import time
from typing import Any

import anyio
import anyio.to_thread
import orjson
import redis
import redis.asyncio
from sqlalchemy import select

from switchyard.core.db import Database
from switchyard.core.models import Task

TERMINAL = ("succeeded", "failed", "canceled")
_TTL_S = 300
MAX_WAITERS = 1000
# One BLPOP waits at most this long before the row is looked at.
_SLICE_S = 1.0
# A finished task bigger than this (many embeddings, say) is signalled, not pushed.
MAX_PUSHED_BYTES = 512 * 1024


def done_key(task_id: str) -> str:
    return f"switchyard:done:{task_id}"


def signal_done(client: redis.Redis, task_id: str, view: dict[str, Any]) -> None:
    """Called by the worker once the finishing transaction has committed."""
    payload = orjson.dumps(view, option=orjson.OPT_SERIALIZE_NUMPY)
    pipe = client.pipeline(transaction=False)
    pipe.lpush(done_key(task_id), payload if len(payload) <= MAX_PUSHED_BYTES else b"1")
    pipe.expire(done_key(task_id), _TTL_S)
    pipe.execute()


class Completions:
    """The API side: wait until a task is finished or the time is up."""

    def __init__(
        self, db: Database, redis_url: str | None, *, max_waiters: int = MAX_WAITERS, redis_timeout_s: float = 5.0
    ) -> None:
        self._db = db
        self._redis_timeout_s = redis_timeout_s
        # Each waiting request holds a connection for its BLPOP: a blocking pool makes the excess wait for one
        # instead of failing (the library's default pool raises past 100) — but not for ever: after
        # `redis_timeout_s` (for a connection, or for an answer past the BLPOP's own timeout) the waiter reads
        # the row instead. The API admits at most `max_waiters` waiters (gateway_api.waiters), one connection each.
        self._redis = (
            redis.asyncio.Redis(
                connection_pool=redis.asyncio.BlockingConnectionPool.from_url(
                    redis_url,
                    max_connections=max_waiters,
                    timeout=redis_timeout_s,
                    socket_timeout=_SLICE_S + redis_timeout_s,
                    socket_connect_timeout=redis_timeout_s,
                )
            )
            if redis_url
            else None
        )

    async def wait(self, task_id: str, timeout_s: float) -> dict[str, Any] | bool:
        """The finished task when the worker pushed it, True when it is finished (read it from the table),
        False when `timeout_s` passed first."""
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return await self._finished(task_id)
            if self._redis is not None:
                try:
                    popped = await self._redis.blpop([done_key(task_id)], timeout=min(_SLICE_S, remaining))
                except redis.RedisError:
                    # No connection in time, or Redis is away: the row says when the task is done.
                    popped = None
                    await anyio.sleep(min(_SLICE_S, max(remaining, 0)))
                if popped:
                    _, payload = popped
                    return True if payload == b"1" else dict(orjson.loads(payload))
            else:
                await anyio.sleep(min(0.02, remaining))
            if await self._finished(task_id):
                return True

    async def _finished(self, task_id: str) -> bool:
        def status() -> str | None:
            with self._db.sessions() as session:
                return session.scalar(select(Task.status).where(Task.id == task_id))

        return await anyio.to_thread.run_sync(status) in TERMINAL

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
