"""`/v1/tasks`: submit, read, list, cancel."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query

from switchyard.gateway_api.api_docs import errors
from switchyard.gateway_api.deps import Member, StateDep, TxDep, Viewer
from switchyard.gateway_api.responses import FastJSONResponse
from switchyard.tasks import service
from switchyard.tasks.schemas import TaskCreate, TaskCreated, TaskPage, TaskView
from switchyard.tasks.views import task_created_view
from switchyard.workers.queues import queue_for

router = APIRouter(prefix="/v1/tasks", tags=["tasks"])

TaskStatus = Literal["queued", "running", "succeeded", "failed", "canceled"]
TaskType = Literal["chat", "embed", "moderate", "predict"]


@router.post("", status_code=202, response_model=TaskCreated, responses=errors(409, 429, 503))
async def create_task(
    body: TaskCreate,
    principal: Member,
    state: StateDep,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
    x_provider: Annotated[str | None, Header(max_length=100)] = None,
) -> FastJSONResponse:
    """Submit a task; the workers run it. Poll it, follow its events, or give a `webhook`.

    `Idempotency-Key`: the same key with the same body within 24 h answers with the same task."""
    state.shedder.check(queue_for(body.type))
    # Committed before the 202 leaves.
    created = await service.submit_async(
        state.db,
        state.pg,
        state.config,
        state.signatures,
        state.dispatcher,
        service.Submission(
            tenant_id=principal.tenant_id,
            body=body,
            pinned_provider=x_provider,
            idempotency_key=idempotency_key,
            idempotency_ttl_s=state.settings.idempotency_ttl_s,
            allow_private_webhooks=state.settings.webhook_allow_private,
            key_id=principal.key_id,
            gate=state.gate(principal),
        ),
    )
    headers = dict(created.headers)
    if created.replayed:
        headers["Idempotent-Replayed"] = "true"
    return FastJSONResponse(task_created_view(created.task), status_code=202, headers=headers or None)


@router.get("", response_model=TaskPage)
def list_tasks(
    principal: Viewer,
    tx: TxDep,
    status: TaskStatus | None = None,
    type: TaskType | None = None,
    model: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(max_length=40)] = None,
) -> FastJSONResponse:
    """The tenant's tasks, newest first; `next` is the `after` of the following page."""
    return FastJSONResponse(
        service.list_tasks(tx, principal.tenant_id, status=status, type=type, model=model, after=after, limit=limit)
    )


@router.get("/{task_id}", response_model=TaskView, responses=errors(404))
def get_task(task_id: str, principal: Viewer, tx: TxDep) -> FastJSONResponse:
    """A task: status, result, usage, cost and every provider attempt."""
    return FastJSONResponse(service.get_task(tx, principal.tenant_id, task_id))


@router.post("/{task_id}/cancel", response_model=TaskView, responses=errors(404, 409))
def cancel_task(task_id: str, principal: Member, tx: TxDep, state: StateDep) -> FastJSONResponse:
    """A queued task never runs; a running one stops at its next safe point. 409 once it has finished."""
    return FastJSONResponse(service.cancel_task(tx, state.dispatcher, principal.tenant_id, task_id))
