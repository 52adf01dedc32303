"""Advancing a batch: the one place a batch's status changes after it is created (and cancelled).

An advance locks the batch's row, so advances of one batch run one at a time whoever asks (a worker that
finished one of its lines, the batches' sweep, the API after a create or cancel). It validates the input
file (`validating` -> `in_progress`, or `failed` naming the bad lines), counts the lines' tasks by status
(request counts, usage and cost live), releases more lines as tasks up to the window, cancels the lines not
started when the batch is cancelled or has expired, says the progress now and then, and once every line has
ended moves the batch to `finalizing`. Finalizing, in a transaction of its own, writes the output and error
files (streamed, reading the lines a page at a time) and ends the batch. Every step is idempotent: an advance
that dies half way is simply run again by the sweep.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import structlog
from sqlalchemy import select

from switchyard.core.config import AppConfig
from switchyard.core.db import Database, Tx
from switchyard.core.errors import BudgetExceeded, MalformedRequest, NotFound, error_body
from switchyard.core.models import Batch, Task, utcnow
from switchyard.events.log import append_event
from switchyard.files.service import create_file, get_file, iter_lines
from switchyard.files.storage import Storage
from switchyard.ml.signature import Signature
from switchyard.observability import tracing
from switchyard.settings import Settings
from switchyard.tasks import openai_mapping, transitions
from switchyard.tasks.repository import attempts_of
from switchyard.tasks.transitions import CANCELED_ERROR, BatchDispatcher, TaskStatus
from switchyard.tasks.views import task_view
from switchyard.tenancy.quotas import repository as quota_repository
from switchyard.tenancy.quotas.estimate import estimate
from switchyard.tenancy.quotas.service import Quotas

from . import repository
from .lines import FOUND_KEY, MAX_ERRORS, Line, LineError, LineRules, error, parse
from .schemas import TERMINAL, BatchStatus
from .views import batch_view

log = structlog.get_logger(__name__)

EXPIRED_ERROR: dict[str, Any] = {"type": "batch_expired", "message": "the batch expired before the line ran"}
# Lines written to the batch_lines table, and output lines read back, a page at a time.
PAGE = 1000
UNFINISHED = (TaskStatus.QUEUED, TaskStatus.RUNNING)
_END_EVENTS = {
    BatchStatus.COMPLETED: "batch.completed",
    BatchStatus.FAILED: "batch.failed",
    BatchStatus.CANCELLED: "batch.canceled",
    BatchStatus.EXPIRED: "batch.expired",
}


@dataclass(frozen=True)
class BatchContext:
    """What advancing batches needs of the process: settings, models, file storage, the broker."""

    settings: Settings
    config: AppConfig
    signatures: Mapping[str, Signature]
    storage: Storage
    dispatcher: BatchDispatcher
    # Lines draw on the budgets of the key that created the batch (and its tenant); None: not enforced here.
    quotas: Quotas | None = None


def advance_batch(db: Database, ctx: BatchContext, batch_id: str) -> None:
    """Advance the batch in one transaction and, when all its lines have ended, finalize it in another.
    Traced, the advance is a span linked to the trace of the request that created the batch (its lines' tasks,
    released here, are children of this span)."""
    links = [_traceparent(db, batch_id)] if tracing.enabled() else []
    with (
        structlog.contextvars.bound_contextvars(batch_id=batch_id),
        tracing.span("batch.advance", links=links, attributes={"switchyard.batch_id": batch_id}),
    ):
        _advance_batch(db, ctx, batch_id)


def _traceparent(db: Database, batch_id: str) -> str | None:
    with db.sessions() as session:
        return session.scalar(select(Batch.traceparent).where(Batch.id == batch_id))


def _advance_batch(db: Database, ctx: BatchContext, batch_id: str) -> None:
    with db.transaction() as tx:
        finalize_next = advance(tx, ctx, batch_id)
    if finalize_next:
        with db.transaction() as tx:
            finalize(tx, ctx, batch_id)


def advance(tx: Tx, ctx: BatchContext, batch_id: str) -> bool:
    """One advance in the caller's transaction. True when the batch is `finalizing` (its files to write)."""
    session = tx.session
    batch = repository.lock(session, batch_id)
    if batch is None or batch.status in TERMINAL:
        return False
    now = utcnow()
    batch.advanced_at = now
    if batch.status == BatchStatus.FINALIZING:
        return True  # an earlier finalize did not commit: run it again
    if batch.status == BatchStatus.VALIDATING:
        if not _validate(tx, ctx, batch, now):
            return False
    counts = repository.line_counts(session, batch, UNFINISHED)
    unfinished = counts.of(*UNFINISHED)
    if batch.status == BatchStatus.CANCELLING:
        unfinished -= transitions.cancel_queued_of_batch(tx, batch.id, CANCELED_ERROR, stop_running=True)
    elif now >= batch.expires_at:
        # Past its window: lines not started never will; running ones are waited for.
        batch.expired_at = batch.expired_at or now
        unfinished -= transitions.cancel_queued_of_batch(tx, batch.id, EXPIRED_ERROR, stop_running=False)
    else:
        room = ctx.settings.batch_window - unfinished
        unfinished += _release(tx, ctx, batch, room)
    _update_counts(tx, ctx, batch, counts, now)
    if unfinished > 0 or (batch.status == BatchStatus.IN_PROGRESS and batch.expired_at is None and _unreleased(batch)):
        return False
    batch.status = BatchStatus.FINALIZING
    batch.finalizing_at = now
    return True


def _unreleased(batch: Batch) -> bool:
    return batch.released < batch.total


def _release(tx: Tx, ctx: BatchContext, batch: Batch, room: int) -> int:
    """Up to `room` more lines become tasks (one statement), published once committed. How many."""
    stop = min(batch.released + room, batch.total)
    if stop <= batch.released:
        return 0
    lines = repository.lines(tx.session, batch.id, batch.released, stop)
    tasks = [
        transitions.new_task(
            tenant_id=batch.tenant_id,
            type=line.type,
            model=line.model,
            input=line.input,
            options={k: v for k, v in line.options.items() if k != FOUND_KEY},
            metadata=line.metadata_,
            batch_id=batch.id,
            batch_line=line.line,
            key_id=batch.key_id,
            guardrails=line.options.get(FOUND_KEY),
        )
        for line in lines
    ]
    _admit_lines(tx, ctx, batch, tasks)
    transitions.create_batch_lines(tx, ctx.dispatcher, tasks)
    batch.released = stop
    return len(tasks)


def _admit_lines(tx: Tx, ctx: BatchContext, batch: Batch, tasks: list[Task]) -> None:
    """Reserve each line's worst case (at the batch price) against the budgets; a refused line is made failed
    with `budget_exceeded` (it goes to the error file). Lines do not count against request limits."""
    quotas = ctx.quotas
    if quotas is None:
        return
    policy = quota_repository.policy_of_key(tx.session, batch.tenant_id, batch.key_id, quotas.tiers)
    if policy is None or not policy.has_budget:
        return
    now = utcnow()
    for task in tasks:
        est = estimate(ctx.config, task.type, task.model, task.input, task.options, batch=True)
        try:
            admitted = quotas.admit(quotas.request(policy, task.id, est, requests=False, tasks=False))
        except BudgetExceeded as exc:
            task.status, task.finished_at = TaskStatus.FAILED, now
            task.error = {"type": exc.type, "message": exc.message}
            continue
        task.admission = admitted.record
        if admitted.record is not None:
            task_id = task.id
            tx.on_rollback(lambda task_id=task_id: quotas.release(task_id))  # type: ignore[misc]


def _update_counts(tx: Tx, ctx: BatchContext, batch: Batch, counts: repository.LineCounts, now: datetime) -> None:
    """Request counts, usage and cost as the lines' tasks say; a `batch.progress` event at most every
    `batch_progress_interval_s` when they changed."""
    completed, failed = counts.of(TaskStatus.SUCCEEDED), counts.of(TaskStatus.FAILED)
    changed = (completed, failed) != (batch.completed, batch.failed)
    batch.completed, batch.failed = completed, failed
    batch.cost_usd = counts.cost_usd
    # Token counts always; predictions only for batches that made some (as a task's usage shows them).
    batch.usage = {k: int(v) for k, v in counts.usage.items() if k != "predictions" or v}
    # OpenAI's batch usage also has the total.
    batch.usage["total_tokens"] = batch.usage["input_tokens"] + batch.usage["output_tokens"]
    interval = ctx.settings.batch_progress_interval_s
    if changed and (batch.progress_at is None or (now - batch.progress_at).total_seconds() >= interval):
        batch.progress_at = now
        data = {
            "id": batch.id,
            "status": batch.status,
            "request_counts": {"total": batch.total, "completed": completed, "failed": failed},
            "cost_usd": round(batch.cost_usd, 10),
            "usage": batch.usage,
        }
        _event(tx, batch, "batch.progress", data)


def _event(tx: Tx, batch: Batch, type: str, data: dict[str, Any]) -> None:
    append_event(tx.session, tenant_id=batch.tenant_id, type=type, batch_id=batch.id, data=data)


def _end(tx: Tx, batch: Batch, status: BatchStatus, now: datetime) -> None:
    batch.status = status
    # An expired batch keeps the time it expired at (its lines not started were canceled then).
    if getattr(batch, f"{status.value}_at") is None:
        setattr(batch, f"{status.value}_at", now)
    tx.session.flush()
    _event(tx, batch, _END_EVENTS[status], batch_view(batch))


# --- validation -----------------------------------------------------------------------------------------------


def _validate(tx: Tx, ctx: BatchContext, batch: Batch, now: datetime) -> bool:
    """Read the input file: each valid line is stored as a `batch_lines` row; the batch goes `in_progress`, or
    `failed` with `errors` naming the lines that cannot run. True when it is in progress."""
    session = tx.session
    try:
        file = get_file(tx, batch.tenant_id, batch.input_file_id)
    except NotFound as exc:
        return _fail(tx, batch, [error("file_not_found", exc.message, param="input_file_id")], now)
    rules = LineRules(
        config=ctx.config,
        signatures=ctx.signatures,
        endpoint=batch.endpoint,
        options=batch.options,
        max_line_bytes=ctx.settings.max_body_bytes,
        max_lines=ctx.settings.batch_max_lines,
    )
    errors: list[dict[str, Any]] = []
    page: list[dict[str, Any]] = []
    index = 0
    try:
        for number, parsed in parse(rules, iter_lines(file, ctx.storage)):
            if isinstance(parsed, LineError):
                errors.append(error(parsed.code, parsed.message, line=number, param=parsed.param))
                if len(errors) >= MAX_ERRORS:
                    break
                continue
            if not errors:
                page.append(_line_row(batch.id, index, parsed))
                if len(page) >= PAGE:
                    session.execute(repository.insert_lines(), page)
                    page = []
            index += 1
    except OSError as exc:
        # The bytes are gone or unreadable (a file deleted as the batch started): nothing can run.
        errors = [error("file_unreadable", f"the input file cannot be read: {exc.strerror or exc}")]
    if not errors and index == 0:
        errors.append(error("empty_file", "the input file holds no requests", param="input_file_id"))
    if errors:
        repository.delete_lines(session, batch.id)
        return _fail(tx, batch, errors, now)
    if page:
        session.execute(repository.insert_lines(), page)
    batch.total = index
    batch.status = BatchStatus.CANCELLING if batch.cancelling_at is not None else BatchStatus.IN_PROGRESS
    batch.in_progress_at = now
    return True


def _line_row(batch_id: str, index: int, line: Line) -> dict[str, Any]:
    return {
        "batch_id": batch_id,
        "line": index,
        "custom_id": line.custom_id,
        "type": line.type,
        "model": line.model,
        "input": line.input,
        "options": line.options,
        "metadata": line.metadata,
    }


def _fail(tx: Tx, batch: Batch, errors: list[dict[str, Any]], now: datetime) -> bool:
    batch.errors = errors
    _end(tx, batch, BatchStatus.FAILED, now)
    log.info("batch_failed_validation", batch_id=batch.id, errors=len(errors))
    return False


# --- finalizing -----------------------------------------------------------------------------------------------


def finalize(tx: Tx, ctx: BatchContext, batch_id: str) -> None:
    """Write the output file (succeeded lines) and the error file (the others), in input order, and end the
    batch: `completed`, or `cancelled` / `expired` with the partial output kept."""
    session = tx.session
    batch = repository.lock(session, batch_id)
    if batch is None or batch.status != BatchStatus.FINALIZING:
        return
    now = utcnow()
    counts = repository.line_counts(session, batch, UNFINISHED)
    _update_counts(tx, ctx, batch, counts, now)
    succeeded = counts.of(TaskStatus.SUCCEEDED)
    if succeeded:
        out = create_file(
            tx, ctx.storage, batch.tenant_id, "batch_output", f"{batch.id}_output.jsonl", _lines(tx, batch, True)
        )
        batch.output_file_id = out.id
    if batch.total - succeeded > 0:
        err = create_file(
            tx, ctx.storage, batch.tenant_id, "batch_output", f"{batch.id}_error.jsonl", _lines(tx, batch, False)
        )
        batch.error_file_id = err.id
    if batch.cancelling_at is not None:
        ending = BatchStatus.CANCELLED
    elif batch.expired_at is not None:
        ending = BatchStatus.EXPIRED
    else:
        ending = BatchStatus.COMPLETED
    _end(tx, batch, ending, now)


def _lines(tx: Tx, batch: Batch, succeeded: bool) -> Iterator[bytes]:
    """The output (or error) file's bytes, a page of lines at a time."""
    for start in range(0, batch.total, PAGE):
        rows = [
            (line, custom_id, task)
            for line, custom_id, task in repository.outcomes(tx.session, batch.id, start, start + PAGE)
            if (task is not None and task.status == TaskStatus.SUCCEEDED) == succeeded
        ]
        tasks = [task for _, _, task in rows if task is not None]
        attempts = attempts_of(tx.session, [t.id for t in tasks])
        yield b"".join(orjson.dumps(_output_line(batch, *row, attempts)) + b"\n" for row in rows)


def _output_line(
    batch: Batch, line: int, custom_id: str, task: Task | None, attempts: Mapping[str, Any]
) -> dict[str, Any]:
    if task is None:
        code = "batch_expired" if batch.expired_at is not None else "batch_cancelled"
        message = "the batch expired before the line ran" if code == "batch_expired" else "the batch was cancelled"
        line_id = f"batch_req_{batch.id.removeprefix('batch_')}_{line}"
        return {"id": line_id, "custom_id": custom_id, "response": None, "error": {"code": code, "message": message}}
    view = task_view(task, attempts.get(task.id, []))
    line_id = f"batch_req_{task.id.removeprefix('task_')}"
    if task.status == TaskStatus.SUCCEEDED:
        body = openai_mapping.response_body(batch.endpoint, view)
        response = {"status_code": 200, "request_id": task.id, "body": body}
        return {"id": line_id, "custom_id": custom_id, "response": response, "error": None}
    kind = (task.error or {}).get("type")
    if task.status == TaskStatus.CANCELED or kind == "batch_expired":
        code = "batch_expired" if kind == "batch_expired" else "batch_cancelled"
        message = (task.error or {}).get("message") or "canceled"
        return {"id": line_id, "custom_id": custom_id, "response": None, "error": {"code": code, "message": message}}
    exc = openai_mapping.failure(view, invalid=MalformedRequest)
    body = error_body(exc.type, exc.message, exc.param, exc.code)
    response = {"status_code": exc.status, "request_id": task.id, "body": body}
    return {"id": line_id, "custom_id": custom_id, "response": response, "error": None}
