"""Celery's time limits in the pools where Celery does not enforce them: threads (the default) and solo.

Celery enforces `soft_time_limit` and `time_limit` (set per task in celery_app.py, matching the leases) only in
the prefork pool, with signals and by ending the child process. In the thread and solo pools the tasks run in
the worker's own threads, which nothing may end. This watchdog gives them the soft limit all the same: when a
task has run past it, `SoftTimeLimitExceeded` (Celery's own exception) is raised in the thread that runs it,
through CPython's asynchronous exceptions. It arrives at the thread's next Python instruction, so it stops a
loop in Python code, and a wait that wakes up from time to time; a thread held in one long C call gets it when
the call returns. A task still running at its hard limit cannot be ended without ending every other task of the
process, so it is logged and counted (`switchyard_task_time_limits_total{limit="hard"}`); the lease it works
under has lapsed by then, and the sweepers have handed its work on.
"""

from __future__ import annotations

import ctypes
import threading
import time
from dataclasses import dataclass
from typing import Any

import structlog
from celery import signals
from celery.exceptions import SoftTimeLimitExceeded

from switchyard.observability import metrics

log = structlog.get_logger(__name__)

# How often the watchdog looks: a limit is enforced at most this late.
_TICK_S = 0.2

# This process's watchdog: set when its pool runs tasks in the process's own threads.
_watchdog: TimeLimits | None = None


@dataclass
class _Running:
    name: str
    request_id: str
    started: float
    soft: float | None
    hard: float | None
    soft_sent: bool = False
    hard_logged: bool = False


class TimeLimits:
    """Which thread runs which task since when, and a thread that enforces their limits."""

    def __init__(self, tick_s: float = _TICK_S) -> None:
        self._tick_s = tick_s
        self._running: dict[int, _Running] = {}
        # Held while a task's entry changes and while an exception is aimed at its thread, so the exception is
        # never sent to a thread that has already left the task (`ended` also withdraws one not yet raised).
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the watchdog thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="sy-time-limits", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the watchdog thread."""
        self._stop.set()

    def started(self, name: str, request_id: str, soft: float | None, hard: float | None) -> None:
        """The calling thread starts running a task with these limits (seconds; None: no limit)."""
        if soft is None and hard is None:
            return
        with self._lock:
            self._running[threading.get_ident()] = _Running(name, request_id, time.monotonic(), soft, hard)

    def ended(self) -> None:
        """The calling thread has left its task: no limit applies to it any more."""
        ident = threading.get_ident()
        with self._lock:
            entry = self._running.pop(ident, None)
            if entry is not None and entry.soft_sent:
                # Sent but maybe not raised yet (the task returned first): withdrawn, so it cannot hit the next one.
                _set_async_exc(ident, None)

    def _watch(self) -> None:
        while not self._stop.wait(self._tick_s):
            self.check(time.monotonic())

    def check(self, now: float) -> None:
        """Enforce the limits of every running task at monotonic time `now`."""
        with self._lock:
            for ident, entry in self._running.items():
                elapsed = now - entry.started
                if entry.soft is not None and not entry.soft_sent and elapsed > entry.soft:
                    entry.soft_sent = True
                    _report(entry, "soft", entry.soft, elapsed)
                    _set_async_exc(ident, SoftTimeLimitExceeded)
                if entry.hard is not None and not entry.hard_logged and elapsed > entry.hard:
                    entry.hard_logged = True
                    # A thread cannot be ended: its lease has lapsed by now and its work was handed on.
                    _report(entry, "hard", entry.hard, elapsed)


def _report(entry: _Running, limit: str, limit_s: float, elapsed: float) -> None:
    """Log (`task_soft_time_limit`, a warning; `task_hard_time_limit`, an error) and count a limit passed."""
    level = log.warning if limit == "soft" else log.error
    level(
        f"task_{limit}_time_limit",
        task=entry.name,
        celery_id=entry.request_id,
        limit_s=limit_s,
        elapsed_s=round(elapsed, 2),
    )
    metrics.task_time_limit(entry.name, limit)


def _set_async_exc(ident: int, exc: type[BaseException] | None) -> None:
    """Raise `exc` in thread `ident` at its next instruction (None withdraws one not yet raised)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(exc) if exc else None)


@signals.worker_ready.connect
def _on_worker_ready(sender: object = None, **_: object) -> None:
    global _watchdog
    pool = getattr(sender, "pool", None)
    if pool is not None and type(pool).__module__.endswith("prefork"):
        return  # Celery enforces the limits itself there
    _watchdog = TimeLimits()
    _watchdog.start()


@signals.task_prerun.connect
def _on_task_start(task: Any = None, task_id: str = "", **_: object) -> None:
    if _watchdog is not None and task is not None:
        # The message's own limits first (a caller may set them), else the task's (celery_app.time_limits).
        hard, soft = getattr(task.request, "timelimit", None) or (None, None)
        _watchdog.started(task.name, task_id, soft or task.soft_time_limit, hard or task.time_limit)


@signals.task_postrun.connect
def _on_task_end(**_: object) -> None:
    if _watchdog is not None:
        _watchdog.ended()


@signals.worker_shutdown.connect
def _on_shutdown(**_: object) -> None:
    if _watchdog is not None:
        _watchdog.stop()
