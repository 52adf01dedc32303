"""The batches' sweep, one of the periodic duties that `workers/duties.py` runs in the leading worker: every
batch not yet ended that has not been advanced for a sweep interval is advanced again (a lost advance
message, a line task ended by the tasks' sweep, a batch past its window). Advancing is idempotent, so a
batch that was merely busy loses nothing."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import update

from switchyard.core.db import Tx
from switchyard.core.models import Batch
from switchyard.settings import Settings
from switchyard.tasks.transitions import BatchAdvancer

from . import repository

BATCH = 500


def sweep_batches(tx: Tx, advancer: BatchAdvancer, settings: Settings, now: datetime) -> list[str]:
    """One pass in the caller's transaction; the ids of the batches whose advance it publishes after the
    commit. Live batches are few, and an advance is one aggregate query, so every pass looks at each."""
    stale = now - timedelta(seconds=settings.sweep_interval_s)
    still = repository.live_ids(tx.session, stale, BATCH)
    if still:
        tx.session.execute(update(Batch).where(Batch.id.in_(still)).values(advanced_at=now))
    for batch_id in still:
        _advance_after_commit(tx, advancer, batch_id)
    return still


def _advance_after_commit(tx: Tx, advancer: BatchAdvancer, batch_id: str) -> None:
    tx.after_commit(lambda: advancer.publish_batch_advance(batch_id))
