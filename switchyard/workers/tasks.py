"""Celery entry points: thin wrappers that hand ids to the services. Transactions are inside the services'
calls (one per state change), so nothing here holds a transaction across a provider call."""

from __future__ import annotations

from switchyard.tasks.sweeper import sweep
from switchyard.workers.celery_app import app
from switchyard.workers.queues import EXECUTE_TASK, SWEEP
from switchyard.workers.resources import get_resources


@app.task(name=EXECUTE_TASK, acks_late=True, reject_on_worker_lost=True)
def execute_task(task_id: str) -> None:
    """Run one inference task to its end (or until it is handed back with a due time)."""
    get_resources().executor.run(task_id)


@app.task(name=SWEEP, acks_late=True)
def sweep_task() -> None:
    """Re-publish lost or due tasks and reclaim expired leases."""
    res = get_resources()
    sweep(res.db, res.dispatcher, res.settings)
