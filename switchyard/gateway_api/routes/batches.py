"""`/v1/batches`: OpenAI's Batch API (create, read, list, cancel), run by Switchyard's own workers."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from switchyard.batches import service
from switchyard.batches.schemas import BatchCreate, BatchObject, BatchPage
from switchyard.gateway_api.api_docs import errors
from switchyard.gateway_api.deps import Member, StateDep, TxDep, Viewer, admission
from switchyard.gateway_api.responses import FastJSONResponse

router = APIRouter(prefix="/v1/batches", tags=["batches"])


# Plain `def` routes: FastAPI runs them on its thread pool, so the database work never blocks the event loop.
# Checked against the provider queue: while interactive calls back up, no new batch competes with them.
@router.post("", dependencies=[admission()], response_model=BatchObject, responses=errors(404, 429, 503))
def create_batch(body: BatchCreate, principal: Member, tx: TxDep, state: StateDep) -> FastJSONResponse:
    """Start a batch over an uploaded input file (`purpose: batch`). It answers at once, `validating`; the
    workers then check every line (a bad one fails the batch, naming its line) and run each as a task.

    The batch counts as one request against the key's request limits; its lines do not (as at OpenAI), but
    each line's cost is reserved against the budgets when it is released (a refused line fails with
    `budget_exceeded`, in the error file)."""
    counted = state.request_only(principal)
    admitted = state.quotas.admit(counted) if counted is not None else None
    view = service.create_batch(
        tx, state.settings, state.dispatcher, principal.tenant_id, body, key_id=principal.key_id
    )
    return FastJSONResponse(view, headers=admitted.headers if admitted is not None else None)


@router.get("", response_model=BatchPage)
def list_batches(
    principal: Viewer,
    tx: TxDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(max_length=40)] = None,
) -> FastJSONResponse:
    """The tenant's batches, newest first; `after` is the `last_id` of the previous page."""
    return FastJSONResponse(service.list_batches(tx, principal.tenant_id, after=after, limit=limit))


@router.get("/{batch_id}", response_model=BatchObject, responses=errors(404))
def get_batch(batch_id: str, principal: Viewer, tx: TxDep) -> FastJSONResponse:
    """A batch: status, request counts, cost and usage so far, its output and error files once written."""
    return FastJSONResponse(service.get_batch(tx, principal.tenant_id, batch_id))


@router.post("/{batch_id}/cancel", response_model=BatchObject, responses=errors(404, 409))
def cancel_batch(batch_id: str, principal: Member, tx: TxDep, state: StateDep) -> FastJSONResponse:
    """Cancel a batch: `cancelling` at once, lines not started never run, running ones finish, then
    `cancelled` with the partial output written. 409 once the batch is finalizing or has ended."""
    return FastJSONResponse(service.cancel_batch(tx, state.dispatcher, principal.tenant_id, batch_id))
