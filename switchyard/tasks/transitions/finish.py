"""Finishing a claimed task: its final state, last attempt, totals and terminal event, written once."""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert, select

from switchyard.core.db import Database
from switchyard.core.models import ATTEMPTS, Task, utcnow
from switchyard.tasks.transitions.common import (
    CANCELED_ERROR,
    AttemptRecord,
    Claim,
    Finished,
    TaskStatus,
    claim_event,
    finished_view,
    jsonb,
    log,
    run_after,
    task_update,
    usage_of_attempts,
)

# The common finish in one statement: the task (unless a cancel arrived meanwhile), its attempt and its terminal
# event, and the relay's wake-up; no row back means canceled or no longer ours.
_PG_FINISH = """
    WITH d AS (
        UPDATE tasks SET status = %(status)s, result = %(result)s, error = %(error)s, usage = %(usage)s,
                         cost_usd = %(cost)s, finished_at = %(now)s, lease_expires_at = NULL, attempt_count = %(n)s
        WHERE id = %(id)s AND claim_id = %(claim_id)s AND status = 'running' AND NOT cancel_requested
        RETURNING id
    ), a AS (
        INSERT INTO attempts (task_id, n, model, provider, deployment, provider_model, status, error_type,
                              error_message, status_code, latency_ms, input_tokens, output_tokens,
                              cached_input_tokens, cache_write_tokens, predictions, compute_ms, cost_usd,
                              started_at, finished_at)
        SELECT d.id, %(a_n)s, %(a_model)s, %(a_provider)s, %(a_deployment)s, %(a_provider_model)s, %(a_status)s,
               %(a_error_type)s, %(a_error_message)s, %(a_status_code)s, %(a_latency_ms)s, %(a_input_tokens)s,
               %(a_output_tokens)s, %(a_cached_input_tokens)s, %(a_cache_write_tokens)s, %(a_predictions)s,
               %(a_compute_ms)s, %(a_cost_usd)s, %(a_started_at)s, %(a_finished_at)s
        FROM d
    ), e AS (
        INSERT INTO events (tenant_id, type, task_id, run_id, step_id, data, created_at)
        SELECT %(tenant_id)s, %(event_type)s, d.id, %(run_id)s, %(step_id)s, %(view)s, %(now)s FROM d
    )
    SELECT pg_notify('switchyard_events', '') FROM d
"""


def finish(
    db: Database,
    c: Claim,
    attempt: AttemptRecord | None,
    *,
    status: TaskStatus,
    result: dict[str, Any] | None,
    error: dict[str, Any] | None,
    then: Finished,
) -> dict[str, Any] | None:
    """Write the final state once, with the last attempt, the totals and the terminal event; the task as
    shown, or None when the claim was lost. A cancel that arrived while the last call was in flight wins."""
    view: dict[str, Any] | None = None
    if attempt is not None and c.attempt_count == 0 and db.is_postgres:
        view = _finish_first(db, c, attempt, status=status, result=result, error=error)
    if view is None:
        view = _finish_general(db, c, attempt, status=status, result=result, error=error)
    if view is None:
        return None
    if then.on_finished is not None:
        run_after(then.on_finished, c.task_id, view)
    if c.run_id is not None and then.advancer is not None:
        run_after(then.advancer.publish_advance, c.run_id)
    return view


def _finish_first(
    db: Database,
    c: Claim,
    attempt: AttemptRecord,
    *,
    status: TaskStatus,
    result: dict[str, Any] | None,
    error: dict[str, Any] | None,
) -> dict[str, Any] | None:
    """The common case, one statement: the first call settled it, so the totals are that call's."""
    now = utcnow()
    usage = attempt.usage.as_dict()
    values = attempt.values(c.task_id)
    view = finished_view(c, status, result, error, usage, attempt.cost_usd, now, [values])
    params = {f"a_{k}": v for k, v in values.items() if k != "task_id"}
    params.update(
        id=c.task_id,
        claim_id=c.claim_id,
        status=status.value,
        result=jsonb(result),
        error=jsonb(error),
        usage=jsonb(usage),
        cost=attempt.cost_usd,
        now=now,
        n=attempt.n,
        tenant_id=c.tenant_id,
        event_type=f"task.{status.value}",
        run_id=c.run_id,
        step_id=c.step_id,
        view=jsonb(view),
    )
    with db.autocommit() as conn:
        done = conn.exec_driver_sql(_PG_FINISH, params).first()
    if done is None:
        return None  # canceled meanwhile, or the claim was lost: the general path tells which
    return view


def _finish_general(
    db: Database,
    c: Claim,
    attempt: AttemptRecord | None,
    *,
    status: TaskStatus,
    result: dict[str, Any] | None,
    error: dict[str, Any] | None,
) -> dict[str, Any] | None:
    with db.transaction() as tx:
        session = tx.session
        if attempt is not None:
            session.execute(insert(ATTEMPTS).values(**attempt.values(c.task_id)))
        rows = [
            dict(r._mapping)
            for r in session.execute(select(ATTEMPTS).where(ATTEMPTS.c.task_id == c.task_id).order_by(ATTEMPTS.c.n))
        ]
        # A success shows the usage of the call that answered; a failure, what every attempt used.
        usage = attempt.usage.as_dict() if status == TaskStatus.SUCCEEDED and attempt else usage_of_attempts(rows)
        cost = sum(r["cost_usd"] for r in rows)
        now = utcnow()
        held = (Task.id == c.task_id) & (Task.claim_id == c.claim_id) & (Task.status == TaskStatus.RUNNING)
        values = {
            "result": result,
            "error": error,
            "usage": usage,
            "cost_usd": cost,
            "finished_at": now,
            "lease_expires_at": None,
            "attempt_count": attempt.n if attempt else c.attempt_count,
        }
        row = session.execute(
            task_update()
            .where(held, Task.cancel_requested.is_(False))
            .values(status=status, **values)
            .returning(Task.id)
        ).first()
        if row is None:
            status, result, error = TaskStatus.CANCELED, None, CANCELED_ERROR
            values.update(result=None, error=CANCELED_ERROR)
            row = session.execute(task_update().where(held).values(status=status, **values).returning(Task.id)).first()
        if row is None:
            log.warning("lease_lost", task_id=c.task_id)
            session.rollback()
            return None
        view = finished_view(c, status, result, error, usage, cost, now, rows)
        claim_event(session, c, f"task.{status.value}", view)
    return view
