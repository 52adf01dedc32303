"""The Celery app. Late acks plus reject-on-worker-lost keep a message until its task has finished; the
claim on the row makes a redelivered message harmless. Results live in the database, not in Celery."""

from __future__ import annotations

from typing import Any

from celery import Celery, signals
from celery.app.amqp import AMQP
from kombu import Exchange, Queue

from switchyard.settings import Settings, get_settings
from switchyard.workers.queues import (
    ADVANCE_BATCH,
    ADVANCE_RUN,
    ALL,
    CONTROL,
    DELIVER_WEBHOOK,
    EXECUTE_TASK,
    EXECUTE_TASKS,
)


def broker_options(settings: Settings) -> dict[str, Any]:
    """The filesystem transport of embedded mode needs its folders; Redis needs a visibility timeout longer
    than any task, after which an unacknowledged message is delivered again."""
    if settings.filesystem_broker:
        folder = (settings.data_dir / "broker").resolve()
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        return {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "store_processed": False,
            # Broadcast (pidbox) exchanges; kombu's default is a folder in the working directory.
            "control_folder": str(folder / "control"),
        }
    return {"visibility_timeout": 3600}


def time_limits(settings: Settings) -> dict[str, dict[str, float]]:
    """Each task's soft and hard time limit (seconds), matching the lease that bounds it anyway: a claim is
    worthless once its lease (provider timeout + grace) has run out, as the sweeper hands the task on; an advance
    (a run's or a batch's) past requeue_after_s is done again by its sweep; a webhook attempt is bounded by the
    sender's timeout. The soft limit raises in the task (its transaction rolls back), the hard one ends the
    process. Celery enforces them with the prefork pool; in the thread and solo pools (threads are the default)
    workers/time_limits.py raises the soft limit in the task's thread and reports the hard one."""
    lease = settings.default_timeout_s + settings.lease_grace_s
    advance = settings.requeue_after_s
    webhook = settings.webhook_timeout_s + settings.lease_grace_s
    return {
        EXECUTE_TASK: {"soft_time_limit": lease * 0.9, "time_limit": lease},
        EXECUTE_TASKS: {"soft_time_limit": lease * 0.9, "time_limit": lease},
        ADVANCE_RUN: {"soft_time_limit": advance, "time_limit": advance + settings.lease_grace_s},
        ADVANCE_BATCH: {"soft_time_limit": advance, "time_limit": advance + settings.lease_grace_s},
        DELIVER_WEBHOOK: {"soft_time_limit": webhook, "time_limit": webhook + settings.lease_grace_s},
    }


@signals.setup_logging.connect
def _keep_logging(**_: Any) -> None:
    """A receiver here tells Celery to leave logging alone: `switchyard worker` has set it up already
    (core/logs.py), with true levels and one format for Celery's lines and ours."""


class NamedMessages(AMQP):  # type: ignore[misc]
    """Celery's message building, fitted to messages named for Flower (`shadow` and `argsrepr`, see
    workers/dispatch.py)."""

    def as_task_v2(self, *args: Any, **kwargs: Any) -> Any:
        message = super().as_task_v2(*args, **kwargs)
        shadow = message.headers.get("shadow")
        if shadow and message.sent_event is not None:
            # Celery's task-sent event carries the registered name, not the shadow one: Flower would list queued
            # messages as `switchyard.execute_task`, and rename one back when its sent event comes in after the
            # worker's received event (the two are published by different processes).
            message.sent_event["name"] = shadow
        return message

    def _create_task_sender(self) -> Any:
        send = super()._create_task_sender()

        def send_task_message(
            producer: Any, name: str, message: Any, argsrepr: str | None = None, **options: Any
        ) -> Any:
            # send_task hands `argsrepr` on here too, where it would become a message property: the ids a second
            # time in every message. The headers hold it already.
            return send(producer, name, message, **options)

        return send_task_message


def make_celery(settings: Settings) -> Celery:
    # The duty hooks join in through the worker's signals: every worker competes to run the periodic duties.
    app = Celery(
        "switchyard",
        broker=settings.celery_broker_url,
        include=["switchyard.workers.tasks", "switchyard.workers.duty_hooks", "switchyard.workers.time_limits"],
        amqp=NamedMessages,
    )
    app.conf.update(
        broker_transport_options=broker_options(settings),
        broker_connection_retry_on_startup=True,
        # Publishing threads (API requests, the sweeper) each borrow a producer connection; the default of
        # 10 makes them queue.
        broker_pool_limit=64,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_annotations=time_limits(settings),
        task_ignore_result=True,
        # A broker that is down must not hold a request for long: the row is committed already and the
        # sweeper publishes it once the broker is back.
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5},
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=CONTROL,
        task_queues=[Queue(name, Exchange(name, type="direct"), routing_key=name) for name in ALL],
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        # Redirected stdout is logged at WARNING, which mislabels anything printed; nothing of ours prints.
        worker_redirect_stdouts=False,
        # What Flower shows: workers say when they receive, start and finish a message, publishers when they
        # send one (about 0.4 ms of a worker's CPU a message, bench/RESULTS.md; SWITCHYARD_TASK_EVENTS=false).
        worker_send_task_events=settings.send_task_events,
        task_send_sent_event=settings.send_task_events,
    )
    return app


# The `celery -A switchyard.workers.celery_app` entry point (Flower). Making the app opens no connection.
app = make_celery(get_settings())
