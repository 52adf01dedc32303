"""Counts of what the streams and waiters of one API process hold, each against its limit (no I/O: a dict).

Synchronous waiters — the requests that wait for their task to finish (`/v1/chat/completions`, streamed or not,
`/v1/embeddings`, `/v1/moderations`, `/v1/predict`) — each hold a Redis connection (its BLPOP) or a stream for
their whole wait, so they are counted: past `sync_max_waiters_per_tenant` a tenant's next call is refused with
429, past `sync_max_waiters` anyone's with 503, both with Retry-After, before the task is made, never a hang."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from switchyard.core.errors import RateLimited, ServiceUnavailable

RETRY_AFTER_S = 1


class Waiters:
    """The counts, with the limits they are held to."""

    def __init__(self, total: int, per_tenant: int) -> None:
        self.total = total
        self.per_tenant = per_tenant
        self.count = 0
        self._by_tenant: dict[str, int] = {}

    def enter(self, tenant_id: str) -> None:
        """Count one more waiter of the tenant, or refuse it (429 for the tenant's cap, 503 for the process's)."""
        held = self._by_tenant.get(tenant_id, 0)
        if held >= self.per_tenant:
            refusal = RateLimited(
                f"this tenant already has {self.per_tenant} synchronous calls waiting in this API process; "
                "retry later, or submit with POST /v1/tasks and follow its events",
                code="too_many_waiters",
            )
            refusal.headers["Retry-After"] = str(RETRY_AFTER_S)
            raise refusal
        if self.count >= self.total:
            raise ServiceUnavailable(
                f"this API process already has {self.total} synchronous calls waiting; retry later",
                retry_after_s=RETRY_AFTER_S,
            )
        self._by_tenant[tenant_id] = held + 1
        self.count += 1

    @contextmanager
    def hold(self, tenant_id: str) -> Iterator[None]:
        """A waiter's place for the block (refused as `enter` is)."""
        self.enter(tenant_id)
        try:
            yield
        finally:
            self.leave(tenant_id)

    def leave(self, tenant_id: str) -> None:
        self.count -= 1
        held = self._by_tenant.get(tenant_id, 1) - 1
        if held <= 0:
            self._by_tenant.pop(tenant_id, None)
        else:
            self._by_tenant[tenant_id] = held


class TenantCounter:
    """At most `limit` of something at once per tenant in this process (a WebSocket's replays)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._by_tenant: dict[str, int] = {}

    def try_enter(self, tenant_id: str) -> bool:
        held = self._by_tenant.get(tenant_id, 0)
        if held >= self.limit:
            return False
        self._by_tenant[tenant_id] = held + 1
        return True

    def leave(self, tenant_id: str) -> None:
        held = self._by_tenant.get(tenant_id, 1) - 1
        if held <= 0:
            self._by_tenant.pop(tenant_id, None)
        else:
            self._by_tenant[tenant_id] = held
