"""Retention: delete what ended longer ago than the configured retention, a bounded step at a time.

Run by the leading worker (workers/duties.py) every `retention_interval_s`. Every step is its own short
transaction on the leader's connection (at most `retention_batch` rows, locked with SKIP LOCKED on Postgres), so
no lock is held long and readers and writers go on meanwhile; a pass takes at most `retention_max_batches`
steps per kind and leaves the rest to the next pass. Children go before their parents (attempts before tasks,
delivery attempts before deliveries, lines and files before batches).

Events are the log readers page by id (`since`): they are deleted by a prefix of each tenant's ids only, up to
the first event to keep, never past the oldest live task, run or batch, so what remains has no hole.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from functools import partial

import structlog
from sqlalchemy import Connection, select
from sqlalchemy.orm import Session

from switchyard.core.db import Database
from switchyard.core.models import Tenant
from switchyard.files.storage import Storage
from switchyard.retention import repository
from switchyard.settings import Settings

log = structlog.get_logger(__name__)

KINDS = ("tasks", "events", "deliveries", "batches", "audit")


def enabled(settings: Settings) -> bool:
    """Whether any retention is configured (else the duty does nothing and is not run)."""
    return any(settings.retention_s(kind) for kind in KINDS)


class Retention:
    """One pass over every kind with a retention, on the leader's connection."""

    def __init__(self, db: Database, storage: Storage, settings: Settings) -> None:
        self.db = db
        self.storage = storage
        self.settings = settings

    def run(self, conn: Connection, now: datetime) -> dict[str, int]:
        """Delete what has expired, up to the pass's bound; the counts of what was deleted, by kind."""
        counts: dict[str, int] = {}
        limit = self.settings.retention_batch
        for kind in KINDS:
            seconds = self.settings.retention_s(kind)
            if not seconds:
                continue
            cutoff = now - timedelta(seconds=seconds)
            if kind == "tasks":
                counts[kind] = self._steps(conn, repository.delete_tasks, cutoff)
            elif kind == "deliveries":
                counts[kind] = self._steps(conn, repository.delete_deliveries, cutoff)
            elif kind == "audit":
                counts[kind] = self._steps(conn, repository.delete_audit, cutoff)
            elif kind == "events":
                counts[kind] = self._events(conn, cutoff, limit)
            else:
                counts[kind] = self._batches(conn, cutoff, limit)
        return counts

    def _steps(self, conn: Connection, step: Callable[[Session, datetime, int], int], cutoff: datetime) -> int:
        """Steps until one deletes less than a full batch (nothing more has expired) or the bound is reached."""
        total = 0
        for _ in range(self.settings.retention_max_batches):
            with self.db.transaction(bind=conn) as tx:
                deleted = step(tx.session, cutoff, self.settings.retention_batch)
            total += deleted
            if deleted < self.settings.retention_batch:
                break
        return total

    def _events(self, conn: Connection, cutoff: datetime, limit: int) -> int:
        with self.db.transaction(bind=conn) as tx:
            oldest = repository.oldest_live(tx.session)
            tenants = list(tx.session.scalars(select(Tenant.id).order_by(Tenant.id)))
        horizon = min(cutoff, oldest) if oldest is not None else cutoff
        total, budget = 0, self.settings.retention_max_batches
        for tenant_id in tenants:
            while budget > 0:
                budget -= 1
                with self.db.transaction(bind=conn) as tx:
                    cut = repository.delete_events_prefix(tx.session, tenant_id, horizon, limit)
                total += cut.deleted
                if cut.done:
                    break
        return total

    def _batches(self, conn: Connection, cutoff: datetime, limit: int) -> int:
        """Ended batches, one at a time: their lines a step at a time, then their files and the row."""
        deleted, budget = 0, self.settings.retention_max_batches
        while budget > 0:
            with self.db.transaction(bind=conn) as tx:
                batch = repository.ended_batch(tx.session, cutoff)
                if batch is None:
                    return deleted
                budget -= 1
                if repository.delete_batch_lines(tx.session, batch.id, limit) >= limit:
                    continue  # more lines: the next step takes them (and the row, once they are gone)
                files = repository.batch_files(tx.session, batch)
                repository.delete_batch(tx.session, batch, files)
                keys = [f.storage_key for f in files if f.deleted_at is None]
                # The bytes go once the rows are gone for good; a failure leaves an orphan file, never a row
                # naming missing bytes.
                tx.after_commit(partial(self._remove, keys))
            deleted += 1
        return deleted

    def _remove(self, keys: list[str]) -> None:
        for key in keys:
            try:
                self.storage.delete(key)
            except Exception:
                log.warning("retention_file_delete_failed", key=key, exc_info=True)
