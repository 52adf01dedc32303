"""Celery process hooks that run a `DutyRunner` (workers/duties.py) in every worker process, whatever queues
it consumes, so that any number of workers can come and go and one of them always leads the duties.

Which process competes: thread and solo pools run tasks in the worker process itself, which then runs the
runner. A prefork parent forks its children at any time (to replace one that died), so it holds no threads
and no connections; there each child runs a runner (they compete like separate workers do).
"""

from __future__ import annotations

import os

from celery import signals

from switchyard.observability.exposition import process_exited
from switchyard.workers.duties import DutyRunner
from switchyard.workers.resources import get_resources

_runner: DutyRunner | None = None


def _start_runner() -> None:
    global _runner
    if _runner is None:
        resources = get_resources()
        _runner = DutyRunner(resources.db, resources.dispatcher, resources.settings, role="worker")
        _runner.start()


def _stop_runner(timeout: float = 0) -> None:
    if _runner is not None:
        _runner.stop(timeout)


@signals.worker_ready.connect
def _on_worker_ready(sender: object = None, **_: object) -> None:
    pool = getattr(sender, "pool", None)
    if pool is not None and type(pool).__module__.endswith("prefork"):
        return  # the children run the runners (see the module's docstring)
    _start_runner()


@signals.worker_process_init.connect
def _on_child_start(**_: object) -> None:
    global _runner
    # A prefork child. Its parent starts no runner (above); should one ever be copied in by the fork, its
    # thread would not run here, so the child makes its own.
    _runner = None
    _start_runner()


@signals.worker_shutting_down.connect
def _on_shutting_down(**_: object) -> None:
    # At the start of a warm shutdown (this is called in a signal handler: no waiting), so a standby takes
    # the duties over while this worker finishes its tasks.
    _stop_runner()


@signals.worker_process_shutdown.connect
def _on_child_shutdown(**_: object) -> None:
    _stop_runner(timeout=5)
    # A prefork child's calls in flight leave the worker's sum with it.
    process_exited(os.getpid())
