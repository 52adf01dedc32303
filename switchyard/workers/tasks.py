"""Celery entry points: thin wrappers that hand ids to the services. Transactions are inside the services'
calls (one per state change), so nothing here holds a transaction across a provider call."""

from __future__ import annotations

from celery import Task

from switchyard.workers.batch_advance import advance_with_retry as advance_batch_with_retry
from switchyard.workers.celery_app import app
from switchyard.workers.queues import (
    ADVANCE_BATCH,
    ADVANCE_RUN,
    BATCH,
    DELIVER_WEBHOOK,
    EXECUTE_TASK,
    EXECUTE_TASKS,
)
from switchyard.workers.resources import get_resources
from switchyard.workflows.runner import advance_with_retry


def _from_batch_queue(task: Task) -> bool:
    """Batch lines arrive on their own queue; they run in the runtime's batch lane."""
    return (task.request.delivery_info or {}).get("routing_key") == BATCH


@app.task(name=EXECUTE_TASK, bind=True, acks_late=True, reject_on_worker_lost=True)
def execute_task(self: Task, task_id: str) -> None:
    """Take one inference task into this worker's runtime. Returns once the task is claimed, so the message is
    acknowledged when the row (with its lease) has become the truth; the call goes on on the event loop."""
    get_resources().runtime.submit([task_id], batch=_from_batch_queue(self))


@app.task(name=EXECUTE_TASKS, bind=True, acks_late=True, reject_on_worker_lost=True)
def execute_tasks(self: Task, task_ids: list[str]) -> None:
    """Several tasks of one message (published together under load): claimed in one statement."""
    get_resources().runtime.submit(task_ids, batch=_from_batch_queue(self))


@app.task(name=ADVANCE_RUN, acks_late=True, reject_on_worker_lost=True)
def advance_run(run_id: str) -> None:
    """Settle a workflow run's finished steps and start the ones that became ready."""
    res = get_resources()
    advance_with_retry(res.db, res.engine, run_id)


@app.task(name=DELIVER_WEBHOOK, acks_late=True, reject_on_worker_lost=True)
def deliver_webhook(delivery_id: str) -> None:
    """One attempt of a webhook delivery (the retries are due times in the database)."""
    get_resources().deliverer.deliver(delivery_id)


@app.task(name=ADVANCE_BATCH, acks_late=True, reject_on_worker_lost=True)
def advance_batch(batch_id: str) -> None:
    """Validate a new batch, count its lines, release more of them, end it when every line has ended."""
    res = get_resources()
    advance_batch_with_retry(res.db, res.batches(), batch_id)
