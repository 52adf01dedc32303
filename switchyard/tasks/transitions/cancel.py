"""Canceling tasks: by the API (a queued task at once, a running one at its next safe point) and when their
workflow run stops."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, select, update

from switchyard.core.db import Tx
from switchyard.core.models import Attempt, Task, utcnow
from switchyard.events.log import append_event
from switchyard.tasks.transitions.common import CANCELED_ERROR, RunAdvancer, TaskStatus, task_update
from switchyard.tasks.transitions.settle import settle_after_commit
from switchyard.tasks.views import task_view


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
        settle_after_commit(tx, task.id, task.admission, sum(a.cost_usd for a in attempts), task.usage)
        if task.run_id is not None and advancer is not None:
            run_id = task.run_id
            tx.after_commit(lambda: advancer.publish_advance(run_id))
    return task, canceled is not None


def cancel_queued_of_run(tx: Tx, run_id: str) -> None:
    """A run is stopping: its queued tasks are canceled (with their events), its running ones marked."""
    _cancel_queued(tx, Task.run_id == run_id, CANCELED_ERROR, stop_running=True)


def cancel_queued_of_batch(tx: Tx, batch_id: str, error: dict[str, Any], *, stop_running: bool) -> int:
    """A batch is canceled or has expired: its queued line tasks are canceled (with their events, `error`
    saying why); running ones are marked to stop at their next safe point when `stop_running` (a cancel), or
    left to finish (an expiry). Returns how many were canceled."""
    return _cancel_queued(tx, Task.batch_id == batch_id, error, stop_running=stop_running)


def _cancel_queued(tx: Tx, of: ColumnElement[bool], error: dict[str, Any], *, stop_running: bool) -> int:
    session = tx.session
    canceled = session.scalars(
        task_update()
        .where(of, Task.status == TaskStatus.QUEUED)
        .values(status=TaskStatus.CANCELED, finished_at=utcnow(), error=error, cancel_requested=True)
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
        settle_after_commit(tx, task.id, task.admission, sum(a.cost_usd for a in attempts[task.id]), task.usage)
    if stop_running:
        session.execute(task_update().where(of, Task.status == TaskStatus.RUNNING).values(cancel_requested=True))
    return len(canceled)
