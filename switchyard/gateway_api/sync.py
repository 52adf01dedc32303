"""Synchronous endpoints over tasks (`/v1/predict`, `/v1/chat/completions`, `/v1/embeddings`,
`/v1/moderations`): submit a task like `POST /v1/tasks` does, wait for the workers to finish it, answer
with its outcome. The task is recorded, routed, retried and costed like any other; a caller that stops
waiting can still poll it."""

from __future__ import annotations

from typing import Any

import anyio.to_thread
from fastapi import Request

from switchyard.core.errors import (
    GatewayTimeout,
)
from switchyard.gateway_api.state import ApiState
from switchyard.observability import metrics
from switchyard.observability.http import STARTED
from switchyard.tasks import service
from switchyard.tasks.openai_mapping import failure, openai_style
from switchyard.tasks.schemas import TaskCreate
from switchyard.tenancy.service import Principal

# The mapping of a failed task to the error a caller gets lives with the OpenAI mapping (batch lines use it too).
__all__ = ["create", "failure", "openai_style", "read", "submit", "task_headers", "wait_for"]


async def create(
    state: ApiState, principal: Principal, body: TaskCreate, request: Request, *, task_id: str | None = None
) -> str:
    """Submit the task (committed and published before this returns); its id (a replay's, for a repeated
    Idempotency-Key)."""
    return (await submit(state, principal, body, request, task_id=task_id)).task.id


async def submit(
    state: ApiState,
    principal: Principal,
    body: TaskCreate,
    request: Request,
    *,
    task_id: str | None = None,
    restorable: bool = False,
) -> service.Created:
    """`create`, with what it made: `restorable` (the caller waits here for the answer) lets a reversible
    PII guardrail run, and `vault` then restores the answer."""
    created = await service.submit_async(
        state.db,
        state.pg,
        state.config,
        state.signatures,
        state.dispatcher,
        service.Submission(
            tenant_id=principal.tenant_id,
            body=body,
            pinned_provider=request.headers.get("x-provider"),
            idempotency_key=request.headers.get("idempotency-key"),
            idempotency_ttl_s=state.settings.idempotency_ttl_s,
            task_id=task_id,
            key_id=principal.key_id,
            gate=state.gate(principal),
            restorable=restorable,
            waiting=True,
        ),
    )
    if created.headers:
        # The response, made later from the finished task, carries them (`task_headers`).
        request.state.ratelimit_headers = created.headers
    return created


async def read(state: ApiState, principal: Principal, task_id: str) -> dict[str, Any]:
    def get() -> dict[str, Any]:
        with state.db.transaction() as tx:
            return service.get_task(tx, principal.tenant_id, task_id)

    return await anyio.to_thread.run_sync(get)


async def wait_for(state: ApiState, principal: Principal, task_id: str, wait_s: float) -> dict[str, Any]:
    """The finished task, or GatewayTimeout (the task goes on) after `wait_s`."""
    finished = await state.completions.wait(task_id, wait_s)
    if not finished:
        raise GatewayTimeout(f"task {task_id} is still running after {wait_s:.0f}s; poll GET /v1/tasks/{task_id}")
    if isinstance(finished, dict):
        return finished  # pushed by the worker that finished it (for this tenant's request: it made the task)
    return await read(state, principal, task_id)


def task_headers(task: dict[str, Any], request: Request | None = None) -> dict[str, str]:
    """The task's id, cost and provider, and the `x-ratelimit-*` headers of the caller's limits. Called when a
    synchronous call's answer is ready: the gateway's overhead is measured here."""
    headers = {"x-switchyard-task-id": task["id"], "x-switchyard-cost-usd": f"{task['cost_usd']:.10f}"}
    if request is not None:
        metrics.gateway_overhead(task, request.scope.get("state", {}).get(STARTED))
        headers.update(getattr(request.state, "ratelimit_headers", None) or {})
    if task.get("result") and task["result"].get("provider"):
        headers["x-switchyard-provider"] = task["result"]["provider"]
    return headers
