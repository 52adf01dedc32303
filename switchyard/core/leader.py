"""Leadership among processes: one holder at a time of a named lock, any number of standbys.

On Postgres the leader holds a session advisory lock on a connection of its own, and does its work on that
same connection. The server releases the lock when the session ends, so a leader that is SIGKILLed, or whose
connection drops, stops leading at once; and since its work runs on the locked connection, it cannot go on
working without the lock: its next statement fails, and it competes again on a new connection. On SQLite
(embedded mode, one machine) the leader holds an exclusive file lock, which the kernel releases when the
process dies.
"""

from __future__ import annotations

import fcntl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import structlog
from sqlalchemy import Connection, Engine, func, select

log = structlog.get_logger(__name__)

# How often a standby tries to take the lock, and how long a failed leader waits before competing again.
RETRY_S = 1.0


@contextmanager
def leadership(engine: Engine, *, key: int, lock_file: Path) -> Iterator[Connection | None]:
    """The locked connection while this process leads, or None when another process holds the lock.

    `key` names the Postgres advisory lock, `lock_file` the file locked on SQLite."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            got = bool(conn.execute(select(func.pg_try_advisory_lock(key))).scalar())
            conn.commit()
            if not got:
                yield None
                return
            try:
                yield conn
            finally:
                _unlock(conn, key)
        return
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield None
            return
        try:
            with engine.connect() as conn:
                yield conn
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _unlock(conn: Connection, key: int) -> None:
    """Give the lock back on a connection that still works (a dead session has released it already)."""
    if conn.invalidated or conn.closed:
        return
    try:
        conn.rollback()
        conn.execute(select(func.pg_advisory_unlock(key)))
        conn.commit()
    except Exception:
        # The connection broke meanwhile; the server ends the session, and its lock, with it.
        conn.invalidate()
        log.warning("leader_unlock_failed", exc_info=True)


def compete(
    engine: Engine,
    *,
    name: str,
    key: int,
    lock_file: Path,
    stop: threading.Event,
    lead: Callable[[Connection], None],
) -> None:
    """Until `stop` is set: wait for the leadership, then run `lead` on the locked connection.

    `lead` returns when `stop` is set; when it raises (the database went away, a bug), the leadership is
    given up and competed for again after a pause, so another process may take over meanwhile."""
    while not stop.is_set():
        try:
            with leadership(engine, key=key, lock_file=lock_file) as conn:
                if conn is None:
                    stop.wait(RETRY_S)
                    continue
                log.info(f"{name}_leading")
                lead(conn)
        except Exception:
            log.warning(f"{name}_failed", exc_info=True)
            stop.wait(RETRY_S)
