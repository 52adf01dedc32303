"""The Redis client a process shares between its threads."""

from __future__ import annotations

import redis

# A worker runs up to 500 provider calls at once, each touching Redis a few times (deployment health,
# streamed chunks, completion signals): more threads than redis-py's default pool of 100 admits.
MAX_CONNECTIONS = 1000
# A thread that finds every connection busy waits this long for one rather than failing at once.
WAIT_S = 5.0


def shared_client(url: str) -> redis.Redis:
    """A client whose pool makes the excess wait for a connection instead of raising."""
    pool = redis.BlockingConnectionPool.from_url(url, max_connections=MAX_CONNECTIONS, timeout=WAIT_S)
    return redis.Redis(connection_pool=pool)
