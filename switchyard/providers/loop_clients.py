"""One async client per event loop, made on first use inside it.

An async HTTP client's connections belong to the loop that opened them: used from another loop they fail.
So an adapter cannot build its async client up front (the worker's start-up hook runs before its loop
does); it makes one lazily for each loop that calls it. One per loop is enough: coroutines on one loop
share a pool without the lock contention that `shards.py` works around for threads."""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

A = TypeVar("A")


class LoopClients(Generic[A]):
    """`get()` returns the running loop's client; `aclose()` closes it."""

    def __init__(self, make: Callable[[], A], close: Callable[[A], Awaitable[None]]) -> None:
        self._make = make
        self._close = close
        # Weak keys: a loop that ends without `aclose()` does not stay pinned in memory by this map.
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, A] = weakref.WeakKeyDictionary()
        # Loops on different threads may ask at once; within one loop, get() does not yield, so cannot race.
        self._lock = threading.Lock()

    def get(self) -> A:
        """The running loop's client, made now if this loop has none. Raises RuntimeError outside a loop."""
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            with self._lock:
                client = self._clients.get(loop)
                if client is None:
                    client = self._make()
                    self._clients[loop] = client
        return client

    async def aclose(self) -> None:
        """Close the running loop's client, if it made one; the next `get()` on this loop makes a new one."""
        with self._lock:
            client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await self._close(client)
