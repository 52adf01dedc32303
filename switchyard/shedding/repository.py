"""The one query of load shedding: waiting tasks per queue kind. Run by the leading worker, never per request."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, case, func, or_, select

from switchyard.core.models import Task, UTCDateTime
from switchyard.shedding.schemas import QueueLoad
from switchyard.workers import queues


def queue_load(conn: Connection, now: datetime) -> dict[str, QueueLoad]:
    """Tasks `queued` and due (a retry waiting for its due time is not waiting for a worker), grouped by the
    queue they go to (`queues.queue_for`), with the time the oldest has been ready. Reads the live rows only
    (`ix_tasks_live`). Every queue kind of tasks is present, with zeros when empty."""
    kind = case(
        (Task.type == "predict", queues.ML),
        (Task.batch_id.is_not(None), queues.BATCH),
        else_=queues.PROVIDER,
    ).label("queue")
    ready_at = func.min(func.coalesce(Task.due_at, Task.created_at), type_=UTCDateTime())
    stmt = (
        select(kind, func.count(), ready_at)
        .where(Task.status == "queued", or_(Task.due_at.is_(None), Task.due_at <= now))
        .group_by(kind)
    )
    found = {queues.PROVIDER: QueueLoad(0, 0.0), queues.ML: QueueLoad(0, 0.0), queues.BATCH: QueueLoad(0, 0.0)}
    for name, depth, oldest in conn.execute(stmt):
        age = max(0.0, (now - oldest).total_seconds()) if oldest is not None else 0.0
        found[name] = QueueLoad(int(depth), age)
    return found
