"""The relay: numbers committed events and publishes them on Redis.

Writers insert event rows in their own transactions, which commit in any order; their insert ids therefore
do not tell a reader whether an earlier event might still appear. The relay is the only writer of `seq`: it
takes the committed rows that have none, in insert order, gives them the next numbers, and commits — one
batch at a time. So `seq` grows in the order events become readable, a cursor on it never skips a late
commit, and the one publisher sends them on Redis in that order.

One relay runs at a time, the leader of `core.leader`: on Postgres the one holding a session advisory lock on
its own connection (its batches run on that same connection, so losing the connection loses the lock and the
batch together); on SQLite the one holding a file lock. Every control worker runs a relay thread that waits
to become leader.
In the batch's transaction the relay also derives what events cause, webhook deliveries (`derive`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import structlog
from sqlalchemy import Connection, bindparam, func, select, update
from sqlalchemy.orm import Session

from switchyard.core.db import Database, Tx
from switchyard.core.leader import compete
from switchyard.core.models import EVENTS
from switchyard.events.bus import RESYNC, encode_events, tenant_channel
from switchyard.events.log import COLUMNS, event_view
from switchyard.observability import metrics

log = structlog.get_logger(__name__)

BATCH = 1000
# An arbitrary constant naming the relay's advisory lock.
LOCK_KEY = 0x5377_7964_5265_6C79
_KNOWN_TENANTS = 50_000
_ANY_UNNUMBERED = "SELECT 1 FROM events WHERE seq IS NULL LIMIT 1"


@dataclass(frozen=True)
class RelayedEvent:
    """A numbered event: API.md's view, the tenant, and the seq of the tenant's previous event."""

    tenant_id: str
    view: dict[str, Any]
    prev: int


Derive = Callable[[Tx, list[RelayedEvent]], None]


class EventRelay:
    def __init__(
        self,
        db: Database,
        *,
        redis_url: str | None,
        lock_dir: Path,
        poll_s: float,
        derive: Derive | None = None,
    ) -> None:
        self.db = db
        self.redis = redis.Redis.from_url(redis_url) if redis_url else None
        self.lock_dir = lock_dir
        self.poll_s = poll_s
        self.derive = derive
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_seq: int | None = None
        self._resync_due = False
        # The newest seq published per tenant (the `prev` of its next event).
        self._tenant_seq: OrderedDict[str, int] = OrderedDict()

    # --- running ------------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="event-relay", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.redis is not None:
            self.redis.close()

    def _run(self) -> None:
        compete(
            self.db.engine,
            name="event_relay",
            key=LOCK_KEY,
            lock_file=self.lock_dir / "event-relay.lock",
            stop=self._stop,
            lead=self._lead,
        )

    def _lead(self, conn: Connection) -> None:
        self._last_seq = None
        self._tenant_seq.clear()
        # The leader before may have numbered events it never published.
        self._resync()
        while not self._stop.is_set():
            if self._resync_due:
                self._resync()
            if self._waiting(conn) and self.relay_batch(conn) == BATCH:
                continue  # more are waiting
            self._stop.wait(self.poll_s)

    @staticmethod
    def _waiting(conn: Connection) -> bool:
        """Whether any committed event awaits its number: one probe of the unnumbered-events index, so that
        the polls of an idle system cost next to nothing (a whole batch's work is not)."""
        found = conn.exec_driver_sql(_ANY_UNNUMBERED).first() is not None
        conn.rollback()
        return found

    # --- one batch ----------------------------------------------------------------------------------------------

    def relay_batch(self, conn: Connection) -> int:
        """Number the next batch of committed events, derive their deliveries, commit, publish; the count."""
        with Session(bind=conn) as session:
            tx = Tx(session)
            try:
                relayed = self._number(session)
                if relayed and self.derive is not None:
                    self.derive(tx, relayed)
                session.commit()
            except BaseException:
                session.rollback()
                self._last_seq = None  # re-read: the numbers of the failed batch were not taken
                self._tenant_seq.clear()
                raise
        for tenant_id, view in ((r.tenant_id, r.view) for r in relayed):
            self._tenant_seq[tenant_id] = view["id"]
            self._tenant_seq.move_to_end(tenant_id)
        while len(self._tenant_seq) > _KNOWN_TENANTS:
            self._tenant_seq.popitem(last=False)
        self._publish(relayed)
        if relayed:
            metrics.relayed(len(relayed), relayed[0].view["created_at"])
        for fn in tx._after_commit:
            try:
                fn()
            except Exception:
                log.warning("relay_after_commit_failed", exc_info=True)
        return len(relayed)

    def _number(self, session: Session) -> list[RelayedEvent]:
        rows = list(
            session.execute(
                select(EVENTS.c.id, *COLUMNS).where(EVENTS.c.seq.is_(None)).order_by(EVENTS.c.id).limit(BATCH)
            )
        )
        if not rows:
            return []
        if self._last_seq is None:
            self._last_seq = int(session.scalar(select(func.max(EVENTS.c.seq))) or 0)
        tenants = {r.tenant_id for r in rows}
        previous = {t: self._tenant_seq[t] for t in tenants if t in self._tenant_seq}
        unknown = sorted(tenants - previous.keys())
        if unknown:
            newest = session.execute(
                select(EVENTS.c.tenant_id, func.max(EVENTS.c.seq))
                .where(EVENTS.c.tenant_id.in_(unknown), EVENTS.c.seq.is_not(None))
                .group_by(EVENTS.c.tenant_id)
            )
            previous.update(dict.fromkeys(unknown, 0))
            previous.update({tenant: int(seq) for tenant, seq in newest})
        relayed: list[RelayedEvent] = []
        numbers: list[dict[str, int]] = []
        seq = self._last_seq
        for row in rows:
            seq += 1
            numbers.append({"row_id": row.id, "new_seq": seq})
            view = event_view(row) | {"id": seq}
            relayed.append(RelayedEvent(row.tenant_id, view, previous.get(row.tenant_id, 0)))
            previous[row.tenant_id] = seq
        if session.get_bind().dialect.name == "postgresql":
            # One statement for the batch, not one per event.
            session.connection().exec_driver_sql(
                "UPDATE events SET seq = n.seq FROM unnest(%(ids)s::bigint[], %(seqs)s::bigint[]) AS n(id, seq)"
                " WHERE events.id = n.id",
                {"ids": [n["row_id"] for n in numbers], "seqs": [n["new_seq"] for n in numbers]},
            )
        else:
            session.execute(
                update(EVENTS)
                .where(EVENTS.c.id == bindparam("row_id"))
                .values(seq=bindparam("new_seq"))
                .execution_options(synchronize_session=False),
                numbers,
            )
        self._last_seq = seq
        return relayed

    def _publish(self, relayed: list[RelayedEvent]) -> None:
        if self.redis is None or not relayed:
            return
        by_tenant: dict[str, list[dict[str, Any]]] = {}
        for event in relayed:
            by_tenant.setdefault(event.tenant_id, []).append({**event.view, "prev": event.prev})
        try:
            pipe = self.redis.pipeline(transaction=False)
            for tenant_id, events in by_tenant.items():
                pipe.publish(tenant_channel(tenant_id), encode_events(events))
            pipe.execute()
        except redis.RedisError:
            # Committed and numbered: listeners find them in the table once told to look.
            log.warning("event_publish_failed", exc_info=True)
            self._resync_due = True

    def _resync(self) -> None:
        if self.redis is None:
            return
        try:
            self.redis.publish(RESYNC, b"1")
            self._resync_due = False
        except redis.RedisError:
            self._resync_due = True
