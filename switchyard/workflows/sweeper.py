"""The workflow runs' sweep, one of the periodic duties that `workers/duties.py` runs in the leading worker:
runs that have sat still (a lost advance message, a step task finished by the tasks' sweep) are advanced
again. Advancing is idempotent, so a run that was merely slow loses nothing."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select, update

from switchyard.core.db import Tx
from switchyard.core.models import Run
from switchyard.settings import Settings
from switchyard.tasks.transitions import RunAdvancer

BATCH = 500


def sweep_runs(tx: Tx, dispatcher: RunAdvancer, settings: Settings, now: datetime) -> list[str]:
    """One pass in the caller's transaction; the ids of the runs whose advance it publishes after the commit."""
    session = tx.session
    stale = now - timedelta(seconds=settings.requeue_after_s)
    still = list(
        session.scalars(
            select(Run.id)
            .where(Run.status.in_(("queued", "running")), (Run.advanced_at.is_(None)) | (Run.advanced_at < stale))
            .limit(BATCH)
            .with_for_update(skip_locked=True)
        )
    )
    if still:
        session.execute(update(Run).where(Run.id.in_(still)).values(advanced_at=now))
    for run_id in still:
        _advance_after_commit(tx, dispatcher, run_id)
    return still


def _advance_after_commit(tx: Tx, dispatcher: RunAdvancer, run_id: str) -> None:
    tx.after_commit(lambda: dispatcher.publish_advance(run_id))
