"""Telling every API process that cached principals are out of date: a key changed or was revoked, or a
tenant's limits or budget changed.

One Redis pub/sub channel carries small JSON messages, `{"key_id": ...}` or `{"tenant_id": ...}` (never a key
or its hash). The process that made the change applies it to its own cache at once, then publishes; every API
process subscribes (`gateway_api.key_events`). Published after the commit, so a process that reads the key
again on the message finds the change."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import redis
import structlog

log = structlog.get_logger(__name__)

CHANNEL = "switchyard:principals"

Message = dict[str, str]


def key_changed(key_id: str) -> Message:
    return {"key_id": key_id}


def tenant_changed(tenant_id: str) -> Message:
    return {"tenant_id": tenant_id}


def decode(raw: Any) -> Message | None:
    """A message of the channel, or None for one this version does not understand."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if isinstance(value, dict) and len(value) == 1 and next(iter(value)) in ("key_id", "tenant_id"):
        return {str(k): str(v) for k, v in value.items()}
    return None


class Announcer:
    """Sends the messages: to this process's own cache (`local`) and to every process through Redis (none in
    embedded mode, where caches only keep principals for a short time)."""

    def __init__(self, client: redis.Redis | None, local: Callable[[Message], None] | None = None) -> None:
        self.client = client
        self.local = local

    def announce(self, message: Message) -> None:
        if self.local is not None:
            self.local(message)
        if self.client is None:
            return
        try:
            self.client.publish(CHANNEL, orjson.dumps(message))
        except redis.RedisError:
            # Processes subscribed to a Redis that is away keep principals only briefly (and drop them all
            # when their subscription is back), so a lost message ages out within seconds.
            log.warning("principal_invalidation_not_published", message=message, exc_info=True)
