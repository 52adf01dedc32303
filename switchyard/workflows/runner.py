"""The control worker's side of runs: advance one in its own transaction, again if a concurrent writer won."""

from __future__ import annotations

import time

import structlog
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError

from switchyard.core.db import Database
from switchyard.core.models import Run
from switchyard.observability import tracing
from switchyard.tasks.transitions import RunAdvancer
from switchyard.workflows.engine import Engine
from switchyard.workflows.rendering import RenderJob, RenderPass, render_jobs

log = structlog.get_logger(__name__)

ATTEMPTS = 3
# Locked passes of one advance; each can make the steps after a skipped or failed one ready (a new render).
MAX_PASSES = 50


class LocalAdvancer:
    """A worker that finished a run's step task advances the run itself, on the same thread, rather than
    sending a message to a control worker and waiting for it: a step's successors start one broker hop
    sooner. Should that fail, the message goes as before (the runs' sweep is the last resort)."""

    def __init__(self, db: Database, engine: Engine, fallback: RunAdvancer) -> None:
        self._db = db
        self._engine = engine
        self._fallback = fallback

    def publish_advance(self, run_id: str) -> None:
        try:
            advance_with_retry(self._db, self._engine, run_id)
        except Exception:
            log.warning("local_advance_failed", run_id=run_id, exc_info=True)
            self._fallback.publish_advance(run_id)


def advance_with_retry(db: Database, engine: Engine, run_id: str) -> None:
    """Postgres serialises advances on the run's row lock. SQLite has no row locks: a concurrent advance
    surfaces as a busy snapshot or a duplicate step task, and the advance simply runs again on fresh state.
    Traced, the advance is a span linked to the trace of the request that started the run (and a child of
    what caused it: the step task that finished)."""
    links = [_run_traceparent(db, run_id)] if tracing.enabled() else []
    with (
        structlog.contextvars.bound_contextvars(run_id=run_id),
        tracing.span("workflow.advance", links=links, attributes={"switchyard.run_id": run_id}),
    ):
        _advance(db, engine, run_id)


def _run_traceparent(db: Database, run_id: str) -> str | None:
    with db.sessions() as session:
        return session.scalar(select(Run.traceparent).where(Run.id == run_id))


def _advance(db: Database, engine: Engine, run_id: str) -> None:
    """Locked passes until one needs nothing rendered; between two, the templates the last one asked for are
    rendered with no lock and no transaction held (a cancel meanwhile does not wait on a template). An advance
    renders for `advance_render_s` at most: each template has its own budget, but a run may have many, and the
    advance must end well within its Celery task's time limit. What is left is the work of a next advance, sent
    at once (each pass commits what it made of the templates rendered so far)."""
    renders = RenderPass()
    until = time.monotonic() + engine.limits.advance_render_s
    for _ in range(MAX_PASSES):
        jobs = _advance_once(db, engine, run_id, renders)
        if not jobs:
            return
        if time.monotonic() > until:
            log.info("advance_continued", run_id=run_id, left=len(jobs))
            engine.dispatcher.publish_advance(run_id)
            return
        renders.rendered = {**renders.rendered, **render_jobs(jobs, engine.limits, until)}
    # Each pass renders what the one before made ready; a chain this long is left to the runs' sweep.
    log.warning("advance_passes_exhausted", run_id=run_id, passes=MAX_PASSES)


def _advance_once(db: Database, engine: Engine, run_id: str, renders: RenderPass) -> list[RenderJob]:
    for attempt in range(1, ATTEMPTS + 1):
        try:
            with db.transaction() as tx:
                jobs = engine.advance(tx, run_id, renders)
            return jobs
        except (IntegrityError, OperationalError):
            if attempt == ATTEMPTS:
                raise
            log.info("advance_retried", run_id=run_id, attempt=attempt)
    return []  # pragma: no cover - the last attempt returns or raises
