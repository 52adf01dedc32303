"""The control worker's side of runs: advance one in its own transaction, again if a concurrent writer won."""

from __future__ import annotations

import structlog
from sqlalchemy.exc import IntegrityError, OperationalError

from switchyard.core.db import Database
from switchyard.workflows.engine import Engine

log = structlog.get_logger(__name__)

ATTEMPTS = 3


def advance_with_retry(db: Database, engine: Engine, run_id: str) -> None:
    """Postgres serialises advances on the run's row lock. SQLite has no row locks: a concurrent advance
    surfaces as a busy snapshot or a duplicate step task, and the advance simply runs again on fresh state."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            with db.transaction() as tx:
                engine.advance(tx, run_id)
            return
        except (IntegrityError, OperationalError):
            if attempt == ATTEMPTS:
                raise
            log.info("advance_retried", run_id=run_id, attempt=attempt)
