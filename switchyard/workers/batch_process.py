"""The batch process: a worker that consumes the `batch` queue beside others runs the lines of batches in a
child process of its own.

Why a process: a worker's calls share one interpreter lock. A batch keeps that lock busy (hundreds of lines in
flight, each settled by a thread), and an interactive call, whose every step needs the lock again, waits its
turn behind dozens of threads: a 10 ms call took 30 ms to seconds while a batch ran. The lanes inside one
process keep batch lines out of the interactive calls' slots and threads, but cannot give them the lock. A
child has a lock of its own, and runs at a lower CPU priority (`SWITCHYARD_BATCH_PROCESS_NICE`), so that the
machine's cores go to interactive calls first and to the batch with what is left.

The child is `switchyard worker --queues batch` with this worker's pool and concurrency, supervised here:
- it shares this worker's output and process group (a signal to the group reaches both);
- it stops with this worker (SIGTERM at the start of a warm shutdown, so both shut down together; SIGKILL
  after its grace), and dies with it when this worker is killed (the kernel sends it SIGTERM: its running
  lines get their grace, the rest are handed back);
- it is started again when it exits on its own (a crash), after a pause that grows while it keeps failing.

Its Prometheus metrics reach this worker's port through the multiprocess directory both processes share.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence

import structlog
from celery import signals

from switchyard.observability.exposition import process_exited
from switchyard.settings import Settings
from switchyard.workers.queues import BATCH

log = structlog.get_logger(__name__)

# Set in the child's environment: the pid of the worker that supervises it.
PARENT_ENV = "SWITCHYARD_BATCH_PROCESS_OF"
# The pause before starting a child that exited on its own, doubled while it keeps exiting young.
_RESTART_S = 1.0
_RESTART_MAX_S = 30.0
# A child that ran this long was healthy: the pause starts again from `_RESTART_S`.
_HEALTHY_S = 60.0
# Linux prctl option: the signal a process gets when the thread that started it ends.
_PR_SET_PDEATHSIG = 1

_current: BatchProcess | None = None


def splits_off(queues: Sequence[str], settings: Settings) -> bool:
    """Whether a worker on `queues` runs the batch lines in a child: it consumes `batch` and something else,
    the setting is on, and the database is not the embedded SQLite file (one worker process writes it)."""
    return (
        settings.batch_process
        and BATCH in queues
        and len(set(queues)) > 1
        and settings.sqlite_path is None
        and not os.environ.get(PARENT_ENV)
    )


class BatchProcess:
    """A supervised child running `argv` (a `switchyard worker --queues batch`)."""

    def __init__(self, argv: list[str], env: dict[str, str], *, stop_timeout_s: float) -> None:
        self.argv = argv
        self.env = {**env, PARENT_ENV: str(os.getpid())}
        self.stop_timeout_s = stop_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._signalled = False
        self._thread = threading.Thread(target=self._supervise, name="sy-batch-process", daemon=True)

    @property
    def pid(self) -> int | None:
        """The running child's pid (None between a crash and its restart)."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def start(self) -> None:
        """Start the child, and the thread that watches it (the child's parent, for the kernel: it lives as long
        as this process supervises)."""
        global _current
        _current = self
        self._thread.start()

    def terminate(self) -> None:
        """Ask the child to shut down (warm: its running lines get their grace). Safe in a signal handler."""
        self._stopping.set()
        proc = self._proc
        if proc is not None and proc.poll() is None and not self._signalled:
            self._signalled = True
            proc.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        """Shut the child down and wait for it; SIGKILL once `stop_timeout_s` has passed."""
        with self._lock:
            self.terminate()
        proc = self._proc
        if proc is not None:
            try:
                proc.wait(self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("batch_process_killed", pid=proc.pid, after_s=self.stop_timeout_s)
                proc.kill()
                proc.wait(10)
        self._thread.join(timeout=5)

    def _supervise(self) -> None:
        pause = _RESTART_S
        while True:
            with self._lock:
                if self._stopping.is_set():
                    return
                started = time.monotonic()
                self._signalled = False
                self._proc = proc = subprocess.Popen(self.argv, env=self.env)
            log.info("batch_process_started", pid=proc.pid)
            code = proc.wait()
            # Its calls in flight leave this worker's sum with it.
            process_exited(proc.pid)
            if self._stopping.is_set():
                return
            pause = _RESTART_S if time.monotonic() - started > _HEALTHY_S else min(pause * 2, _RESTART_MAX_S)
            log.warning("batch_process_exited", pid=proc.pid, code=code, restart_in_s=pause)
            if self._stopping.wait(pause):
                return


def child_argv(pool: str, concurrency: int, loglevel: str) -> list[str]:
    """The child's command line: this interpreter, this package, the batch queue only."""
    return [
        sys.executable,
        "-m",
        "switchyard",
        "worker",
        "--queues",
        BATCH,
        "--pool",
        pool,
        "--concurrency",
        str(concurrency),
        "--loglevel",
        loglevel,
    ]


def child_env(environ: dict[str, str]) -> dict[str, str]:
    """The child's environment: this worker's, without its metrics port (the child's values reach this
    worker's port through the shared multiprocess directory; two servers cannot share a port)."""
    return {k: v for k, v in environ.items() if k != "SWITCHYARD_METRICS_PORT"}


def become_child(settings: Settings, exit_now: Callable[[], None] = lambda: sys.exit(0)) -> None:
    """In the child, first thing: die with the parent (Linux), and take the lower CPU priority."""
    parent = int(os.environ[PARENT_ENV])
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        except (OSError, AttributeError):
            log.warning("batch_process_pdeathsig_failed", exc_info=True)
    if os.getppid() != parent:
        exit_now()  # the parent died before the line above took effect
    if settings.batch_process_nice:
        os.nice(settings.batch_process_nice)


@signals.worker_shutting_down.connect
def _on_shutting_down(**_: object) -> None:
    # Called in the signal handler that starts the warm shutdown: the child starts its own at once, so that the
    # two graces run together, not one after the other.
    if _current is not None:
        _current.terminate()
