"""The WebSockets and SSE streams open in this API process, by the key that opened them, so that a revoked (or
expired) key's streams are closed promptly instead of living on.

Two ways a stream learns its key no longer stands: the invalidation channel every API process listens on
(`tenancy.invalidation`: a key changed or was revoked, a tenant's keys changed) makes the keys it names be checked
at once; and every `recheck_s` all the keys of open streams are checked in one query, for a message that was
lost (Redis away) and for embedded mode. A check is a read of the keys' rows in a worker thread, never a
per-event cost."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import anyio.to_thread
import structlog

from switchyard.core.aio import stop_task
from switchyard.core.db import Database
from switchyard.tenancy import repository
from switchyard.tenancy.invalidation import Message
from switchyard.tenancy.service import Principal

log = structlog.get_logger(__name__)


class StreamHandle:
    """One open stream: `ended` is set (with `reason`) when its key stops standing."""

    def __init__(self, principal: Principal) -> None:
        self.principal = principal
        self.ended = asyncio.Event()
        self.reason = ""

    def end(self, reason: str) -> None:
        self.reason = reason
        self.ended.set()


class OpenStreams:
    """The registry, its periodic check and its reaction to invalidation messages."""

    def __init__(self, db: Database, recheck_s: float) -> None:
        self.db = db
        self.recheck_s = recheck_s
        self._by_key: dict[str, set[StreamHandle]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="open-streams")

    async def close(self) -> None:
        await stop_task(self._task)

    def open(self, principal: Principal) -> StreamHandle:
        """Register a stream; pair with `release`."""
        handle = StreamHandle(principal)
        self._by_key.setdefault(principal.key_id, set()).add(handle)
        return handle

    def release(self, handle: StreamHandle) -> None:
        members = self._by_key.get(handle.principal.key_id)
        if members is not None:
            members.discard(handle)
            if not members:
                del self._by_key[handle.principal.key_id]

    def __len__(self) -> int:
        return sum(len(members) for members in self._by_key.values())

    def changed(self, message: Message | None) -> None:
        """A key or a tenant's keys changed (None: anything may have): check soon. Safe from any thread (the
        announcer calls it from the worker thread of the request that revoked the key)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        wake: Callable[[], None] = self._wake.set
        with contextlib.suppress(RuntimeError):  # the loop is closing
            loop.call_soon_threadsafe(wake)

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.recheck_s)
            self._wake.clear()
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:
                # The database is away: the streams keep going until a check can be made.
                log.warning("open_streams_check_failed", exc_info=True)

    async def check(self) -> None:
        """End the streams whose key is revoked or expired (a JWT's: expired)."""
        if not self._by_key:
            return
        keys = [key_id for key_id in self._by_key if not key_id.startswith("jwt:")]

        def standing() -> set[str]:
            with self.db.sessions() as session:
                return repository.standing_key_ids(session, keys)

        alive = await anyio.to_thread.run_sync(standing) if keys else set()
        for key_id, members in list(self._by_key.items()):
            for handle in list(members):
                principal = handle.principal
                if principal.expired():
                    handle.end("this key has expired")
                elif not key_id.startswith("jwt:") and key_id not in alive:
                    handle.end("this key has been revoked")
