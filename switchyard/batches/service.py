"""Batch use cases of the HTTP edge: create, read, list, cancel. No HTTP here; after a create or cancel the
batch is advanced by a control worker (`engine.py`), which does the slow work (reading the input file)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from switchyard.core.db import Tx
from switchyard.core.errors import Conflict, InvalidRequest, NotFound
from switchyard.core.ids import new_id
from switchyard.core.models import Batch, utcnow
from switchyard.files.service import get_file
from switchyard.observability import tracing
from switchyard.settings import Settings
from switchyard.tasks.transitions import BatchAdvancer
from switchyard.webhooks.service import object_webhook

from . import repository
from .schemas import ENDPOINTS, TERMINAL, BatchCreate, BatchStatus
from .views import batch_view

COMPLETION_WINDOWS = {"24h": 24 * 3600.0}


def create_batch(
    tx: Tx, settings: Settings, advancer: BatchAdvancer, tenant_id: str, body: BatchCreate, *, key_id: str | None = None
) -> dict[str, Any]:
    """Refuse what is cheap to see now (the endpoint, the window, an unknown file or one not uploaded for
    batches); the lines are validated by the first advance, so the request answers at once (`validating`)."""
    if body.endpoint not in ENDPOINTS:
        raise InvalidRequest(f"endpoint must be one of {', '.join(ENDPOINTS)}", param="endpoint")
    window = COMPLETION_WINDOWS.get(body.completion_window)
    if window is None:
        raise InvalidRequest("completion_window must be '24h'", param="completion_window")
    file = get_file(tx, tenant_id, body.input_file_id)
    if file.purpose != "batch":
        raise InvalidRequest(
            f"file '{file.id}' was uploaded with purpose '{file.purpose}', not 'batch'", param="input_file_id"
        )
    now = utcnow()
    batch = Batch(
        id=new_id("batch"),
        tenant_id=tenant_id,
        key_id=key_id,
        status=BatchStatus.VALIDATING,
        endpoint=body.endpoint,
        input_file_id=file.id,
        completion_window=body.completion_window,
        metadata_=body.metadata,
        options=body.options.model_dump(exclude_none=True) if body.options else {},
        total=0,
        released=0,
        completed=0,
        failed=0,
        cost_usd=0.0,
        created_at=now,
        expires_at=now + timedelta(seconds=settings.batch_completion_window_s or window),
        traceparent=tracing.current_traceparent(),
    )
    if body.webhook is not None:
        batch.webhook = object_webhook(
            tx, tenant_id, batch.id, body.webhook, allow_private=settings.webhook_allow_private, param="webhook"
        )
    tx.session.add(batch)
    tx.session.flush()
    _advance_after_commit(tx, advancer, batch.id)
    return batch_view(batch)


def get_batch(tx: Tx, tenant_id: str, batch_id: str) -> dict[str, Any]:
    return batch_view(_get(tx, tenant_id, batch_id))


def list_batches(tx: Tx, tenant_id: str, *, after: str | None, limit: int) -> dict[str, Any]:
    """OpenAI's cursor page: newest first, `after` the last id of the previous page."""
    rows = repository.page(tx.session, tenant_id, after=after, limit=limit)
    more = len(rows) > limit
    data = [batch_view(b) for b in rows[:limit]]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": more,
    }


def cancel_batch(tx: Tx, advancer: BatchAdvancer, tenant_id: str, batch_id: str) -> dict[str, Any]:
    """`cancelling` at once; the advance cancels the lines not started, waits for running ones, then writes the
    partial output (`cancelled`). 409 once the batch is finalizing or has ended."""
    _get(tx, tenant_id, batch_id)
    batch = repository.lock(tx.session, batch_id)
    assert batch is not None  # it was just read, and batches are not deleted
    if batch.status in TERMINAL or batch.status == BatchStatus.FINALIZING:
        raise Conflict(f"batch '{batch_id}' is already {batch.status}", param="batch_id")
    if batch.status != BatchStatus.CANCELLING:
        batch.status = BatchStatus.CANCELLING
        batch.cancelling_at = utcnow()
        _advance_after_commit(tx, advancer, batch.id)
    return batch_view(batch)


def _get(tx: Tx, tenant_id: str, batch_id: str) -> Batch:
    batch = repository.get_for_tenant(tx.session, tenant_id, batch_id)
    if batch is None:
        raise NotFound(f"no batch '{batch_id}'", param="batch_id")
    return batch


def _advance_after_commit(tx: Tx, advancer: BatchAdvancer, batch_id: str) -> None:
    tx.after_commit(lambda: advancer.publish_batch_advance(batch_id))
