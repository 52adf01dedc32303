"""A claimed task's transitions while it runs: claim, a retry, handing it back (no deployment free, or the
worker shutting down), and the cancel of one handed back."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, insert, select

from switchyard.core.db import Database
from switchyard.core.ids import new_id
from switchyard.core.models import ATTEMPTS, Attempt, Task, utcnow
from switchyard.tasks.transitions.common import (
    CANCELED_ERROR,
    AttemptRecord,
    Claim,
    Dispatcher,
    TaskStatus,
    as_utc,
    claim_event,
    log,
    publish_after_commit,
    task_update,
    usage_of_attempts,
)
from switchyard.tasks.transitions.settle import settle_after_commit
from switchyard.tasks.views import task_view

_CLAIM_COLUMNS = (
    "id, tenant_id, type, model, input, options, metadata, webhook, attempt_count, run_id, step_id, batch_id, "
    "created_at, admission, guardrails, traceparent"
)

_PG_CLAIM = f"""
    WITH c AS (
        UPDATE tasks SET status = 'running', claim_id = %(claim_id)s, lease_expires_at = %(lease)s,
                         started_at = %(now)s, due_at = NULL
        WHERE id = ANY(%(ids)s) AND status = 'queued' AND NOT cancel_requested
              AND (due_at IS NULL OR due_at <= %(now)s)
        RETURNING {_CLAIM_COLUMNS}
    ), e AS (
        INSERT INTO events (tenant_id, type, task_id, run_id, step_id, data, created_at)
        SELECT tenant_id, 'task.started', id, run_id, step_id,
               jsonb_build_object('id', id, 'status', 'running', 'attempt', attempt_count + 1), %(now)s
        FROM c
    )
    SELECT {_CLAIM_COLUMNS} FROM c
"""


def claim(db: Database, task_ids: Sequence[str], lease_s: Callable[[dict[str, Any]], float]) -> list[Claim]:
    """queued -> running for those of `task_ids` still queued and due, with `task.started`; one statement for
    the whole batch on Postgres. `lease_s(options)` is how long a task's claim lasts (its timeout and grace)."""
    if not task_ids:
        return []
    now = utcnow()
    claim_id = new_id("clm")
    default_lease = lease_s({})
    params = {"ids": list(task_ids), "claim_id": claim_id, "lease": now + timedelta(seconds=default_lease), "now": now}
    if db.is_postgres:
        with db.autocommit() as conn:
            rows = list(conn.exec_driver_sql(_PG_CLAIM, params))
            claims = [_claim_of(row, claim_id, now) for row in rows]
            _lengthen_leases(conn, claims, now, default_lease, lease_s)
    else:
        with db.transaction() as tx:
            rows = list(
                tx.session.execute(
                    task_update()
                    .where(
                        Task.id.in_(task_ids),
                        Task.status == TaskStatus.QUEUED,
                        Task.cancel_requested.is_(False),
                        (Task.due_at.is_(None)) | (Task.due_at <= now),
                    )
                    .values(
                        status=TaskStatus.RUNNING,
                        claim_id=claim_id,
                        lease_expires_at=params["lease"],
                        started_at=now,
                        due_at=None,
                    )
                    .returning(
                        Task.id,
                        Task.tenant_id,
                        Task.type,
                        Task.model,
                        Task.input,
                        Task.options,
                        Task.metadata_.label("metadata"),
                        Task.webhook,
                        Task.attempt_count,
                        Task.run_id,
                        Task.step_id,
                        Task.batch_id,
                        Task.created_at,
                        Task.admission,
                        Task.guardrails,
                        Task.traceparent,
                    )
                )
            )
            claims = [_claim_of(row, claim_id, now) for row in rows]
            _lengthen_leases(tx.session.connection(), claims, now, default_lease, lease_s)
            for c in claims:
                claim_event(
                    tx.session,
                    c,
                    "task.started",
                    {"id": c.task_id, "status": TaskStatus.RUNNING.value, "attempt": c.attempt_count + 1},
                )
    return claims


def _claim_of(row: Any, claim_id: str, now: datetime) -> Claim:
    return Claim(
        task_id=row.id,
        claim_id=claim_id,
        tenant_id=row.tenant_id,
        type=row.type,
        model=row.model,
        input=row.input,
        options=row.options,
        attempt_count=row.attempt_count,
        run_id=row.run_id,
        step_id=row.step_id,
        batch_id=row.batch_id,
        created_at=as_utc(row.created_at),
        started_at=now,
        metadata=row.metadata,
        webhook=row.webhook,
        admission=row.admission,
        guardrails=row.guardrails,
        traceparent=row.traceparent,
    )


def _lengthen_leases(
    conn: Connection,
    claims: list[Claim],
    now: datetime,
    default_lease: float,
    lease_s: Callable[[dict[str, Any]], float],
) -> None:
    """A per-task timeout longer than the default needs a longer lease (rare: a second statement)."""
    for c in claims:
        lease = lease_s(c.options)
        if lease != default_lease:
            conn.execute(
                task_update()
                .where(Task.id == c.task_id, Task.claim_id == c.claim_id)
                .values(lease_expires_at=now + timedelta(seconds=lease))
            )


def record_retry(
    db: Database, c: Claim, attempt: AttemptRecord, wait_s: float, *, durable: bool, lease_s: float
) -> bool | None:
    """A failed attempt that will be retried: `task.retrying`. A short wait keeps the claim (the caller
    sleeps, lease lengthened); a durable one hands the task back with a due time. Returns whether a cancel
    was requested meanwhile, or None when the claim was lost."""
    now = utcnow()
    values: dict[str, Any] = {"attempt_count": attempt.n}
    if durable:
        values.update(
            status=TaskStatus.QUEUED,
            claim_id=None,
            lease_expires_at=None,
            due_at=now + timedelta(seconds=wait_s),
            published_at=None,
        )
    else:
        values["lease_expires_at"] = now + timedelta(seconds=wait_s + lease_s)
    with db.transaction() as tx:
        row = tx.session.execute(
            task_update()
            .where(Task.id == c.task_id, Task.claim_id == c.claim_id, Task.status == TaskStatus.RUNNING)
            .values(**values)
            .returning(Task.cancel_requested)
        ).first()
        if row is None:
            log.warning("lease_lost", task_id=c.task_id)
            tx.session.rollback()
            return None
        tx.session.execute(insert(ATTEMPTS).values(**attempt.values(c.task_id)))
        error = {"type": attempt.error_type, "message": attempt.error_message}
        claim_event(
            tx.session,
            c,
            "task.retrying",
            {"id": c.task_id, "attempt": attempt.n, "wait_s": round(wait_s, 3), "error": error},
        )
    c.attempt_count = attempt.n
    if durable:
        c.claim_id = ""
    return bool(row.cancel_requested)


def release(db: Database, c: Claim, wait_s: float, reason: str) -> None:
    """No deployment can take the call now: hand the task back with a due time, no attempt made."""
    now = utcnow()
    with db.transaction() as tx:
        row = tx.session.execute(
            task_update()
            .where(Task.id == c.task_id, Task.claim_id == c.claim_id, Task.status == TaskStatus.RUNNING)
            .values(
                status=TaskStatus.QUEUED,
                claim_id=None,
                lease_expires_at=None,
                due_at=now + timedelta(seconds=wait_s),
                published_at=None,
            )
            .returning(Task.id)
        ).first()
        if row is None:
            return
        claim_event(tx.session, c, "task.retrying", {"id": c.task_id, "wait_s": round(wait_s, 3), "reason": reason})


def hand_back(db: Database, dispatcher: Dispatcher, c: Claim) -> None:
    """A worker that is shutting down gives a claimed task back at once (no attempt recorded for a call it
    abandons), so another worker need not wait for the lease to lapse."""
    with db.transaction() as tx:
        row = tx.session.execute(
            task_update()
            .where(Task.id == c.task_id, Task.claim_id == c.claim_id, Task.status == TaskStatus.RUNNING)
            .values(status=TaskStatus.QUEUED, claim_id=None, lease_expires_at=None, published_at=utcnow())
            .returning(Task.id)
        ).first()
        if row is None:
            return
        claim_event(tx.session, c, "task.retrying", {"id": c.task_id, "reason": "worker shutting down"})
        publish_after_commit(tx, dispatcher, c.task_id, c.type, c.model, c.run_id, c.batch_id)


def cancel_released(db: Database, c: Claim) -> None:
    """A task handed back with a due time whose cancel was asked meanwhile: canceled, as a queued task is."""
    with db.transaction() as tx:
        task = tx.session.scalar(
            task_update()
            .where(Task.id == c.task_id, Task.status == TaskStatus.QUEUED)
            .values(status=TaskStatus.CANCELED, finished_at=utcnow(), due_at=None, error=CANCELED_ERROR)
            .returning(Task)
        )
        if task is not None:
            attempts = list(tx.session.scalars(select(Attempt).where(Attempt.task_id == c.task_id)))
            claim_event(tx.session, c, "task.canceled", task_view(task, attempts))
            cost = sum(a.cost_usd for a in attempts)
            settle_after_commit(
                tx, c.task_id, task.admission, cost, usage_of_attempts([_usage_row(a) for a in attempts])
            )


def _usage_row(a: Attempt) -> dict[str, Any]:
    return {
        "input_tokens": a.input_tokens,
        "output_tokens": a.output_tokens,
        "cached_input_tokens": a.cached_input_tokens,
        "cache_write_tokens": a.cache_write_tokens,
        "predictions": a.predictions,
        "compute_ms": a.compute_ms,
    }
