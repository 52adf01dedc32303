"""Events on Redis: one pub/sub channel per tenant, carrying numbered events (from the relay, in `seq` order)
and streamed text chunks (`task.delta`, straight from the worker that streams them; never stored).

A message is JSON: `{"events": [event, ...]}` where each event is API.md's shape plus `prev`, the `seq` of
the tenant's previous event (a listener that finds `prev` ahead of what it has seen knows it missed a
message and reads the gap from the table), or `{"delta": event}`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
import redis
import structlog

log = structlog.get_logger(__name__)

EVENTS_PREFIX = "switchyard:events:"
# Told by a relay that starts leading or that could not publish: every feed should look at the table.
RESYNC = "switchyard:events-resync"
# An event whose data is larger than this travels without it; listeners read it from the table.
MAX_INLINE_BYTES = 256 * 1024


def tenant_channel(tenant_id: str) -> str:
    return EVENTS_PREFIX + tenant_id


def encode_events(events: Iterable[dict[str, Any]]) -> bytes:
    out = []
    for event in events:
        data = orjson.dumps(event["data"])
        if len(data) > MAX_INLINE_BYTES:
            event = {**event, "data": None, "data_omitted": True}
        out.append(event)
    return orjson.dumps({"events": out})


def delta_event(*, task_id: str, run_id: str | None, step_id: str | None, index: int, content: str) -> dict[str, Any]:
    """A `task.delta` event: the `index`-th chunk of a task's streamed text. It has no id: it is not stored."""
    return {
        "id": None,
        "type": "task.delta",
        "task_id": task_id,
        "run_id": run_id,
        "step_id": step_id,
        "batch_id": None,
        "data": {"id": task_id, "index": index, "content": content},
    }


def publish_delta(client: redis.Redis, tenant_id: str, event: dict[str, Any]) -> None:
    """Best effort: a chunk that cannot be published is lost to live listeners only (the result has it all)."""
    try:
        client.publish(tenant_channel(tenant_id), orjson.dumps({"delta": event}))
    except redis.RedisError:
        log.warning("delta_publish_failed", task_id=event.get("task_id"), exc_info=True)
