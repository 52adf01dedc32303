"""Advancing batches in the worker whose lines ended: the advance a finished line asks for runs in this process,
on a thread of its own, rather than as a message to the control workers.

A batch's lines run where the `batch` queue is consumed (the batch process, by default): its advances (counting
the lines, releasing the next ones as tasks, writing the files at the end) then run there too, at the batch's
priority, and not in the process that answers interactive calls. Should an advance fail here, the message goes
to the control workers as before; the batches' sweep remains the last resort.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

import structlog
from sqlalchemy.exc import IntegrityError, OperationalError

from switchyard.batches.engine import BatchContext, advance_batch
from switchyard.core.db import Database
from switchyard.tasks.transitions import BatchAdvancer

log = structlog.get_logger(__name__)

ATTEMPTS = 3


def advance_with_retry(db: Database, ctx: BatchContext, batch_id: str) -> None:
    """Advance a batch; SQLite has no row locks, so a concurrent advance shows as a busy database or a line
    released twice, and the advance runs again on fresh state (on Postgres the row lock serialises them)."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            advance_batch(db, ctx, batch_id)
            return
        except (IntegrityError, OperationalError):
            if attempt == ATTEMPTS:
                raise


class LocalBatchAdvancer:
    """`publish_batch_advance` queues the batch for this process's advancing thread and returns at once (the
    caller is the thread that settled a line). A batch asked for while queued is advanced once; one asked for
    while its advance runs is advanced again after it, so the last line of a batch is always followed by an
    advance that sees it."""

    def __init__(self, db: Database, context: Callable[[], BatchContext], fallback: BatchAdvancer) -> None:
        """`context`: what advancing needs, made on first use; `fallback`: where an advance that failed goes."""
        self._db = db
        self._context = context
        self._fallback = fallback
        self._queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._queued: set[str] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False

    def publish_batch_advance(self, batch_id: str) -> None:
        with self._lock:
            if self._closed:
                self._fallback.publish_batch_advance(batch_id)
                return
            if batch_id in self._queued:
                return
            self._queued.add(batch_id)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="sy-batch-advance", daemon=True)
                self._thread.start()
        self._queue.put(batch_id)

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop after the advance under way; batches still queued are left to the sweep."""
        with self._lock:
            self._closed = True
            thread = self._thread
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            batch_id = self._queue.get()
            if batch_id is None:
                return
            with self._lock:
                self._queued.discard(batch_id)
                if self._closed:
                    continue
            try:
                advance_with_retry(self._db, self._context(), batch_id)
            except Exception:
                log.warning("local_batch_advance_failed", batch_id=batch_id, exc_info=True)
                try:
                    self._fallback.publish_batch_advance(batch_id)
                except Exception:
                    log.warning("publish_failed", batch_id=batch_id, exc_info=True)
