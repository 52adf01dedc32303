"""Periodic duties, run inside the workers: each domain's own sweep, composed here, run by one leader at a time.

The duties are the tasks' sweep (reclaim expired leases, re-publish lost and due tasks), the workflow runs'
sweep (advance runs that sat still), the webhook deliveries' sweep (publish due retries, take back lapsed
leases) and the batches' sweep (advance batches not advanced lately: lost messages, expiry). `api` + `worker`
is therefore a complete deployment: every worker process runs a `DutyRunner` thread that competes for the
duties' leadership (`core.leader`); the leader runs every duty each `sweep_interval_s`, each in its own
transaction on the locked connection, and records the run in the `duties` table in that same transaction,
where `/readyz` reads it. Between sweeps the leader also measures the queues every `queue_stats_interval_s` for
load shedding (`shedding`), and every `retention_interval_s` deletes what has expired (`retention`, when any
retention is set; its steps commit one by one). When the leader dies a standby takes over
within about a second. `switchyard scheduler` runs the very same runner, so beside a leading worker it only
stands by: a duty never runs twice at once.

`workers/duty_hooks.py` starts a runner in every worker process.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from types import FrameType
from typing import Any, Protocol

import structlog
from sqlalchemy import Connection, insert, select, update
from sqlalchemy.orm import Session

from switchyard.batches.sweeper import sweep_batches
from switchyard.core.db import Database, Tx
from switchyard.core.leader import compete
from switchyard.core.models import Duty as DutyRow
from switchyard.core.models import utcnow
from switchyard.files.storage import storage_for
from switchyard.observability import metrics
from switchyard.retention.service import Retention
from switchyard.retention.service import enabled as retention_enabled
from switchyard.settings import Settings
from switchyard.shedding.service import LoadPublisher
from switchyard.tasks.sweeper import sweep_tasks
from switchyard.tasks.transitions import BatchAdvancer, RunDispatcher
from switchyard.webhooks.delivery import DeliveryDispatcher
from switchyard.webhooks.sweeper import sweep_deliveries
from switchyard.workers.celery_app import app
from switchyard.workers.dispatch import CeleryDispatcher
from switchyard.workflows.sweeper import sweep_runs

log = structlog.get_logger(__name__)

# An arbitrary constant naming the duties' advisory lock (the relay has its own).
LOCK_KEY = 0x5377_7964_4475_7479
LOCK_FILE = "duties.lock"

TASKS = "tasks"
WORKFLOW_RUNS = "workflow_runs"
WEBHOOK_DELIVERIES = "webhook_deliveries"
BATCHES = "batches"
# Recorded in the duties table too, but not part of /readyz: it runs rarely, and only when configured.
RETENTION = "retention"
# Every duty, in the order the leader runs them (the order of the single sweep they were split from).
NAMES = (TASKS, WORKFLOW_RUNS, WEBHOOK_DELIVERIES, BATCHES)


class DutyDispatcher(RunDispatcher, DeliveryDispatcher, BatchAdvancer, Protocol):
    """Everything the duties may have to publish again."""


@dataclass(frozen=True)
class Duty:
    """A named sweep: one pass in the given transaction at the given time; counts of what it did."""

    name: str
    run: Callable[[Tx, datetime], dict[str, int]]


def compose(dispatcher: DutyDispatcher, settings: Settings) -> tuple[Duty, ...]:
    """The duties of `NAMES`, each domain's own sweep bound to this process's dispatcher and settings."""
    return (
        Duty(TASKS, lambda tx, now: sweep_tasks(tx, dispatcher, settings, now).counts()),
        Duty(WORKFLOW_RUNS, lambda tx, now: {"advanced": len(sweep_runs(tx, dispatcher, settings, now))}),
        Duty(WEBHOOK_DELIVERIES, lambda tx, now: {"published": len(sweep_deliveries(tx, dispatcher, settings, now))}),
        Duty(BATCHES, lambda tx, now: {"advanced": len(sweep_batches(tx, dispatcher, settings, now))}),
    )


def record_run(session: Session, name: str, leader: str, at: datetime) -> None:
    """Note in the duty's own transaction that `leader` ran it at `at`. Only the leader writes, so the
    update-or-insert needs no upsert syntax (and works the same on SQLite)."""
    updated = session.connection().execute(
        update(DutyRow).where(DutyRow.name == name).values(leader=leader, last_run_at=at)
    )
    if not updated.rowcount:
        session.execute(insert(DutyRow).values(name=name, leader=leader, last_run_at=at))


@dataclass(frozen=True)
class DutyHealth:
    """What `/readyz` says of the duties: `stale` names each one that has not run for too long."""

    summary: str
    stale: list[str]
    detail: dict[str, dict[str, Any]]


def duty_health(conn: Connection, settings: Settings, *, up_for_s: float) -> DutyHealth:
    """Read the duties table: a duty is stale when it last ran longer than `settings.duty_stale_after` ago.

    A duty that never ran (a fresh database, no worker started yet) counts as stale only once this API
    process has been up for that long too: a deployment whose API comes up before its workers is not
    reported broken, while one with no worker at all is, after the same delay a dead leader would get."""
    limit = settings.duty_stale_after
    now = utcnow()
    rows = {r.name: r for r in conn.execute(select(DutyRow.name, DutyRow.leader, DutyRow.last_run_at))}
    stale: list[str] = []
    waiting: list[str] = []
    detail: dict[str, dict[str, Any]] = {}
    for name in NAMES:
        row = rows.get(name)
        if row is None:
            detail[name] = {"last_run_at": None, "age_s": None, "leader": None}
            (stale if up_for_s > limit else waiting).append(name)
            continue
        age = (now - row.last_run_at).total_seconds()
        detail[name] = {"last_run_at": row.last_run_at.isoformat(), "age_s": round(age, 1), "leader": row.leader}
        if age > limit:
            stale.append(name)
    if stale:
        summary = f"not run for over {limit:g}s: {', '.join(stale)}"
    elif waiting:
        summary = f"waiting for a worker to run {', '.join(waiting)}"
    else:
        summary = "ok"
    return DutyHealth(summary, stale, detail)


class DutyRunner:
    """Competes for the duties' leadership and, while leading, runs every duty each `sweep_interval_s`."""

    def __init__(self, db: Database, dispatcher: DutyDispatcher, settings: Settings, *, role: str) -> None:
        self.db = db
        self.settings = settings
        self.duties = compose(dispatcher, settings)
        self.load = LoadPublisher(settings)
        self.retention = Retention(db, storage_for(settings), settings) if retention_enabled(settings) else None
        # Shown in the duties table and in /readyz: which process did the work.
        self.identity = f"{socket.gethostname()}:{os.getpid()}:{role}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Run in a daemon thread of this process."""
        self._thread = threading.Thread(target=self.run, name="duties", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 0) -> None:
        """Ask the runner to stop (it gives up the leadership after the duty in progress); wait up to
        `timeout` seconds for it."""
        self._stop.set()
        if self._thread is not None and timeout > 0:
            self._thread.join(timeout)

    def run(self) -> None:
        """Compete, lead, and compete again, until stopped."""
        log.info("duties_standing_by", identity=self.identity)
        compete(
            self.db.engine,
            name="duties",
            key=LOCK_KEY,
            lock_file=self.settings.data_dir / LOCK_FILE,
            stop=self._stop,
            lead=self._lead,
        )

    def _lead(self, conn: Connection) -> None:
        next_sweep = next_retention = time.monotonic()
        while not self._stop.is_set():
            if time.monotonic() >= next_sweep:
                self.run_once(conn)
                next_sweep = time.monotonic() + self.settings.sweep_interval_s
            if self.retention is not None and time.monotonic() >= next_retention:
                self.run_retention(conn)
                next_retention = time.monotonic() + self.settings.retention_interval_s
            self.measure_queues(conn)
            wait = min(self.settings.queue_stats_interval_s, max(0.0, next_sweep - time.monotonic()))
            self._stop.wait(wait)

    def measure_queues(self, conn: Connection) -> None:
        """Publish the queues' depth and oldest age for the API processes' load shedding."""
        try:
            with self.db.transaction(bind=conn) as tx:
                self.load.publish(tx.session.connection(), utcnow())
        except Exception:
            if conn.invalidated or conn.closed:
                raise
            log.warning("queue_load_failed", exc_info=True)

    def run_retention(self, conn: Connection) -> None:
        """One retention pass (its steps commit one by one), then recorded in the duties table."""
        if self.retention is None:
            return
        try:
            counts = self.retention.run(conn, utcnow())
            with self.db.transaction(bind=conn) as tx:
                record_run(tx.session, RETENTION, self.identity, utcnow())
        except Exception:
            if conn.invalidated or conn.closed:
                raise
            log.warning("duty_failed", duty=RETENTION, exc_info=True)
            return
        if any(counts.values()):
            log.info("swept", duty=RETENTION, **counts)

    def run_once(self, conn: Connection) -> None:
        """Every duty once, each in its own transaction on the leader's connection, so one that fails (and is
        retried next interval) does not hold back the others. A dead connection ends the leadership."""
        for duty in self.duties:
            try:
                with self.db.transaction(bind=conn) as tx:
                    now = utcnow()
                    counts = duty.run(tx, now)
                    record_run(tx.session, duty.name, self.identity, now)
            except Exception:
                metrics.duty_ran(duty.name, ok=False)
                if conn.invalidated or conn.closed:
                    raise
                log.warning("duty_failed", duty=duty.name, exc_info=True)
                continue
            metrics.duty_ran(duty.name, ok=True)
            if any(counts.values()):
                log.info("swept", duty=duty.name, **counts)


# --- `switchyard scheduler` -------------------------------------------------------------------------------------


def run_scheduler(settings: Settings) -> None:
    """The duties in a process of their own, in the foreground until SIGTERM or SIGINT. The same runner and
    lock as the workers': beside a leading worker it stands by, and it takes over if that worker goes."""
    db = Database(settings, pool_size=2)
    runner = DutyRunner(db, CeleryDispatcher(app), settings, role="scheduler")

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        runner.stop()

    previous: dict[int, Any] = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        runner.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        db.dispose()
