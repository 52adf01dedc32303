"""Queues by resource: provider calls (I/O, high concurrency), ML (CPU), control work, webhooks, and the lines of
batches (provider calls too, on a queue of their own so that interactive calls never wait behind them)."""

from __future__ import annotations

PROVIDER = "provider"
ML = "ml"
CONTROL = "control"
WEBHOOKS = "webhooks"
BATCH = "batch"
ALL = (PROVIDER, ML, CONTROL, WEBHOOKS, BATCH)

EXECUTE_TASK = "switchyard.execute_task"
EXECUTE_TASKS = "switchyard.execute_tasks"
ADVANCE_RUN = "switchyard.advance_run"
DELIVER_WEBHOOK = "switchyard.deliver_webhook"
ADVANCE_BATCH = "switchyard.advance_batch"


def queue_for(task_type: str, batch: bool = False) -> str:
    """The queue of a task: ML predictions on the CPU workers' queue (a batch's too: they need the same
    processes), provider calls on `provider`, or on `batch` when the task is a line of a batch."""
    if task_type == "predict":
        return ML
    return BATCH if batch else PROVIDER
