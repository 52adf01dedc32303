"""Load shedding: measure and publish the queues (leading worker), and refuse submissions when they back up
(API processes).

The request path never touches the database or Redis: each API process keeps the latest figures in memory,
refreshed by a background task at most every `shed_refresh_s`, and a submission only looks up a precomputed
verdict for its queue (a dict lookup, and a clock read when the verdict is to refuse).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from datetime import datetime
from pathlib import Path

import anyio.to_thread
import redis
import redis.asyncio
import structlog
from sqlalchemy import Connection

from switchyard.core.aio import stop_task
from switchyard.core.errors import ServiceUnavailable
from switchyard.settings import Settings
from switchyard.shedding.repository import queue_load
from switchyard.shedding.schemas import FILE_NAME, REDIS_KEY, REDIS_TTL_S, LoadSnapshot
from switchyard.workers.queues import BATCH

log = structlog.get_logger(__name__)


class Overloaded(ServiceUnavailable):
    """A submission refused because its queue is backed up: 503, `Retry-After`, code `overloaded`."""

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self.code = "overloaded"


# --- the leading worker: measure and publish -------------------------------------------------------------------


class LoadPublisher:
    """Measures the queues on the leader's connection and publishes the figures where API processes read them."""

    def __init__(self, settings: Settings) -> None:
        self.redis = redis.Redis.from_url(settings.redis_url) if settings.redis_url else None
        self.path = settings.data_dir / FILE_NAME

    def publish(self, conn: Connection, now: datetime) -> LoadSnapshot:
        """One measurement on `conn` (in the caller's transaction), published."""
        snapshot = LoadSnapshot(now.timestamp(), queue_load(conn, now))
        fields = snapshot.encode()
        if self.redis is not None:
            with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(REDIS_KEY, mapping=fields)  # type: ignore[arg-type]
                pipe.expire(REDIS_KEY, REDIS_TTL_S)
                pipe.execute()
        else:
            # Embedded mode: a file beside the database, replaced atomically so a reader never sees half of it.
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(fields))
            tmp.replace(self.path)
        return snapshot

    def close(self) -> None:
        if self.redis is not None:
            self.redis.close()


# --- API processes: read in the background, decide on the request path ------------------------------------------


class Shedder:
    """The admission check of one API process. `check(queue)` is the hot path; `start()` runs the refresher."""

    def __init__(self, settings: Settings) -> None:
        self.max_depth = settings.shed_queue_depth
        self.max_age_s = settings.shed_queue_age_s
        self.retry_after_s = settings.shed_retry_after_s
        self.refresh_s = settings.shed_refresh_s
        self.stale_after_s = settings.shed_stale_after_s
        self.enabled = self.max_depth is not None or self.max_age_s is not None
        self._redis_url = settings.redis_url
        self._path = settings.data_dir / FILE_NAME
        # Per queue, why to refuse while the figures hold (absent: admit), and when they were measured.
        self._refusals: dict[str, str] = {}
        self._at = 0.0
        self._task: asyncio.Task[None] | None = None

    def check(self, queue: str) -> None:
        """Raise `Overloaded` when `queue` is past a bound by figures that are still fresh; else return."""
        refusal = self._refusals.get(queue)
        if refusal is not None and time.time() - self._at <= self.stale_after_s:
            # A new exception each time: re-raising one instance would grow its traceback with every request.
            raise Overloaded(refusal, retry_after_s=self.retry_after_s)

    def apply(self, snapshot: LoadSnapshot | None) -> None:
        """Take new figures: work out each queue's verdict now, so the request path only looks it up."""
        if snapshot is None:
            self._refusals = {}
            return
        refusals: dict[str, str] = {}
        for name, load in snapshot.queues.items():
            if name == BATCH:
                # Batch lines wait by design (a release window, a 24 h completion window): never a reason to
                # refuse anyone. Published all the same, for operators.
                continue
            reason = None
            if self.max_depth is not None and load.depth > self.max_depth:
                reason = f"{load.depth} tasks are waiting (the bound is {self.max_depth})"
            elif self.max_age_s is not None and load.oldest_age_s > self.max_age_s:
                reason = f"its oldest task has waited {load.oldest_age_s:.0f}s (the bound is {self.max_age_s:g}s)"
            if reason is not None:
                refusals[name] = f"the service is overloaded: the {name} queue is backed up, {reason}; retry later"
        self._at = snapshot.at
        self._refusals = refusals

    async def start(self) -> None:
        """Start refreshing in the background (nothing to do when no bound is set)."""
        if self.enabled:
            self._task = asyncio.create_task(self._refresh_forever(), name="shedding-refresh")

    async def close(self) -> None:
        await stop_task(self._task)

    async def _refresh_forever(self) -> None:
        client = redis.asyncio.Redis.from_url(self._redis_url, decode_responses=True) if self._redis_url else None
        try:
            while True:
                try:
                    self.apply(await self._read(client))
                except Exception as exc:
                    # Figures that cannot be read are figures that say nothing: admit.
                    self.apply(None)
                    log.warning("queue_load_unreadable", error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(self.refresh_s)
        finally:
            if client is not None:
                await client.aclose()

    async def _read(self, client: redis.asyncio.Redis | None) -> LoadSnapshot | None:
        if client is not None:
            raw = await client.hgetall(REDIS_KEY)
            fields = {str(k): str(v) for k, v in raw.items()}
            return LoadSnapshot.decode(fields) if fields else None
        return await anyio.to_thread.run_sync(_read_file, self._path)


def _read_file(path: Path) -> LoadSnapshot | None:
    try:
        fields = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return LoadSnapshot.decode(fields) if isinstance(fields, dict) else None
