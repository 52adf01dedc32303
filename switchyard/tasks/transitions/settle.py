"""After a task with an admission ends (any way: finished, failed, canceled, abandoned), its reservation is
settled to what it really cost and used. The settler (tenancy.quotas) is installed by the process at start;
settling is idempotent, so a finish path that runs twice settles once."""

from __future__ import annotations

from typing import Any, Protocol

from switchyard.core.db import Tx
from switchyard.tasks.transitions.common import run_after


class Settler(Protocol):
    def settle(self, task_id: str, cost_usd: float, tokens: int | None) -> None:
        """`tokens`: the real input + output tokens (None: unknown, the estimate stays)."""


_settler: list[Settler] = []


def install_settler(settler: Settler | None) -> None:
    """The process's settler (its Redis client), made in the lifespan or worker_process_init."""
    _settler.clear()
    if settler is not None:
        _settler.append(settler)


def tokens_of(usage: dict[str, Any] | None) -> int | None:
    if not usage:
        return None
    return int(usage.get("input_tokens") or 0) + int(usage.get("output_tokens") or 0)


def settle_now(task_id: str, admission: dict[str, Any] | None, cost_usd: float, usage: dict[str, Any] | None) -> None:
    """Settle a committed end (a task without an admission has nothing to settle: no Redis call)."""
    if admission is None or not _settler:
        return
    run_after(_settler[0].settle, task_id, float(cost_usd or 0.0), tokens_of(usage))


def settle_after_commit(
    tx: Tx, task_id: str, admission: dict[str, Any] | None, cost_usd: float, usage: dict[str, Any] | None
) -> None:
    """Settle once the transaction that ended the task has committed."""
    if admission is None or not _settler:
        return
    tx.after_commit(lambda: settle_now(task_id, admission, cost_usd, usage))
