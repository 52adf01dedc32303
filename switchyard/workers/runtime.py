"""The execution runtime of a worker process: provider calls on one event loop, the blocking steps around them
on a few threads.

A Celery message hands a task id over (`submit`): the Celery thread waits for a slot (at most
`max_in_flight` tasks run at once: beyond that the worker stops taking messages and leaves them to other
workers), then for the claim to commit, and returns, so the message is acknowledged once the row says the task
is ours; the row and its lease are the truth from there (the sweeper takes back the lease of a worker that
dies). Claims that arrive while one is being written are written together in the next statement (group
commit), so a burst of messages costs a few statements, not one each. The call itself is awaited on the loop:
thousands of calls wait on sockets there, not on threads.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

import structlog

from switchyard.core.group_commit import GroupCommit
from switchyard.observability import metrics, tracing
from switchyard.tasks.execution import Execution, Executor

log = structlog.get_logger(__name__)

T = TypeVar("T")

# How long a Celery thread waits for its claim before giving the message up (the sweeper re-publishes).
_CLAIM_WAIT_S = 60.0
# How often a Celery thread waiting for a slot wakes up (see `_take`).
_WAKE_S = 0.5


class Runtime:
    """One per worker process: the loop thread, the blocking-step threads, the in-flight slots."""

    def __init__(
        self, executor: Executor, *, max_in_flight: int, blocking_threads: int, batch_max_in_flight: int | None = None
    ) -> None:
        self.executor = executor
        self.max_in_flight = max_in_flight
        # Batch lines take slots and step threads of their own: a batch that fills its lane never holds up an
        # interactive call, which finds its own slots (and acquiring lock) free of batch work, and whose
        # blocking steps never queue behind hundreds of batch lines' steps.
        self._lanes = {
            False: _Lane("interactive", max_in_flight, blocking_threads, "sy-step"),
            True: _Lane(
                "batch", batch_max_in_flight or max(1, max_in_flight // 4), max(1, blocking_threads // 2), "sy-batch"
            ),
        }
        self._loop = _new_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sy-loop", daemon=True)
        self._thread.start()
        self._running: dict[str, Execution] = {}
        self._claims: GroupCommit[str, str, Execution] = GroupCommit(
            lambda ids: {ex.claim.task_id: ex for ex in executor.start(ids)}, key=lambda i: i, timeout_s=_CLAIM_WAIT_S
        )
        self._closing = False

    @property
    def in_flight(self) -> int:
        return len(self._running)

    def room(self, batch: bool = False) -> int:
        """Free slots of a lane now (a hint: other threads take and give slots meanwhile)."""
        lane = self._lanes[batch]
        return lane.size - lane.running

    # --- the Celery side --------------------------------------------------------------------------------------

    def submit(self, task_ids: list[str], *, batch: bool = False) -> None:
        """Take tasks into this worker: returns once they are claimed (or found not claimable). Batch lines
        (`batch`) wait for slots of their own lane."""
        if self._closing:
            raise RuntimeError("worker is shutting down")  # the message is redelivered or re-published
        lane = self._lanes[batch]
        if len(task_ids) > lane.size:
            for start in range(0, len(task_ids), lane.size):
                self.submit(task_ids[start : start + lane.size], batch=batch)
            return
        taken = 0
        try:
            # One thread at a time takes its slots: two threads each holding part of what they need could
            # otherwise wait on each other forever.
            _take(lane.acquiring)
            try:
                while taken < len(task_ids):
                    _take(lane.slots)
                    taken += 1
            finally:
                lane.acquiring.release()
            executions = self._claim(task_ids)
        except BaseException:
            # A claim that failed, or a wait cut by the task's soft time limit: the message is given up (the
            # sweeper re-publishes a task no worker has claimed).
            for _ in range(taken):
                lane.slots.release()
            raise
        for _ in range(len(task_ids) - len(executions)):
            lane.slots.release()
        lane.count(len(executions))
        for execution in executions:
            self._running[execution.claim.task_id] = execution
            metrics.in_flight(lane.name, 1)
            asyncio.run_coroutine_threadsafe(self._drive(execution, lane), self._loop)

    def _claim(self, task_ids: list[str]) -> list[Execution]:
        """Claims arriving from several Celery threads at once are written in one statement."""
        return [ex for ex in self._claims.submit(task_ids) if ex is not None]

    # --- the loop side ----------------------------------------------------------------------------------------

    async def _drive(self, ex: Execution, lane: _Lane) -> None:
        # This coroutine runs as an asyncio task with a context of its own: what is bound here (the task's
        # span, its ids for the logs) stays with this execution, and `_step` carries it into the threads.
        claim = ex.claim
        with tracing.span(
            "task.execute",
            parent=claim.traceparent,
            kind="consumer",
            attributes={"switchyard.task_id": claim.task_id, "switchyard.task_type": claim.type},
        ):
            structlog.contextvars.bind_contextvars(task_id=claim.task_id, run_id=claim.run_id)
            await self._run(ex, lane)

    async def _run(self, ex: Execution, lane: _Lane) -> None:
        step = partial(self._step, lane)
        try:
            if not await self.executor.guard_request(ex, step):
                return
            while True:
                outcome = await self.executor.call(ex, step)
                wait = await self._step(lane, self.executor.settle, ex, outcome)
                if wait is None:
                    return
                if wait:
                    await asyncio.sleep(wait)
                if not await self._step(lane, self.executor.choose_next, ex):
                    return
        except asyncio.CancelledError:
            raise
        except Exception:
            # The database or Redis failed under us: the lease lapses and the sweeper hands the task on.
            log.exception("execution_failed", task_id=ex.claim.task_id)
        finally:
            log.debug("execution_ended", attempts=ex.n)
            self._running.pop(ex.claim.task_id, None)
            metrics.in_flight(lane.name, -1)
            lane.count(-1)
            lane.slots.release()

    async def _step(self, lane: _Lane, fn: Callable[..., T], *args: Any) -> T:
        # Executors do not carry contextvars into their threads: the task's span and log ids go explicitly
        # (a copy each time, so two steps never enter one context at once).
        return await self._loop.run_in_executor(lane.blocking, contextvars.copy_context().run, fn, *args)

    # --- shutdown ---------------------------------------------------------------------------------------------

    def close(self, grace_s: float) -> None:
        """Stop taking tasks, let running calls finish for up to `grace_s`, then hand the rest back."""
        self._closing = True
        deadline = time.monotonic() + grace_s
        while self._running and time.monotonic() < deadline:
            time.sleep(0.05)
        left = list(self._running.values())
        if left:
            log.info("handing_back", tasks=len(left))

            def cancel_all() -> None:
                for task in asyncio.all_tasks(self._loop):
                    task.cancel()

            self._loop.call_soon_threadsafe(cancel_all)
            for ex in left:
                try:
                    self.executor.hand_back(ex)
                except Exception:
                    log.warning("hand_back_failed", task_id=ex.claim.task_id, exc_info=True)
        # The SDKs' async clients belong to this loop: closed on it.
        closing = asyncio.run_coroutine_threadsafe(self.executor.providers.aclose(), self._loop)
        try:
            closing.result(timeout=5)
        except Exception:
            log.warning("provider_close_failed", exc_info=True)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        for lane in self._lanes.values():
            lane.blocking.shutdown(wait=False, cancel_futures=True)


class _Lane:
    """Slots for calls in flight, the lock under which one submitting thread at a time takes them, and the
    threads that run the blocking steps (settle, choose the next attempt) of the lane's calls."""

    def __init__(self, name: str, size: int, threads: int, thread_prefix: str) -> None:
        self.name = name  # the `lane` label of switchyard_calls_in_flight
        self.size = size
        self.slots = threading.BoundedSemaphore(size)
        self.acquiring = threading.Lock()
        self.running = 0  # calls of this lane being driven (`room`)
        self._counting = threading.Lock()
        self.blocking = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=thread_prefix)

    def count(self, change: int) -> None:
        with self._counting:
            self.running += change


def _take(lock: threading.Lock | threading.Semaphore) -> None:
    """Acquire `lock`, waking up now and then: a wait in one C call would hold off the soft time limit that
    workers/time_limits.py raises in this thread until the wait ends."""
    while not lock.acquire(timeout=_WAKE_S):
        pass


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (it comes with uvicorn[standard]): less CPU per socket event."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop
