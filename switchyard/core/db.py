"""Engines and transactions. Transactions live at the edges (request dependency, Celery task wrapper):
services and repositories only flush. Work that must follow the commit — publishing a message that names
a new row — is registered with `after_commit` and dropped on rollback."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from switchyard.settings import Settings

log = structlog.get_logger(__name__)

# `session.info` key set by `events.log.append_event`: the transaction wrote events, so its commit is worth a
# nudge to the relay that numbers and publishes them.
WROTE_EVENTS = "switchyard.wrote_events"


def make_engine(settings: Settings, *, pool_size: int | None = None) -> Engine:
    """An engine for the configured database; SQLite gets WAL and a busy timeout so processes can share it."""
    url = settings.sqlalchemy_url
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    # No pre-ping: it costs a round trip per checkout. A connection that died is invalidated when it fails
    # (the request gets a 503 and the pool is refreshed); recycling retires connections before servers do.
    return create_engine(
        url,
        pool_size=pool_size or settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_recycle=1800,
        pool_timeout=30,
    )


@dataclass
class Tx:
    """A session plus the callbacks that run once its transaction has committed."""

    session: Session
    _after_commit: list[Callable[[], None]] = field(default_factory=list)

    def after_commit(self, fn: Callable[[], None]) -> None:
        """Run `fn` after a successful commit (never on rollback)."""
        self._after_commit.append(fn)


class Database:
    """Owns the engine and the session factory of one process."""

    def __init__(
        self,
        settings: Settings,
        *,
        pool_size: int | None = None,
        on_events_committed: Callable[[], None] | None = None,
    ) -> None:
        self.engine = make_engine(settings, pool_size=pool_size)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        # Called after a commit that wrote events (the relay is woken rather than left to its polling).
        self.on_events_committed = on_events_committed
        self.is_postgres = self.engine.dialect.name == "postgresql"

    @contextmanager
    def autocommit(self) -> Iterator[Connection]:
        """A connection whose every statement commits by itself: one round trip for a single-statement
        transition (a data-modifying CTE), no BEGIN and COMMIT around it."""
        with self.engine.connect() as conn:
            yield conn.execution_options(isolation_level="AUTOCOMMIT")

    def events_committed(self) -> None:
        """Tell the relay that a statement run outside `transaction` committed events."""
        if self.on_events_committed is not None:
            try:
                self.on_events_committed()
            except Exception:
                log.warning("after_commit_failed", exc_info=True)

    @contextmanager
    def transaction(self, *, bind: Connection | None = None) -> Iterator[Tx]:
        """Commit on success, roll back on error; after-commit work runs outside the transaction.

        `bind` runs it on a connection the caller holds (a leader's, whose lock lives in that session)
        instead of one from the pool."""
        with self.sessions() if bind is None else self.sessions(bind=bind) as session:
            tx = Tx(session)
            try:
                yield tx
                session.commit()
            except BaseException:
                session.rollback()
                raise
            wrote_events = session.info.pop(WROTE_EVENTS, False)
        if wrote_events and self.on_events_committed is not None:
            tx._after_commit.append(self.on_events_committed)
        for fn in tx._after_commit:
            try:
                fn()
            except Exception:
                # The row is committed; the sweeper publishes what could not be published now.
                log.warning("after_commit_failed", exc_info=True)

    def dispose(self) -> None:
        self.engine.dispose()
