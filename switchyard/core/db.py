"""Engines and transactions. Transactions live at the edges (request dependency, Celery task wrapper):
services and repositories only flush. Work that must follow the commit — publishing a message that names
a new row — is registered with `after_commit` and dropped on rollback."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog
from psycopg_pool import AsyncConnectionPool
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker

from switchyard.core.db_errors import install_terse_errors
from switchyard.settings import Settings

log = structlog.get_logger(__name__)


def make_engine(settings: Settings, *, pool_size: int | None = None) -> Engine:
    """An engine for the configured database; SQLite gets WAL and a busy timeout so processes can share it."""
    url = settings.sqlalchemy_url
    if url.startswith("sqlite"):
        # hide_parameters: a database error's message (logged, raised) names the statement, never the values
        # bound to it (prompts, answers).
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, hide_parameters=True)

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
    engine = create_engine(
        url,
        pool_size=pool_size or settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_recycle=1800,
        pool_timeout=30,
        connect_args={"connect_timeout": settings.db_connect_timeout_s},
        # JSONB values (inputs, results, event data) are written on every transition: orjson encodes them
        # several times faster than the standard library.
        json_serializer=_json_text,
        hide_parameters=True,
    )
    # hide_parameters covers the values SQLAlchemy prints; Postgres quotes data in its own messages too.
    install_terse_errors(engine)
    return engine


def lock_for_update(session: Session) -> None:
    """Call before a `SELECT … FOR UPDATE` whose rows the transaction then changes. SQLite has no row locks and
    drops FOR UPDATE, so two processes advancing one workflow run could both read it unchanged and both act
    (a step's event written twice): there, an empty write takes the database's write lock now, and what is read
    next cannot change before this transaction ends. On Postgres it does nothing (the row lock does the work)."""
    if session.get_bind().dialect.name == "sqlite":
        session.execute(text("UPDATE duties SET name = name WHERE 0"))


def _json_text(value: Any) -> str:
    try:
        return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        # An integer past 64 bits (orjson's bound; JSONB numbers have none): written by the standard library.
        return json.dumps(value, ensure_ascii=False, default=str)


@dataclass
class Tx:
    """A session plus the callbacks that run once its transaction has committed."""

    session: Session
    _after_commit: list[Callable[[], None]] = field(default_factory=list)
    _on_rollback: list[Callable[[], None]] = field(default_factory=list)

    def after_commit(self, fn: Callable[[], None]) -> None:
        """Run `fn` after a successful commit (never on rollback)."""
        self._after_commit.append(fn)

    def on_rollback(self, fn: Callable[[], None]) -> None:
        """Run `fn` when the transaction rolls back (undoing what was taken outside it, such as a reservation)."""
        self._on_rollback.append(fn)


def async_pool(settings: Settings) -> AsyncConnectionPool | None:
    """Postgres only: an asyncio pool of autocommit connections, for the single-statement transitions an async
    route runs itself (no thread hop, no ORM). Opened by the owner (`await pool.open()`)."""
    url = settings.database_url
    if not url.startswith(("postgresql", "postgres:")):
        return None
    return AsyncConnectionPool(
        url.replace("postgresql+psycopg://", "postgresql://"),
        min_size=1,
        max_size=settings.db_pool_size,
        kwargs={"autocommit": True, "connect_timeout": settings.db_connect_timeout_s},
        # A request waits this long for a connection; with the database down none comes, and it is a 503
        # (PoolTimeout) while the client still waits, not after psycopg_pool's default of 30 s.
        timeout=2.0 * settings.db_connect_timeout_s,
        # A connection that cannot be made is retried with a doubling delay until this, then dropped; the next
        # request that needs one starts again at a 1 s delay. psycopg_pool's default (5 minutes) lets the delay
        # grow past a minute during an outage, and the pool stays empty that long after the database is back.
        reconnect_timeout=2.0 * settings.db_connect_timeout_s,
        open=False,
    )


class Database:
    """Owns the engine and the session factory of one process."""

    def __init__(
        self,
        settings: Settings,
        *,
        pool_size: int | None = None,
    ) -> None:
        self.engine = make_engine(settings, pool_size=pool_size)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.is_postgres = self.engine.dialect.name == "postgresql"

    @contextmanager
    def autocommit(self) -> Iterator[Connection]:
        """A connection whose every statement commits by itself: one round trip for a single-statement
        transition (a data-modifying CTE), no BEGIN and COMMIT around it."""
        with self.engine.connect() as conn:
            yield conn.execution_options(isolation_level="AUTOCOMMIT")

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
                for undo in tx._on_rollback:
                    try:
                        undo()
                    except Exception:
                        log.warning("on_rollback_failed", exc_info=True)
                raise
        for fn in tx._after_commit:
            try:
                fn()
            except Exception:
                # The row is committed; the sweeper publishes what could not be published now.
                log.warning("after_commit_failed", exc_info=True)

    def dispose(self) -> None:
        self.engine.dispose()
