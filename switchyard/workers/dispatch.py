"""Publishing task ids to the broker. Messages carry ids only; the row is the truth."""

from __future__ import annotations

from celery import Celery

from switchyard.workers.queues import ADVANCE_RUN, CONTROL, DELIVER_WEBHOOK, EXECUTE_TASK, WEBHOOKS, queue_for


class CeleryDispatcher:
    """Sends `execute_task(id)` to the queue of the task's resource."""

    def __init__(self, app: Celery) -> None:
        self._app = app

    def publish_task(self, task_id: str, task_type: str) -> None:
        self._app.send_task(EXECUTE_TASK, args=[task_id], queue=queue_for(task_type))

    def publish_advance(self, run_id: str) -> None:
        """Ask the control workers to advance a workflow run."""
        self._app.send_task(ADVANCE_RUN, args=[run_id], queue=CONTROL)

    def publish_delivery(self, delivery_id: str) -> None:
        """Ask the webhook workers to attempt a delivery."""
        self._app.send_task(DELIVER_WEBHOOK, args=[delivery_id], queue=WEBHOOKS)
