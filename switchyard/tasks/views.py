"""Tasks and attempts as the API shows them (also the `data` of terminal events)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from switchyard.core.models import Attempt, Task
from switchyard.observability.tracing import trace_id_of


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


class AttemptFields(Protocol):
    """What an attempt is shown from: the ORM row, or the worker's record of the call it just made."""

    n: int
    model: str | None
    provider: str
    deployment: str
    provider_model: str
    status: str
    error_type: str | None
    error_message: str | None
    status_code: int | None
    latency_ms: int
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int
    cache_write_tokens: int
    predictions: int
    compute_ms: float
    cost_usd: float
    started_at: datetime
    finished_at: datetime


class TaskFields(Protocol):
    """What a task is shown from: the ORM row, or what the worker holds when it finishes it."""

    id: str
    type: str
    model: str
    status: str
    input: dict[str, Any]
    options: dict[str, Any]
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    usage: dict[str, Any] | None
    cost_usd: float
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    metadata_: dict[str, Any]
    webhook: dict[str, Any] | None
    guardrails: dict[str, Any] | None
    traceparent: str | None


def attempt_view(attempt: Attempt | AttemptFields) -> dict[str, Any]:
    error = None
    if attempt.error_type is not None:
        error = {"type": attempt.error_type, "message": attempt.error_message, "status_code": attempt.status_code}
    return {
        "n": attempt.n,
        "model": attempt.model,
        "provider": attempt.provider,
        "deployment": attempt.deployment,
        "provider_model": attempt.provider_model,
        "status": attempt.status,
        "error": error,
        "latency_ms": attempt.latency_ms,
        "usage": {
            "input_tokens": attempt.input_tokens,
            "output_tokens": attempt.output_tokens,
            "cached_input_tokens": attempt.cached_input_tokens,
            "cache_write_tokens": attempt.cache_write_tokens,
            **({"predictions": attempt.predictions, "compute_ms": attempt.compute_ms} if attempt.predictions else {}),
        },
        "cost_usd": attempt.cost_usd,
        "started_at": _iso(attempt.started_at),
        "finished_at": _iso(attempt.finished_at),
    }


def task_view(task: Task | TaskFields, attempts: Sequence[Attempt | AttemptFields]) -> dict[str, Any]:
    return {
        "id": task.id,
        "type": task.type,
        "model": task.model,
        "status": task.status,
        "input": task.input,
        "options": task.options,
        "result": task.result,
        "error": task.error,
        "usage": task.usage,
        "cost_usd": task.cost_usd,
        "attempts": [attempt_view(a) for a in sorted(attempts, key=lambda a: a.n)],
        "created_at": _iso(task.created_at),
        "started_at": _iso(task.started_at),
        "finished_at": _iso(task.finished_at),
        "metadata": task.metadata_,
        "webhook": task.webhook,
        "guardrails": task.guardrails,
        "trace_id": trace_id_of(task.traceparent),
    }


def task_created_view(task: Task) -> dict[str, Any]:
    """The body of a 202."""
    return {
        "id": task.id,
        "status": task.status,
        "type": task.type,
        "model": task.model,
        "created_at": _iso(task.created_at),
    }
