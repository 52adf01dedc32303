"""Queues by resource: provider calls (I/O, high concurrency), ML (CPU), control work, webhooks."""

from __future__ import annotations

PROVIDER = "provider"
ML = "ml"
CONTROL = "control"
WEBHOOKS = "webhooks"
ALL = (PROVIDER, ML, CONTROL, WEBHOOKS)

EXECUTE_TASK = "switchyard.execute_task"
EXECUTE_TASKS = "switchyard.execute_tasks"
ADVANCE_RUN = "switchyard.advance_run"
DELIVER_WEBHOOK = "switchyard.deliver_webhook"


def queue_for(task_type: str) -> str:
    return ML if task_type == "predict" else PROVIDER
