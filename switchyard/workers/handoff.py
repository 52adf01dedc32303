"""The hand-off: the tasks of callers who wait for them (the synchronous endpoints) go to a worker through a
Redis list per queue, not a Celery message.

A Celery message costs the worker about a millisecond and a half of CPU (the consumer, the pool hand-over, the
tracer) whatever it carries, and the synchronous calls come one task a message or close to it. The task's row is
the truth either way: the message only says "look at this id". So the API pushes the id onto
`switchyard:handoff:<queue>` (RPUSH), and a few threads in each worker that consumes the queue pop ids from it
(BLPOP, then LPOP of whatever else is waiting) and claim them in the runtime as a Celery message would.

Nothing is lost that a lost Celery message would not lose too: an id popped by a worker that dies before its
claim commits leaves its task queued, and the sweeper publishes it again (as it does a task whose message a
flushed broker dropped). A worker announces that it takes hand-offs for a queue (a key with a short expiry it
renews); with none announced, the API publishes the Celery message instead, so a deployment whose workers do not
take hand-offs (embedded mode, `SWITCHYARD_HANDOFF=false`, an older worker) loses nothing but the shortcut.
Celery messages stay for everything else: tasks of `POST /v1/tasks`, workflow steps, batch lines, re-publishes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis
import structlog

from switchyard.observability import metrics

log = structlog.get_logger(__name__)

# Queues whose tasks may be handed off (provider calls and ML predictions: the synchronous endpoints' queues).
_PREFIX = "switchyard:handoff:"
# A worker renews its announcement this often; it lapses after ALIVE_TTL_S without one.
_ANNOUNCE_S = 2.0
ALIVE_TTL_S = 6
# Ids popped at once (one claim statement for them all).
_POP_MAX = 50
# With no free slot, the threads look again after this long.
_FULL_WAIT_S = 0.005
# How long a pop waits before the thread looks whether it should stop (and renews the announcement).
_BLOCK_S = 1
# The API rechecks whether some worker takes a queue's hand-offs this often.
_PRESENCE_CACHE_S = 1.0


def list_key(queue: str) -> str:
    """The Redis list of a queue's handed-off task ids."""
    return _PREFIX + queue


def alive_key(queue: str) -> str:
    """Present while some worker takes the queue's hand-offs."""
    return _PREFIX + queue + ":alive"


class HandoffOut:
    """The API's side: push ids, when some worker takes them. Called from one thread (the publishing one)."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._seen: dict[str, tuple[float, bool]] = {}

    def taken(self, queue: str) -> bool:
        """Whether a worker has announced (recently) that it takes `queue`'s hand-offs."""
        now = time.monotonic()
        cached = self._seen.get(queue)
        if cached is not None and now - cached[0] < _PRESENCE_CACHE_S:
            return cached[1]
        alive = bool(self._redis.exists(alive_key(queue)))
        self._seen[queue] = (now, alive)
        return alive

    def push(self, queue: str, task_ids: Sequence[str]) -> None:
        """Hand the ids over (one command); raises when Redis does not take them."""
        self._redis.rpush(list_key(queue), *task_ids)


class HandoffIntake:
    """A worker's side: `threads` threads per queue pop ids and give them to `submit` (the runtime's, which
    returns once they are claimed). Several threads, so that one claim in progress never holds up the next pops:
    the claims of concurrent threads are written together (the runtime's group commit)."""

    def __init__(
        self,
        redis_url: str,
        queues: Sequence[str],
        submit: Callable[[list[str]], None],
        room: Callable[[], int],
        threads: int = 3,
    ) -> None:
        self._redis_url = redis_url
        self._queues = list(queues)
        self._submit = submit
        self._room = room
        self._threads_per_queue = threads
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Announce the queues and start taking their hand-offs."""
        for queue in self._queues:
            for n in range(self._threads_per_queue):
                thread = threading.Thread(
                    target=self._run, args=(queue, n == 0), name=f"sy-handoff-{queue}-{n}", daemon=True
                )
                thread.start()
                self._threads.append(thread)
        log.info("handoff_started", queues=self._queues)

    def stop(self, timeout: float = 3.0) -> None:
        """Stop announcing and popping (a pop in progress ends within its block time)."""
        self._stop.set()
        client = redis.Redis.from_url(self._redis_url, socket_timeout=2)
        try:
            for queue in self._queues:
                client.delete(alive_key(queue))
        except redis.RedisError:
            pass  # the announcement lapses by itself
        finally:
            client.close()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _run(self, queue: str, announces: bool) -> None:
        client = redis.Redis.from_url(self._redis_url, socket_timeout=_BLOCK_S + 5, socket_connect_timeout=5)
        key = list_key(queue)
        announced = 0.0
        try:
            while not self._stop.is_set():
                try:
                    if announces and time.monotonic() - announced > _ANNOUNCE_S:
                        client.set(alive_key(queue), "1", ex=ALIVE_TTL_S)
                        announced = time.monotonic()
                    room = self._room()
                    if room <= 0:
                        # Every slot busy: what waits is left to workers with room (or to this one, later).
                        self._stop.wait(_FULL_WAIT_S)
                        continue
                    popped = client.blpop([key], timeout=_BLOCK_S)
                    if popped is None:
                        continue
                    more: Any = client.lpop(key, min(_POP_MAX, room) - 1) if room > 1 else None
                except redis.RedisError:
                    log.warning("handoff_pop_failed", queue=queue, exc_info=True)
                    self._stop.wait(1.0)
                    continue
                ids = [_text(popped[1]), *(_text(raw) for raw in more or ())]
                if self._stop.is_set():
                    self._give_back(client, key, ids)
                    return
                metrics.handed_off(queue, len(ids))
                try:
                    self._submit(ids)
                except Exception:
                    # Not claimed (the runtime is closing, the database failed): queued still, and published
                    # again by the sweeper if no one else takes them first.
                    log.warning("handoff_submit_failed", queue=queue, tasks=len(ids), exc_info=True)
                    self._give_back(client, key, ids)
                    self._stop.wait(1.0)
        finally:
            client.close()

    @staticmethod
    def _give_back(client: redis.Redis, key: str, ids: list[str]) -> None:
        try:
            client.lpush(key, *reversed(ids))
        except redis.RedisError:
            pass  # the sweeper publishes them


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
