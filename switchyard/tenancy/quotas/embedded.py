"""Enforcement in embedded mode (no Redis: SQLite and one API process).

Request and token windows count in this process's memory; calls in flight and budget spend are read from
the database (tasks not yet ended that carry an admission, and the cost of those of the window), plus the
calls this process admitted whose rows are not committed yet. What differs from Redis: token windows keep
the estimate (they are not settled to the real usage), counters restart with the process, and workflow steps
and batch lines, admitted in the worker processes, see budgets (from the database) but not the API's
request windows."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from switchyard.core.db import Database
from switchyard.tenancy.quotas import repository

if TYPE_CHECKING:
    from switchyard.tenancy.quotas.service import Request

# How long an admitted call counts as pending before its row is expected in the database.
_PENDING_S = 60.0


class LocalCounts:
    """The counters of one process; `admit` answers as the Redis script does."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._lock = threading.Lock()
        self._counts: dict[str, tuple[int, float]] = {}
        # task id -> (USD reserved, until when (monotonic), the scopes it counts in)
        self._pending: dict[str, tuple[float, float, frozenset[str]]] = {}

    def pending_usd(self, scope: str) -> float:
        return sum(usd for usd, _, scopes in self._pending.values() if scope in scopes)

    def forget(self, task_id: str) -> None:
        with self._lock:
            self._pending.pop(task_id, None)

    def admit(self, req: Request) -> dict[str, Any]:
        """Check and take the request's windows, all or nothing, under this process's lock."""
        now = time.monotonic()
        with self._lock:
            if len(self._counts) > 10_000:
                self._counts = {k: v for k, v in self._counts.items() if v[1] > now}
            amounts = [req.estimate.tokens if c.kind == "tokens" and req.estimate else 1 for c in req.counters]
            values = []
            for c in req.counters:
                value, until = self._counts.get(c.key, (0, 0.0))
                values.append(value if until > now else 0)
            failed_c = [i for i, c in enumerate(req.counters) if values[i] + amounts[i] > c.limit]
            failed_q: list[int] = []
            failed_b: list[int] = []
            cost = req.estimate.cost_usd if req.estimate else 0.0
            if req.concurrency or req.budgets:
                with self.db.sessions() as session:
                    committed = repository.stored(session, list(self._pending))
                    self._pending = {k: v for k, v in self._pending.items() if k not in committed and v[1] > now}
                    for i, (_, limit, scope) in enumerate(req.concurrency):
                        busy = repository.in_flight(session, scope.kind, scope.id)
                        busy += sum(1 for _, _, scopes in self._pending.values() if scope.name in scopes)
                        if busy + 1 > limit:
                            failed_q.append(i)
                    for i, (scope, window, cap) in enumerate(req.budgets):
                        spent = repository.spent_usd(session, scope.kind, scope.id, window.start, window.end)
                        held = repository.held_usd(session, scope.kind, scope.id, window.start, window.end)
                        if spent + held + self.pending_usd(scope.name) + cost > cap + 1e-12:
                            failed_b.append(i)
            if failed_c or failed_q or failed_b:
                return {"ok": 0, "v": values, "fc": failed_c, "fq": failed_q, "fb": failed_b}
            for i, c in enumerate(req.counters):
                values[i] += amounts[i]
                self._counts[c.key] = (values[i], now + c.reset_s)
            if req.concurrency or req.budgets:
                scopes = frozenset({s.name for s, _, _ in req.budgets} | {s.name for _, _, s in req.concurrency})
                self._pending[req.task_id] = (cost if req.budgets else 0.0, now + _PENDING_S, scopes)
            return {"ok": 1, "v": values}
