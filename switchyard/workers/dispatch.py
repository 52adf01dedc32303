"""Publishing task ids to the broker. Messages carry ids only; the row is the truth."""

from __future__ import annotations

import queue
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from operator import itemgetter

import structlog
from celery import Celery

from switchyard.tasks.transitions import BatchAdvancer, TaskRef
from switchyard.workers.handoff import HandoffOut
from switchyard.workers.queues import (
    ADVANCE_BATCH,
    ADVANCE_RUN,
    CONTROL,
    DELIVER_WEBHOOK,
    EXECUTE_TASK,
    EXECUTE_TASKS,
    WEBHOOKS,
    queue_for,
)

log = structlog.get_logger(__name__)

# Ids one message may carry: a worker claims them in one statement.
MAX_IDS_PER_MESSAGE = 100
# Under load (the previous message went out less than BUSY_S ago) the publisher lingers up to LINGER_S for
# more ids to share the next message; a lone request (sequential callers) is published at once.
BUSY_S = 0.01
LINGER_S = 0.002
# A message of several kinds of task (type and model) is named after this many of them at most.
MAX_NAMED_KINDS = 3
# The fields of a TaskRef.
_ID, _TYPE, _MODEL, _RUN, _BATCH = (itemgetter(i) for i in range(5))
_KIND = itemgetter(1, 2)


def describe(refs: Sequence[TaskRef]) -> tuple[str, str]:
    """The name and the args Flower shows for a message carrying these tasks (Celery's `shadow` and `argsrepr`):
    `chat chat-default` and `task=task_01… run=run_01…`. A message of several tasks counts them in its args
    (`tasks=task_01…,task_01… count=12 batch=batch_01…`), not in its name: one name per type and model keeps
    Flower's task-name filter and its per-name metrics usable."""
    if len(refs) == 1:
        task_id, task_type, model, run_id, batch_id = refs[0]
        args = f"task={task_id}"
        if run_id is not None:
            args += f" run={run_id}"
        if batch_id is not None:
            args += f" batch={batch_id}"
        return f"{task_type} {model}", args
    # map/set over the refs run in C: this is the publishing thread's work per message.
    types, models = set(map(_TYPE, refs)), set(map(_MODEL, refs))
    if len(types) == 1 and len(models) == 1:
        name = f"{types.pop()} {models.pop()}"
    else:
        kinds = sorted(f"{task_type} {model}" for task_type, model in set(map(_KIND, refs)))
        name = " + ".join(kinds[:MAX_NAMED_KINDS])
        if len(kinds) > MAX_NAMED_KINDS:
            name += f" + {len(kinds) - MAX_NAMED_KINDS} more"
    args = f"tasks={','.join(map(_ID, refs))} count={len(refs)}"
    runs = set(map(_RUN, refs))
    runs.discard(None)
    if runs:
        args += f" run={','.join(sorted(runs))}"
    batches = set(map(_BATCH, refs))
    batches.discard(None)
    if batches:
        args += f" batch={','.join(sorted(batches))}"
    return name, args


class CeleryDispatcher:
    """Sends `execute_task(id)` to the queue of the task's resource, named for Flower by its type and model."""

    def __init__(self, app: Celery) -> None:
        self._app = app

    def publish_task(
        self, task_id: str, task_type: str, model: str, run_id: str | None = None, batch_id: str | None = None
    ) -> None:
        self.publish_tasks(queue_for(task_type, batch_id is not None), [(task_id, task_type, model, run_id, batch_id)])

    def hand_off(self, task_id: str, task_type: str, model: str) -> None:
        """A task whose caller waits: a worker's tasks are published (the API's dispatcher hands them off)."""
        self.publish_task(task_id, task_type, model)

    def publish_tasks(self, queue_name: str, refs: Sequence[TaskRef]) -> None:
        """Several tasks of one queue in one message (their ids; the rest only names the message)."""
        name, args = describe(refs)
        if len(refs) == 1:
            self._app.send_task(EXECUTE_TASK, args=[refs[0][0]], queue=queue_name, shadow=name, argsrepr=args)
        else:
            ids = [ref[0] for ref in refs]
            self._app.send_task(EXECUTE_TASKS, args=[ids], queue=queue_name, shadow=name, argsrepr=args)

    def publish_advance(self, run_id: str) -> None:
        """Ask the control workers to advance a workflow run."""
        self._app.send_task(ADVANCE_RUN, args=[run_id], queue=CONTROL)

    def publish_delivery(self, delivery_id: str) -> None:
        """Ask the webhook workers to attempt a delivery."""
        self._app.send_task(DELIVER_WEBHOOK, args=[delivery_id], queue=WEBHOOKS)

    def publish_batch_lines(self, lines_by_type: dict[str, list[TaskRef]]) -> None:
        """A batch's released lines, many ids a message, on the queue of each type's batch lines."""
        for task_type, refs in lines_by_type.items():
            queue_name = queue_for(task_type, batch=True)
            for start in range(0, len(refs), MAX_IDS_PER_MESSAGE):
                self.publish_tasks(queue_name, refs[start : start + MAX_IDS_PER_MESSAGE])

    def publish_batch_advance(self, batch_id: str) -> None:
        """Ask the control workers to advance a batch."""
        self._app.send_task(ADVANCE_BATCH, args=[batch_id], queue=CONTROL)


class ThrottledBatchAdvancer:
    """A worker's finished batch lines ask for their batch's advance through this: at most one message per
    batch each `interval_s` from this process, and one more at the end of the interval when asks came in
    meanwhile, so the last line of a batch is always followed by an advance (the sweep is the last resort)."""

    def __init__(self, publisher: BatchAdvancer, interval_s: float = 0.5) -> None:
        self._publisher = publisher
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._next: dict[str, float] = {}
        self._pending: set[str] = set()

    def publish_batch_advance(self, batch_id: str) -> None:
        now = time.monotonic()
        with self._lock:
            due = self._next.get(batch_id, 0.0)
            if now < due:
                if batch_id in self._pending:
                    return
                self._pending.add(batch_id)
                timer = threading.Timer(due - now, self._trailing, args=(batch_id,))
                timer.daemon = True
                timer.start()
                return
            if len(self._next) > 10_000:  # forget batches not heard of for a while
                self._next = {k: v for k, v in self._next.items() if v > now}
            self._next[batch_id] = now + self._interval_s
        self._send(batch_id)

    def _trailing(self, batch_id: str) -> None:
        with self._lock:
            self._pending.discard(batch_id)
            self._next[batch_id] = time.monotonic() + self._interval_s
        self._send(batch_id)

    def _send(self, batch_id: str) -> None:
        try:
            self._publisher.publish_batch_advance(batch_id)
        except Exception:
            # The batches' sweep advances a batch that nobody asked about.
            log.warning("publish_failed", batch_id=batch_id, exc_info=True)


class PublishQueue(CeleryDispatcher):
    """The API's dispatcher: `publish_task` only queues the id (an async request never waits on the broker)
    and a thread of its own publishes. Ids queued while it publishes go together in the next message, so
    under load a message carries many ids and the broker and the workers pay per message, not per task.

    The row is committed before its id is queued, so an id lost here (the process dies, the broker is down)
    is only late: the sweeper publishes tasks whose message never came. With `handoff`, the tasks of waiting
    callers go by the hand-off (workers/handoff.py) when a worker takes their queue's."""

    def __init__(self, app: Celery, handoff: HandoffOut | None = None) -> None:
        super().__init__(app)
        self._handoff = handoff
        # (queue name, task, handed off)
        self._queue: queue.SimpleQueue[tuple[str, TaskRef, bool] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="sy-publish", daemon=True)
        self._thread.start()

    def publish_task(
        self, task_id: str, task_type: str, model: str, run_id: str | None = None, batch_id: str | None = None
    ) -> None:
        self._queue.put(
            (queue_for(task_type, batch_id is not None), (task_id, task_type, model, run_id, batch_id), False)
        )

    def hand_off(self, task_id: str, task_type: str, model: str) -> None:
        self._queue.put((queue_for(task_type), (task_id, task_type, model, None, None), self._handoff is not None))

    def close(self) -> None:
        """Publish what is queued, then stop."""
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        stopping = False
        last = 0.0
        while not stopping:
            first = self._queue.get()
            items = [first]
            deadline = time.monotonic() + LINGER_S if time.monotonic() - last < BUSY_S else 0.0
            while len(items) < 10 * MAX_IDS_PER_MESSAGE:
                try:
                    wait = deadline - time.monotonic()
                    items.append(self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait())
                except queue.Empty:
                    break
            last = time.monotonic()
            by_queue: dict[str, list[TaskRef]] = defaultdict(list)
            handed: dict[str, list[TaskRef]] = defaultdict(list)
            for item in items:
                if item is None:
                    stopping = True
                else:
                    (handed if item[2] else by_queue)[item[0]].append(item[1])
            for queue_name, refs in handed.items():
                if not self._hand_off(queue_name, refs):
                    by_queue[queue_name].extend(refs)
            for queue_name, refs in by_queue.items():
                for start in range(0, len(refs), MAX_IDS_PER_MESSAGE):
                    try:
                        self.publish_tasks(queue_name, refs[start : start + MAX_IDS_PER_MESSAGE])
                    except Exception:
                        log.warning("publish_failed", queue=queue_name, tasks=len(refs), exc_info=True)

    def _hand_off(self, queue_name: str, refs: list[TaskRef]) -> bool:
        """Push the ids for a worker to pop; False when none takes them (or Redis failed): publish them then."""
        assert self._handoff is not None
        try:
            if not self._handoff.taken(queue_name):
                return False
            self._handoff.push(queue_name, [ref[0] for ref in refs])
        except Exception:
            log.warning("handoff_failed", queue=queue_name, tasks=len(refs), exc_info=True)
            return False
        return True
