"""The control worker's side of runs: advance one in its own transaction, again if a concurrent writer won."""

from __future__ import annotations

import structlog
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError

from switchyard.core.db import Database
from switchyard.core.models import Run
from switchyard.observability import tracing
from switchyard.tasks.transitions import RunAdvancer
from switchyard.workflows.engine import Engine

log = structlog.get_logger(__name__)

ATTEMPTS = 3


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
    for attempt in range(1, ATTEMPTS + 1):
        try:
            with db.transaction() as tx:
                engine.advance(tx, run_id)
            return
        except (IntegrityError, OperationalError):
            if attempt == ATTEMPTS:
                raise
            log.info("advance_retried", run_id=run_id, attempt=attempt)
