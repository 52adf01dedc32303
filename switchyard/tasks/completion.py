"""Waiting for a task to finish, for the synchronous endpoints.

The worker pushes to a per-task Redis key after the commit that finished the task; the API blocks on that
key (BLPOP) in short slices and checks the row between slices, so a lost signal costs a second, not a
request. Embedded mode has no Redis and polls the row.
"""

from __future__ import annotations

import time

import anyio
import anyio.to_thread
import redis
import redis.asyncio
from sqlalchemy import select

from switchyard.core.db import Database
from switchyard.core.models import Task

TERMINAL = ("succeeded", "failed", "canceled")
_TTL_S = 300
MAX_WAITERS = 1000


def done_key(task_id: str) -> str:
    return f"switchyard:done:{task_id}"


def signal_done(client: redis.Redis, task_id: str) -> None:
    """Called by the worker once the finishing transaction has committed."""
    pipe = client.pipeline(transaction=False)
    pipe.lpush(done_key(task_id), 1)
    pipe.expire(done_key(task_id), _TTL_S)
    pipe.execute()


class Completions:
    """The API side: wait until a task is finished or the time is up."""

    def __init__(self, db: Database, redis_url: str | None) -> None:
        self._db = db
        # Each waiting request holds a connection for its BLPOP: a blocking pool makes the excess wait for one
        # instead of failing (the library's default pool raises past 100).
        self._redis = (
            redis.asyncio.Redis(
                connection_pool=redis.asyncio.BlockingConnectionPool.from_url(
                    redis_url, max_connections=MAX_WAITERS, timeout=None
                )
            )
            if redis_url
            else None
        )

    async def wait(self, task_id: str, timeout_s: float) -> bool:
        """True once the task is finished; False when `timeout_s` passed first."""
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return await self._finished(task_id)
            if self._redis is not None:
                if await self._redis.blpop([done_key(task_id)], timeout=min(1.0, remaining)):
                    return True
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
