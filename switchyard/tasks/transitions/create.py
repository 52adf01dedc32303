"""Creating a task: the row, its `task.queued` event, and its message once committed."""

from __future__ import annotations

from typing import Any

import psycopg
import structlog
from psycopg_pool import AsyncConnectionPool
from sqlalchemy import Table, insert

from switchyard.core.db import Database, Tx
from switchyard.core.db_errors import make_terse
from switchyard.core.ids import new_id
from switchyard.core.models import EVENTS, Task, utcnow
from switchyard.events.log import append_event
from switchyard.observability import tracing
from switchyard.tasks.transitions.common import BatchDispatcher, Dispatcher, TaskRef, TaskStatus, jsonb

log = structlog.get_logger(__name__)


def new_task(
    *,
    task_id: str | None = None,
    tenant_id: str,
    type: str,
    model: str,
    input: dict[str, Any],
    options: dict[str, Any],
    metadata: dict[str, Any] | None = None,
    webhook: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
    run_id: str | None = None,
    step_id: str | None = None,
    item_index: int | None = None,
    step_generation: int | None = None,
    batch_id: str | None = None,
    batch_line: int | None = None,
    key_id: str | None = None,
    admission: dict[str, Any] | None = None,
    guardrails: dict[str, Any] | None = None,
    traceparent: str | None = None,
) -> Task:
    """A queued task row, not yet added to a session (inputs already checked by the caller)."""
    now = utcnow()
    return Task(
        id=task_id or new_id("task"),
        tenant_id=tenant_id,
        type=type,
        model=model,
        status=TaskStatus.QUEUED,
        input=input,
        options=options,
        metadata_=metadata or {},
        webhook=webhook,
        cost_usd=0.0,
        attempt_count=0,
        reclaim_count=0,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        cancel_requested=False,
        created_at=now,
        published_at=now,
        run_id=run_id,
        step_id=step_id,
        item_index=item_index,
        step_generation=step_generation,
        batch_id=batch_id,
        batch_line=batch_line,
        key_id=key_id,
        admission=admission,
        guardrails=guardrails,
        # The span creating it (the API's request, a run's advance) is its execution's parent.
        traceparent=traceparent or tracing.current_traceparent(),
    )


def queued_event(task: Task) -> dict[str, Any]:
    event: dict[str, Any] = {"id": task.id, "status": TaskStatus.QUEUED.value, "type": task.type, "model": task.model}
    if task.guardrails is not None:
        event["guardrails"] = task.guardrails  # what the request's guardrails found: types and counts
    return event


def enqueue(tx: Tx, dispatcher: Dispatcher, task: Task) -> None:
    """The `task.queued` event in this transaction, and the message once it has committed."""
    append_event(
        tx.session,
        tenant_id=task.tenant_id,
        type="task.queued",
        task_id=task.id,
        run_id=task.run_id,
        step_id=task.step_id,
        data=queued_event(task),
    )
    args = (task.id, task.type, task.model, task.run_id, task.batch_id)
    tx.after_commit(lambda: dispatcher.publish_task(*args))


# One statement, one commit: the task and its event.
_PG_CREATE = """
    WITH t AS (
        INSERT INTO tasks (id, tenant_id, type, model, status, input, options, metadata, cost_usd, attempt_count,
                           reclaim_count, cancel_requested, created_at, published_at, key_id, admission, guardrails,
                           traceparent)
        VALUES (%(id)s, %(tenant_id)s, %(type)s, %(model)s, 'queued', %(input)s, %(options)s, %(metadata)s,
                0, 0, 0, false, %(now)s, %(now)s, %(key_id)s, %(admission)s, %(guardrails)s,
                %(traceparent)s)
        RETURNING id
    )
    INSERT INTO events (tenant_id, type, task_id, data, created_at)
    SELECT %(tenant_id)s, 'task.queued', t.id, %(event)s, %(now)s FROM t
"""


def _create_params(task: Task) -> dict[str, Any]:
    return {
        "id": task.id,
        "tenant_id": task.tenant_id,
        "type": task.type,
        "model": task.model,
        "input": jsonb(task.input),
        "options": jsonb(task.options),
        "metadata": jsonb(task.metadata_),
        "now": task.created_at,
        "event": jsonb(queued_event(task)),
        "key_id": task.key_id,
        "admission": None if task.admission is None else jsonb(task.admission),
        "guardrails": None if task.guardrails is None else jsonb(task.guardrails),
        "traceparent": task.traceparent,
    }


def create_plain(db: Database, dispatcher: Dispatcher, task: Task) -> None:
    """Insert a task that has no idempotency key, webhook or run, with its `task.queued` event, and publish
    it: the API's common case, one statement and one commit on Postgres."""
    if not db.is_postgres:
        with db.transaction() as tx:
            tx.session.add(task)
            enqueue(tx, dispatcher, task)
        return
    with db.autocommit() as conn:
        conn.exec_driver_sql(_PG_CREATE, _create_params(task))
    _publish(dispatcher, task)


async def acreate_plain(
    pool: AsyncConnectionPool, dispatcher: Dispatcher, task: Task, *, waiting: bool = False
) -> None:
    """`create_plain` on Postgres from an event loop: no thread, no ORM. `dispatcher` must not block (the
    API's publishes from a thread of its own). `waiting`: the caller waits for the task (it is handed off)."""
    try:
        async with pool.connection() as conn:
            await conn.execute(_PG_CREATE, _create_params(task))
    except psycopg.Error as exc:
        make_terse(exc)  # no SQLAlchemy engine here to do it: its message may quote the input
        raise
    _publish(dispatcher, task, waiting)


def _publish(dispatcher: Dispatcher, task: Task, waiting: bool = False) -> None:
    try:
        if waiting:
            dispatcher.hand_off(task.id, task.type, task.model)
        else:
            dispatcher.publish_task(task.id, task.type, task.model)
    except Exception:
        # The row is committed; the sweeper publishes what could not be published now.
        log.warning("publish_failed", task_id=task.id, exc_info=True)


def create_batch_lines(tx: Tx, dispatcher: BatchDispatcher, tasks: list[Task]) -> None:
    """Insert the tasks of a batch's released lines, with their `task.queued` events, in two statements
    however many there are, and publish their ids (many a message) once the transaction commits. A line
    refused at admission (a budget spent) comes as a task already failed: stored with `task.failed`, never
    published."""
    if not tasks:
        return
    table: Table = Task.__table__  # type: ignore[assignment]
    rows = [{c.key: getattr(task, attr) for attr, c in _TASK_COLUMNS.items()} for task in tasks]
    tx.session.execute(insert(table), rows)
    tx.session.execute(
        insert(EVENTS),
        [
            {
                "tenant_id": t.tenant_id,
                "type": f"task.{t.status}",
                "task_id": t.id,
                "batch_id": t.batch_id,
                "data": queued_event(t)
                if t.status == TaskStatus.QUEUED
                else {"id": t.id, "status": t.status, "error": t.error},
                "created_at": t.created_at,
            }
            for t in tasks
        ],
    )
    by_type: dict[str, list[TaskRef]] = {}
    for t in tasks:
        if t.status == TaskStatus.QUEUED:
            by_type.setdefault(t.type, []).append((t.id, t.type, t.model, None, t.batch_id))
    tx.after_commit(lambda: dispatcher.publish_batch_lines(by_type))


# The columns of a batch line's task row, by ORM attribute name.
_TASK_COLUMNS = {
    attr: Task.__mapper__.columns[attr]
    for attr in (
        "id",
        "tenant_id",
        "type",
        "model",
        "status",
        "input",
        "options",
        "metadata_",
        "cost_usd",
        "attempt_count",
        "reclaim_count",
        "cancel_requested",
        "created_at",
        "published_at",
        "batch_id",
        "batch_line",
        "key_id",
        "admission",
        "guardrails",
        "traceparent",
        "error",
        "finished_at",
    )
}
