"""What every transition shares: the statuses, the claim a worker holds, the record of an attempt, the
after-commit steps, and the helpers that write a task's event and show a task."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from types import SimpleNamespace
from typing import Any, Protocol

import orjson
import structlog
from psycopg.types.json import Jsonb
from sqlalchemy import update
from sqlalchemy.orm import Session

from switchyard.core.db import Tx
from switchyard.core.models import Task
from switchyard.events.log import append_event
from switchyard.providers.base import Usage
from switchyard.tasks.views import task_view

log = structlog.get_logger(__name__)


class TaskStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


TERMINAL = frozenset({TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELED})
CANCELED_ERROR: dict[str, Any] = {"type": "canceled", "message": "canceled by request"}
# A task that has taken down this many workers is failed rather than handed to another one.
MAX_RECLAIMS = 5


# A task as its message tells of it: (task id, type, model, run id, batch id). The message itself carries the id
# only; the rest names it where operators watch the queues (Flower).
TaskRef = tuple[str, str, str, str | None, str | None]


class Dispatcher(Protocol):
    """Hands a task id to the broker (after commit)."""

    def publish_task(
        self, task_id: str, task_type: str, model: str, run_id: str | None = None, batch_id: str | None = None
    ) -> None:
        """`batch_id`: the task is a line of that batch (it goes on the batch queue). The type, model, run and
        batch only name the message."""

    def hand_off(self, task_id: str, task_type: str, model: str) -> None:
        """`publish_task` for a task whose caller waits for it: by the hand-off when a worker takes it."""


class RunAdvancer(Protocol):
    """Asks the control workers to advance a workflow run (after commit)."""

    def publish_advance(self, run_id: str) -> None: ...


class RunDispatcher(Dispatcher, RunAdvancer, Protocol):
    """Publishes both: what the workflow engine and the sweeper need."""


class BatchAdvancer(Protocol):
    """Asks the control workers to advance a batch (after commit)."""

    def publish_batch_advance(self, batch_id: str) -> None: ...


class BatchDispatcher(BatchAdvancer, Protocol):
    """What advancing a batch publishes: its released lines (many ids a message), its next advance."""

    def publish_batch_lines(self, lines_by_type: dict[str, list[TaskRef]]) -> None: ...


# Told (after the commit) when a task reaches its final state, with the task as the API shows it.
OnFinished = Callable[[str, dict[str, Any]], None]


@dataclass
class Claim:
    """What the worker holding a task needs to run it (and to show it without reading it back)."""

    task_id: str
    claim_id: str
    tenant_id: str
    type: str
    model: str
    input: dict[str, Any]
    options: dict[str, Any]
    attempt_count: int
    run_id: str | None = None
    step_id: str | None = None
    batch_id: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    metadata: dict[str, Any] | None = None
    webhook: dict[str, Any] | None = None
    # What the task's admission took from limits and budgets (None: nothing to settle when it ends).
    admission: dict[str, Any] | None = None
    # What its guardrails found so far (`tasks.guardrails`), kept up to date as they write it.
    guardrails: dict[str, Any] | None = None
    # The W3C traceparent of the span that created it (None: not traced): its execution's span is a child.
    traceparent: str | None = None


@dataclass(frozen=True)
class AttemptRecord:
    """One provider call to record (the row of `attempts`)."""

    n: int
    model: str
    provider: str
    deployment: str
    provider_model: str
    error_type: str | None
    error_message: str | None
    status_code: int | None
    latency_ms: int
    usage: Usage
    cost_usd: float
    started_at: datetime
    finished_at: datetime

    @property
    def succeeded(self) -> bool:
        return self.error_type is None

    def values(self, task_id: str) -> dict[str, Any]:
        u = self.usage
        return {
            "task_id": task_id,
            "n": self.n,
            "model": self.model,
            "provider": self.provider,
            "deployment": self.deployment,
            "provider_model": self.provider_model,
            "status": TaskStatus.SUCCEEDED.value if self.succeeded else TaskStatus.FAILED.value,
            "error_type": self.error_type,
            "error_message": self.error_message,
            "status_code": self.status_code,
            "latency_ms": self.latency_ms,
            "input_tokens": u.input_tokens,
            "output_tokens": u.output_tokens,
            "cached_input_tokens": u.cached_input_tokens,
            "cache_write_tokens": u.cache_write_tokens,
            "predictions": u.predictions,
            "compute_ms": u.compute_ms,
            "cost_usd": self.cost_usd,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }


@dataclass
class Finished:
    """After-commit steps of a finish: tell a synchronous waiter, advance the task's workflow run or batch."""

    on_finished: OnFinished | None = None
    advancer: RunAdvancer | None = None
    batch_advancer: BatchAdvancer | None = None


def jsonb(value: Any) -> Jsonb:
    """A JSONB parameter of a driver-level statement, encoded by orjson."""
    return Jsonb(value, dumps=_dumps)


def _dumps(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS).decode()


def publish_after_commit(
    tx: Tx,
    dispatcher: Dispatcher,
    task_id: str,
    task_type: str,
    model: str,
    run_id: str | None = None,
    batch_id: str | None = None,
) -> None:
    tx.after_commit(lambda: dispatcher.publish_task(task_id, task_type, model, run_id, batch_id))


def run_after(fn: Callable[..., None], *args: Any) -> None:
    try:
        fn(*args)
    except Exception:
        # Committed already: a waiter falls back to reading the row, the sweeper advances a still run.
        log.warning("after_commit_failed", exc_info=True)


def task_update() -> Any:
    """A conditional UPDATE of tasks. No Task objects are held that need keeping in step, so the ORM's
    session synchronisation is skipped."""
    return update(Task).execution_options(synchronize_session=False)


def claim_event(session: Session, c: Claim, type: str, data: dict[str, Any]) -> None:
    append_event(
        session, tenant_id=c.tenant_id, type=type, task_id=c.task_id, run_id=c.run_id, step_id=c.step_id, data=data
    )


def guardrail_cost(c: Claim) -> float:
    """What the task's guardrails spent on calls of their own (a moderation model's): part of the task's cost."""
    if not c.guardrails:
        return 0.0
    return sum(float(v.get("cost_usd") or 0.0) for v in c.guardrails.values() if isinstance(v, dict))


def usage_of_attempts(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Usage summed over every attempt (failed attempts can still cost money)."""
    return Usage(
        input_tokens=sum(r["input_tokens"] for r in rows),
        output_tokens=sum(r["output_tokens"] for r in rows),
        cached_input_tokens=sum(r["cached_input_tokens"] for r in rows),
        cache_write_tokens=sum(r["cache_write_tokens"] for r in rows),
        predictions=sum(r["predictions"] for r in rows),
        compute_ms=sum(r["compute_ms"] for r in rows),
    ).as_dict()


def finished_view(
    c: Claim,
    status: TaskStatus,
    result: dict[str, Any] | None,
    error: dict[str, Any] | None,
    usage: dict[str, Any] | None,
    cost: float,
    finished_at: datetime,
    attempts: list[dict[str, Any]],
) -> dict[str, Any]:
    """The finished task as the API shows it, from what the worker holds (no read-back; plain namespaces, as
    ORM objects cost far more to make)."""
    task = SimpleNamespace(
        id=c.task_id,
        type=c.type,
        model=c.model,
        status=status.value,
        input=c.input,
        options=c.options,
        result=result,
        error=error,
        usage=usage,
        cost_usd=cost,
        created_at=c.created_at,
        started_at=c.started_at,
        finished_at=finished_at,
        metadata_=c.metadata or {},
        webhook=c.webhook,
        guardrails=c.guardrails,
        traceparent=c.traceparent,
    )
    return task_view(task, [SimpleNamespace(**a) for a in attempts])


def as_utc(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value
