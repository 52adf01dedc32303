"""Finishing a claimed task: its final state, last attempt, totals and terminal event, written once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select

from switchyard.core.db import Database
from switchyard.core.group_commit import GroupCommit
from switchyard.core.models import ATTEMPTS, Task, utcnow
from switchyard.observability import metrics
from switchyard.tasks.transitions.common import (
    CANCELED_ERROR,
    AttemptRecord,
    Claim,
    Finished,
    TaskStatus,
    claim_event,
    finished_view,
    guardrail_cost,
    jsonb,
    log,
    run_after,
    task_update,
    usage_of_attempts,
)
from switchyard.tasks.transitions.settle import settle_now

# The common finish, for a batch of tasks in one statement: each task (unless a cancel arrived meanwhile), its
# attempt and its terminal event. A task whose id does not come back was canceled
# meanwhile or is no longer ours: the general path tells which.
_PG_FINISH = """
    WITH v AS (
        SELECT * FROM jsonb_to_recordset(%(rows)s) AS x(
            id text, claim_id text, status text, result jsonb, error jsonb, usage jsonb, cost float8, n int,
            finished_at timestamptz, tenant_id text, run_id text, step_id text, view jsonb,
            a_model text, a_provider text, a_deployment text, a_provider_model text, a_status text,
            a_error_type text, a_error_message text, a_status_code int, a_latency_ms int, a_input_tokens int,
            a_output_tokens int, a_cached_input_tokens int, a_cache_write_tokens int, a_predictions int,
            a_compute_ms float8, a_cost_usd float8, a_started_at timestamptz, guardrails jsonb)
    ), d AS (
        UPDATE tasks t SET status = v.status, result = v.result, error = v.error, usage = v.usage,
                           cost_usd = v.cost, finished_at = v.finished_at, lease_expires_at = NULL, attempt_count = v.n,
                           guardrails = COALESCE(v.guardrails, t.guardrails)
        FROM v
        WHERE t.id = v.id AND t.claim_id = v.claim_id AND t.status = 'running' AND NOT t.cancel_requested
        RETURNING t.id
    ), a AS (
        INSERT INTO attempts (task_id, n, model, provider, deployment, provider_model, status, error_type,
                              error_message, status_code, latency_ms, input_tokens, output_tokens,
                              cached_input_tokens, cache_write_tokens, predictions, compute_ms, cost_usd,
                              started_at, finished_at)
        SELECT v.id, v.n, v.a_model, v.a_provider, v.a_deployment, v.a_provider_model, v.a_status, v.a_error_type,
               v.a_error_message, v.a_status_code, v.a_latency_ms, v.a_input_tokens, v.a_output_tokens,
               v.a_cached_input_tokens, v.a_cache_write_tokens, v.a_predictions, v.a_compute_ms, v.a_cost_usd,
               v.a_started_at, v.finished_at
        FROM v JOIN d ON d.id = v.id
    ), e AS (
        INSERT INTO events (tenant_id, type, task_id, run_id, step_id, data, created_at)
        SELECT v.tenant_id, 'task.' || v.status, v.id, v.run_id, v.step_id, v.view, v.finished_at
        FROM v JOIN d ON d.id = v.id
    )
    SELECT d.id FROM d
"""


@dataclass(frozen=True)
class FirstFinish:
    """The common finish: the task's first call settled it, so its totals are that call's."""

    claim: Claim
    attempt: AttemptRecord
    status: TaskStatus
    result: dict[str, Any] | None
    error: dict[str, Any] | None


# Writes common finishes together (`write_first_finishes` behind a group commit); None writes each alone.
FinishGroup = GroupCommit[str, FirstFinish, dict[str, Any]]


def finish(
    db: Database,
    c: Claim,
    attempt: AttemptRecord | None,
    *,
    status: TaskStatus,
    result: dict[str, Any] | None,
    error: dict[str, Any] | None,
    then: Finished,
    group: FinishGroup | None = None,
) -> dict[str, Any] | None:
    """Write the final state once, with the last attempt, the totals and the terminal event; the task as
    shown, or None when the claim was lost. A cancel that arrived while the last call was in flight wins."""
    view: dict[str, Any] | None = None
    if attempt is not None and c.attempt_count == 0 and db.is_postgres:
        first = FirstFinish(c, attempt, status, result, error)
        view = group.submit([first])[0] if group is not None else write_first_finishes(db, [first]).get(c.task_id)
    if view is None:
        view = _finish_general(db, c, attempt, status=status, result=result, error=error)
    if view is None:
        return None
    metrics.task_finished(c.type, c.model, view["status"], c.tenant_id)
    # Before the waiter hears of it: a caller's next request then sees the window settled.
    settle_now(c.task_id, c.admission, view["cost_usd"], view.get("usage"))
    # Only a synchronous request waits for a task's pushed view, and those make standalone tasks: the tasks of
    # runs and batch lines would only fill Redis, rate × the key's TTL of them (the leak soak's growth).
    if then.on_finished is not None and c.run_id is None and c.batch_id is None:
        run_after(then.on_finished, c.task_id, view)
    if c.run_id is not None and then.advancer is not None:
        run_after(then.advancer.publish_advance, c.run_id)
    if c.batch_id is not None and then.batch_advancer is not None:
        run_after(then.batch_advancer.publish_batch_advance, c.batch_id)
    return view


def write_first_finishes(db: Database, finishes: list[FirstFinish]) -> dict[str, dict[str, Any]]:
    """Common finishes in one statement (Postgres); the task as shown, by id, of each one written."""
    rows, views = [], {}
    for f in finishes:
        c, attempt = f.claim, f.attempt
        usage = attempt.usage.as_dict()
        values = attempt.values(c.task_id)
        cost = attempt.cost_usd + guardrail_cost(c)
        views[c.task_id] = finished_view(c, f.status, f.result, f.error, usage, cost, attempt.finished_at, [values])
        row = {f"a_{k}": v for k, v in values.items() if k not in ("task_id", "n", "finished_at")}
        row.update(
            id=c.task_id,
            claim_id=c.claim_id,
            status=f.status.value,
            result=f.result,
            error=f.error,
            usage=usage,
            cost=cost,
            n=attempt.n,
            finished_at=attempt.finished_at,
            tenant_id=c.tenant_id,
            run_id=c.run_id,
            step_id=c.step_id,
            view=views[c.task_id],
            guardrails=c.guardrails,
        )
        rows.append(row)
    with db.autocommit() as conn:
        written = [r.id for r in conn.exec_driver_sql(_PG_FINISH, {"rows": jsonb(rows)})]
    return {task_id: views[task_id] for task_id in written}


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
        cost = sum(r["cost_usd"] for r in rows) + guardrail_cost(c)
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
        if c.guardrails is not None:  # with what the answer's guardrails found
            values["guardrails"] = c.guardrails
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
