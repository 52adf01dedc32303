"""Several SDK clients per provider, each thread sticking to one.

A worker process runs hundreds of provider calls on threads. Behind one SDK client is one HTTP connection
pool, and its lock serialises every request and response of every thread; a few independent pools let
the threads proceed side by side."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

import httpx2


class Closeable(Protocol):
    def close(self) -> None: ...


C = TypeVar("C", bound=Closeable)


class ClientShards(Generic[C]):
    def __init__(self, make: Callable[[], C], count: int) -> None:
        self._clients = [make() for _ in range(count)]
        self._next = itertools.count()
        self._local = threading.local()

    def get(self) -> C:
        """This thread's client (assigned round-robin on first use)."""
        client: C | None = getattr(self._local, "client", None)
        if client is None:
            client = self._clients[next(self._next) % len(self._clients)]
            self._local.client = client
        return client

    def close(self) -> None:
        for client in self._clients:
            client.close()


def pool_limits(connections: int) -> httpx2.Limits:
    """An SDK client's pool of `connections`, sync (one shard's share) or async (one loop's)."""
    # Idle connections are kept up to the pool's size: a burst that opened them is likely followed by another,
    # and each reopened connection costs a TLS handshake. They are dropped after 4 s idle, before servers that
    # close idle connections after 5 s (uvicorn's default, vLLM's too) do: reusing a connection the server is
    # closing fails the request with a read error.
    return httpx2.Limits(max_connections=connections, max_keepalive_connections=connections, keepalive_expiry=4.0)
