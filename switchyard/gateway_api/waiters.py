"""Synchronous waiters: the requests of one API process that wait for their task to finish (`/v1/chat/completions`,
`/v1/embeddings`, `/v1/moderations`, `/v1/predict`). Each holds a Redis connection (its BLPOP) or a stream for
its whole wait, so they are counted: past `sync_max_waiters_per_tenant` a tenant's next call is refused with 429,
past `sync_max_waiters` anyone's with 503, both with Retry-After — before the task is made, never a hang.

Counted in the process (a dict, no I/O): what is bounded is what this process holds."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import Depends, Request, params

from switchyard.gateway_api.deps import _state, principal_of


async def _hold(request: Request) -> AsyncIterator[None]:
    # The default scope: released once the response is sent, a streamed one included.
    principal = await principal_of(request)
    waiters = _state(request).waiters
    waiters.enter(principal.tenant_id)
    try:
        yield
    finally:
        waiters.leave(principal.tenant_id)


def waiter() -> params.Depends:
    """`dependencies=[waiter()]` on a route that waits for its task (after the role check and admission)."""
    depends: params.Depends = Depends(_hold)
    return depends
