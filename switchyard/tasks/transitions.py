"""The one owner of a task's state. Every status change of a task is written here, each with its event in the
same transaction and its after-commit step (publish the id, signal a synchronous waiter, advance a run).

The hot transitions (create, claim, finish) are a single statement on Postgres: a data-modifying CTE that
changes the task and appends its event (and its attempt), run in autocommit, so one round trip and one
commit carry a whole transition. SQLite (embedded mode) runs the same changes as plain statements in one
transaction. Every write after a claim is conditional on still holding it (`claim_id`): a worker whose lease
was taken over cannot overwrite the outcome of the one that took it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

import structlog
from sqlalchemy import Connection, bindparam, insert, select, text, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session

from switchyard.core.db import Database, Tx
from switchyard.core.ids import new_id
from switchyard.core.models import ATTEMPTS, Attempt, Task, utcnow
from switchyard.events.log import append_event
from switchyard.providers.base import Usage
from switchyard.tasks.views import task_view

log = structlog.get_logger(__name__)


class TaskStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


TERMINAL = frozenset({TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELED})
CANCELED_ERROR: dict[str, Any] = {"type": "canceled", "message": "canceled by request"}
# A task that has taken down this many workers is failed rather than handed to another one.
MAX_RECLAIMS = 5


class Dispatcher(Protocol):
    """Hands a task id to the broker (after commit)."""

    def publish_task(self, task_id: str, task_type: str) -> None: ...


class RunAdvancer(Protocol):
    """Asks the control workers to advance a workflow run (after commit)."""

    def publish_advance(self, run_id: str) -> None: ...


class RunDispatcher(Dispatcher, RunAdvancer, Protocol):
    """Publishes both: what the workflow engine and the sweeper need."""


# Told (after the commit) when a task reaches its final state, with the task as the API shows it.
OnFinished = Callable[[str, dict[str, Any]], None]


@dataclass
class Claim:
    """What the worker holding a task needs to run it (and to show it without reading it back)."""

    task_id: str
    claim_id: str
    tenant_id: str
    type: str
    model: str
    input: dict[str, Any]
    options: dict[str, Any]
    attempt_count: int
    run_id: str | None = None
    step_id: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    metadata: dict[str, Any] | None = None
    webhook: dict[str, Any] | None = None


# --- create --------------------------------------------------------------------------------------------------


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
    )


def _queued_event(task: Task) -> dict[str, Any]:
    return {"id": task.id, "status": TaskStatus.QUEUED.value, "type": task.type, "model": task.model}


def enqueue(tx: Tx, dispatcher: Dispatcher, task: Task) -> None:
    """The `task.queued` event in this transaction, and the message once it has committed."""
    append_event(
        tx.session,
        tenant_id=task.tenant_id,
        type="task.queued",
        task_id=task.id,
        run_id=task.run_id,
        step_id=task.step_id,
        data=_queued_event(task),
    )
    task_id, task_type = task.id, task.type
    tx.after_commit(lambda: dispatcher.publish_task(task_id, task_type))


_PG_CREATE = text(
    """
    WITH t AS (
        INSERT INTO tasks (id, tenant_id, type, model, status, input, options, metadata, cost_usd, attempt_count,
                           reclaim_count, cancel_requested, created_at, published_at)
        VALUES (:id, :tenant_id, :type, :model, 'queued', :input, :options, :metadata, 0, 0, 0, false, :now, :now)
        RETURNING id
    )
    INSERT INTO events (tenant_id, type, task_id, data, created_at)
    SELECT :tenant_id, 'task.queued', t.id, :event, :now FROM t
    """
).bindparams(
    bindparam("input", type_=JSONB),
    bindparam("options", type_=JSONB),
    bindparam("metadata", type_=JSONB),
    bindparam("event", type_=JSONB),
)


def create_plain(db: Database, dispatcher: Dispatcher, task: Task) -> None:
    """Insert a task that has no idempotency key, webhook or run, with its `task.queued` event, and publish
    it: the API's common case, one statement and one commit on Postgres."""
    if not db.is_postgres:
        with db.transaction() as tx:
            tx.session.add(task)
            enqueue(tx, dispatcher, task)
        return
    with db.autocommit() as conn:
        conn.execute(
            _PG_CREATE,
            {
                "id": task.id,
                "tenant_id": task.tenant_id,
                "type": task.type,
                "model": task.model,
                "input": task.input,
                "options": task.options,
                "metadata": task.metadata_,
                "now": task.created_at,
                "event": _queued_event(task),
            },
        )
    db.events_committed()
    try:
        dispatcher.publish_task(task.id, task.type)
    except Exception:
        # The row is committed; the sweeper publishes what could not be published now.
        log.warning("publish_failed", task_id=task.id, exc_info=True)


# --- claim ---------------------------------------------------------------------------------------------------

_CLAIM_COLUMNS = (
    "id, tenant_id, type, model, input, options, metadata, webhook, attempt_count, run_id, step_id, created_at"
)

_PG_CLAIM = text(
    f"""
    WITH c AS (
        UPDATE tasks SET status = 'running', claim_id = :claim_id, lease_expires_at = :lease, started_at = :now,
                         due_at = NULL
        WHERE id IN :ids AND status = 'queued' AND NOT cancel_requested AND (due_at IS NULL OR due_at <= :now)
        RETURNING {_CLAIM_COLUMNS}
    ), e AS (
        INSERT INTO events (tenant_id, type, task_id, run_id, step_id, data, created_at)
        SELECT tenant_id, 'task.started', id, run_id, step_id,
               jsonb_build_object('id', id, 'status', 'running', 'attempt', attempt_count + 1), :now
        FROM c
    )
    SELECT {_CLAIM_COLUMNS} FROM c
    """
).bindparams(bindparam("ids", expanding=True))


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
            rows = list(conn.execute(_PG_CLAIM, params))
            claims = [_claim_of(row, claim_id, now) for row in rows]
            _lengthen_leases(conn, claims, now, default_lease, lease_s)
    else:
        with db.transaction() as tx:
            rows = list(
                tx.session.execute(
                    _task_update()
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
                        Task.created_at,
                    )
                )
            )
            claims = [_claim_of(row, claim_id, now) for row in rows]
            _lengthen_leases(tx.session.connection(), claims, now, default_lease, lease_s)
            for c in claims:
                _event(
                    tx.session,
                    c,
                    "task.started",
                    {"id": c.task_id, "status": TaskStatus.RUNNING.value, "attempt": c.attempt_count + 1},
                )
    if claims and db.is_postgres:
        db.events_committed()
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
        created_at=_aware(row.created_at),
        started_at=now,
        metadata=row.metadata,
        webhook=row.webhook,
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
                _task_update()
                .where(Task.id == c.task_id, Task.claim_id == c.claim_id)
                .values(lease_expires_at=now + timedelta(seconds=lease))
            )


# --- while running -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttemptRecord:
    """One provider call to record (the row of `attempts`)."""

    n: int
    model: str
    provider: str
    deployment: str
    provider_model: str
    error_type: str | None
    error_message: str | None
    status_code: int | None
    latency_ms: int
    usage: Usage
    cost_usd: float
    started_at: datetime
    finished_at: datetime

    @property
    def succeeded(self) -> bool:
        return self.error_type is None

    def values(self, task_id: str) -> dict[str, Any]:
        u = self.usage
        return {
            "task_id": task_id,
            "n": self.n,
            "model": self.model,
            "provider": self.provider,
            "deployment": self.deployment,
            "provider_model": self.provider_model,
            "status": TaskStatus.SUCCEEDED.value if self.succeeded else TaskStatus.FAILED.value,
            "error_type": self.error_type,
            "error_message": self.error_message,
            "status_code": self.status_code,
            "latency_ms": self.latency_ms,
            "input_tokens": u.input_tokens,
            "output_tokens": u.output_tokens,
            "cached_input_tokens": u.cached_input_tokens,
            "cache_write_tokens": u.cache_write_tokens,
            "predictions": u.predictions,
            "compute_ms": u.compute_ms,
            "cost_usd": self.cost_usd,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }


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
            _task_update()
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
        _event(
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
            _task_update()
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
        _event(tx.session, c, "task.retrying", {"id": c.task_id, "wait_s": round(wait_s, 3), "reason": reason})


def hand_back(db: Database, dispatcher: Dispatcher, c: Claim) -> None:
    """A worker that is shutting down gives a claimed task back at once (no attempt recorded for a call it
    abandons), so another worker need not wait for the lease to lapse."""
    with db.transaction() as tx:
        row = tx.session.execute(
            _task_update()
            .where(Task.id == c.task_id, Task.claim_id == c.claim_id, Task.status == TaskStatus.RUNNING)
            .values(status=TaskStatus.QUEUED, claim_id=None, lease_expires_at=None, published_at=utcnow())
            .returning(Task.id)
        ).first()
        if row is None:
            return
        _event(tx.session, c, "task.retrying", {"id": c.task_id, "reason": "worker shutting down"})
        task_id, task_type = c.task_id, c.type
        tx.after_commit(lambda: dispatcher.publish_task(task_id, task_type))


# --- finish --------------------------------------------------------------------------------------------------

_PG_FINISH = text(
    """
    WITH d AS (
        UPDATE tasks SET status = :status, result = :result, error = :error, usage = :usage, cost_usd = :cost,
                         finished_at = :now, lease_expires_at = NULL, attempt_count = :n
        WHERE id = :id AND claim_id = :claim_id AND status = 'running' AND NOT cancel_requested
        RETURNING id
    ), a AS (
        INSERT INTO attempts (task_id, n, model, provider, deployment, provider_model, status, error_type,
                              error_message, status_code, latency_ms, input_tokens, output_tokens,
                              cached_input_tokens, cache_write_tokens, predictions, compute_ms, cost_usd,
                              started_at, finished_at)
        SELECT d.id, :a_n, :a_model, :a_provider, :a_deployment, :a_provider_model, :a_status, :a_error_type,
               :a_error_message, :a_status_code, :a_latency_ms, :a_input_tokens, :a_output_tokens,
               :a_cached_input_tokens, :a_cache_write_tokens, :a_predictions, :a_compute_ms, :a_cost_usd,
               :a_started_at, :a_finished_at
        FROM d
    ), e AS (
        INSERT INTO events (tenant_id, type, task_id, run_id, step_id, data, created_at)
        SELECT :tenant_id, :event_type, d.id, :run_id, :step_id, :view, :now FROM d
    )
    SELECT count(*) FROM d
    """
).bindparams(
    bindparam("result", type_=JSONB),
    bindparam("error", type_=JSONB),
    bindparam("usage", type_=JSONB),
    bindparam("view", type_=JSONB),
)


@dataclass
class Finished:
    """After-commit steps of a finish: tell a synchronous waiter, advance the task's workflow run."""

    on_finished: OnFinished | None = None
    advancer: RunAdvancer | None = None


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
        _after(then.on_finished, c.task_id, view)
    if c.run_id is not None and then.advancer is not None:
        _after(then.advancer.publish_advance, c.run_id)
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
    view = _view(c, status, result, error, usage, attempt.cost_usd, now, [values])
    params = {f"a_{k}": v for k, v in values.items() if k != "task_id"}
    params.update(
        id=c.task_id,
        claim_id=c.claim_id,
        status=status.value,
        result=result,
        error=error,
        usage=usage,
        cost=attempt.cost_usd,
        now=now,
        n=attempt.n,
        tenant_id=c.tenant_id,
        event_type=f"task.{status.value}",
        run_id=c.run_id,
        step_id=c.step_id,
        view=view,
    )
    with db.autocommit() as conn:
        done = conn.execute(_PG_FINISH, params).scalar()
    if not done:
        return None  # canceled meanwhile, or the claim was lost: the general path tells which
    db.events_committed()
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
        usage = attempt.usage.as_dict() if status == TaskStatus.SUCCEEDED and attempt else _sum_usage(rows)
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
            _task_update()
            .where(held, Task.cancel_requested.is_(False))
            .values(status=status, **values)
            .returning(Task.id)
        ).first()
        if row is None:
            status, result, error = TaskStatus.CANCELED, None, CANCELED_ERROR
            values.update(result=None, error=CANCELED_ERROR)
            row = session.execute(_task_update().where(held).values(status=status, **values).returning(Task.id)).first()
        if row is None:
            log.warning("lease_lost", task_id=c.task_id)
            session.rollback()
            return None
        view = _view(c, status, result, error, usage, cost, now, rows)
        _event(session, c, f"task.{status.value}", view)
    return view


def cancel_released(db: Database, c: Claim) -> None:
    """A task handed back with a due time whose cancel was asked meanwhile: canceled, as a queued task is."""
    with db.transaction() as tx:
        task = tx.session.scalar(
            _task_update()
            .where(Task.id == c.task_id, Task.status == TaskStatus.QUEUED)
            .values(status=TaskStatus.CANCELED, finished_at=utcnow(), due_at=None, error=CANCELED_ERROR)
            .returning(Task)
        )
        if task is not None:
            attempts = list(tx.session.scalars(select(Attempt).where(Attempt.task_id == c.task_id)))
            _event(tx.session, c, "task.canceled", task_view(task, attempts))


# --- cancel (the API) ----------------------------------------------------------------------------------------


def cancel(tx: Tx, advancer: RunAdvancer | None, tenant_id: str, task_id: str) -> tuple[Task | None, bool]:
    """A queued task is canceled at once and never runs (its run, if it is a step's, is advanced after the
    commit); a running one is marked and stops at its next safe point. Returns (the task, canceled now)."""
    session = tx.session
    now = utcnow()
    canceled = session.execute(
        update(Task)
        .where(Task.id == task_id, Task.tenant_id == tenant_id, Task.status == TaskStatus.QUEUED)
        .values(status=TaskStatus.CANCELED, finished_at=now, error=CANCELED_ERROR, cancel_requested=True)
        .returning(Task.id)
    ).first()
    if canceled is None:
        session.execute(
            update(Task)
            .where(Task.id == task_id, Task.tenant_id == tenant_id, Task.status == TaskStatus.RUNNING)
            .values(cancel_requested=True)
        )
    session.expire_all()
    task = session.scalar(select(Task).where(Task.id == task_id, Task.tenant_id == tenant_id))
    if task is not None and canceled is not None:
        attempts = list(session.scalars(select(Attempt).where(Attempt.task_id == task_id)))
        append_event(
            session,
            tenant_id=tenant_id,
            type="task.canceled",
            task_id=task.id,
            run_id=task.run_id,
            step_id=task.step_id,
            data=task_view(task, attempts),
        )
        if task.run_id is not None and advancer is not None:
            run_id = task.run_id
            tx.after_commit(lambda: advancer.publish_advance(run_id))
    return task, canceled is not None


def cancel_queued_of_run(tx: Tx, run_id: str) -> None:
    """A run is stopping: its queued tasks are canceled (with their events), its running ones marked."""
    session = tx.session
    canceled = session.scalars(
        _task_update()
        .where(Task.run_id == run_id, Task.status == TaskStatus.QUEUED)
        .values(status=TaskStatus.CANCELED, finished_at=utcnow(), error=CANCELED_ERROR, cancel_requested=True)
        .returning(Task)
    ).all()
    ids = [t.id for t in canceled]
    attempts: dict[str, list[Attempt]] = {i: [] for i in ids}
    if ids:
        for a in session.scalars(select(Attempt).where(Attempt.task_id.in_(ids))):
            attempts[a.task_id].append(a)
    for task in canceled:
        append_event(
            session,
            tenant_id=task.tenant_id,
            type="task.canceled",
            task_id=task.id,
            run_id=task.run_id,
            step_id=task.step_id,
            data=task_view(task, attempts[task.id]),
        )
    session.execute(
        _task_update().where(Task.run_id == run_id, Task.status == TaskStatus.RUNNING).values(cancel_requested=True)
    )


# --- the sweeper's -------------------------------------------------------------------------------------------


def reclaim_expired(tx: Tx, dispatcher: Dispatcher, now: datetime, limit: int) -> tuple[list[str], list[str]]:
    """Running tasks whose lease lapsed (a killed or hung worker) go back to the queue, or fail once they have
    taken down MAX_RECLAIMS workers. Returns (reclaimed ids, abandoned ids)."""
    session = tx.session
    expired = list(
        session.execute(
            select(Task.id, Task.type, Task.tenant_id, Task.reclaim_count, Task.run_id, Task.step_id)
            .where(Task.status == TaskStatus.RUNNING, Task.lease_expires_at < now)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )
    reclaimed: list[str] = []
    abandoned: list[str] = []
    for row in expired:
        common = {"tenant_id": row.tenant_id, "task_id": row.id, "run_id": row.run_id, "step_id": row.step_id}
        if row.reclaim_count + 1 >= MAX_RECLAIMS:
            error = {"type": "worker_lost", "message": f"the task's worker was lost {MAX_RECLAIMS} times"}
            session.execute(
                _task_update()
                .where(Task.id == row.id, Task.status == TaskStatus.RUNNING)
                .values(
                    status=TaskStatus.FAILED,
                    error=error,
                    claim_id=None,
                    lease_expires_at=None,
                    finished_at=now,
                    reclaim_count=row.reclaim_count + 1,
                )
            )
            append_event(session, type="task.failed", data={"id": row.id, "status": "failed", "error": error}, **common)
            abandoned.append(row.id)
            continue
        session.execute(
            _task_update()
            .where(Task.id == row.id, Task.status == TaskStatus.RUNNING)
            .values(
                status=TaskStatus.QUEUED,
                claim_id=None,
                lease_expires_at=None,
                published_at=now,
                reclaim_count=row.reclaim_count + 1,
            )
        )
        append_event(session, type="task.retrying", data={"id": row.id, "reason": "worker lease expired"}, **common)
        reclaimed.append(row.id)
        _publish_after_commit(tx, dispatcher, row.id, row.type)
    return reclaimed, abandoned


def republish_due(tx: Tx, dispatcher: Dispatcher, now: datetime, stale: datetime, limit: int) -> list[str]:
    """Queued tasks that are due and whose message is older than `stale` (or was never sent) are published
    again: a lost message, a flushed or restarted broker, a due retry. The claim makes a duplicate harmless."""
    session = tx.session
    due = list(
        session.execute(
            select(Task.id, Task.type)
            .where(
                Task.status == TaskStatus.QUEUED,
                Task.cancel_requested.is_(False),
                (Task.due_at.is_(None)) | (Task.due_at <= now),
                (Task.published_at.is_(None)) | (Task.published_at < stale),
            )
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )
    if due:
        session.execute(_task_update().where(Task.id.in_([r.id for r in due])).values(published_at=now))
    for row in due:
        _publish_after_commit(tx, dispatcher, row.id, row.type)
    return [row.id for row in due]


# --- helpers -------------------------------------------------------------------------------------------------


def _publish_after_commit(tx: Tx, dispatcher: Dispatcher, task_id: str, task_type: str) -> None:
    tx.after_commit(lambda: dispatcher.publish_task(task_id, task_type))


def _after(fn: Callable[..., None], *args: Any) -> None:
    try:
        fn(*args)
    except Exception:
        # Committed already: a waiter falls back to reading the row, the sweeper advances a still run.
        log.warning("after_commit_failed", exc_info=True)


def _task_update() -> Any:
    """A conditional UPDATE of tasks. No Task objects are held that need keeping in step, so the ORM's
    session synchronisation is skipped."""
    return update(Task).execution_options(synchronize_session=False)


def _event(session: Session, c: Claim, type: str, data: dict[str, Any]) -> None:
    append_event(
        session, tenant_id=c.tenant_id, type=type, task_id=c.task_id, run_id=c.run_id, step_id=c.step_id, data=data
    )


def _sum_usage(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Usage summed over every attempt (failed attempts can still cost money)."""
    return Usage(
        input_tokens=sum(r["input_tokens"] for r in rows),
        output_tokens=sum(r["output_tokens"] for r in rows),
        cached_input_tokens=sum(r["cached_input_tokens"] for r in rows),
        cache_write_tokens=sum(r["cache_write_tokens"] for r in rows),
        predictions=sum(r["predictions"] for r in rows),
        compute_ms=sum(r["compute_ms"] for r in rows),
    ).as_dict()


def _view(
    c: Claim,
    status: TaskStatus,
    result: dict[str, Any] | None,
    error: dict[str, Any] | None,
    usage: dict[str, Any] | None,
    cost: float,
    finished_at: datetime,
    attempts: list[dict[str, Any]],
) -> dict[str, Any]:
    """The finished task as the API shows it, from what the worker holds (no read-back)."""
    task = Task(
        id=c.task_id,
        type=c.type,
        model=c.model,
        status=status.value,
        input=c.input,
        options=c.options,
        result=result,
        error=error,
        usage=usage,
        cost_usd=cost,
        created_at=c.created_at,
        started_at=c.started_at,
        finished_at=finished_at,
        metadata_=c.metadata or {},
        webhook=c.webhook,
    )
    return task_view(task, [Attempt(**a) for a in attempts])


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value
