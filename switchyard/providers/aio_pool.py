"""The SDKs' aiohttp transport, with a pool that never hands out a connection the server has already closed.

A server closes a keep-alive connection that sat idle for its timeout (uvicorn's and vLLM's: 5 s). Our pool
drops idle connections sooner (`keepalive_expiry`, 4 s), but it counts idle time from when *our* event loop
released the connection, and a worker loop running a thousand calls releases a connection seconds after the
server finished its answer. So the pool could hand out a connection the server closed a while ago: aiohttp only
learns of the close when the loop reads the socket, and a busy loop has not yet. The request then failed with
"Server disconnected" or a reset — an attempt lost, and when every idle connection of a wave had gone stale
together, the retries picked stale ones too (issue 17: a task in 2,000 failed after three attempts).

Two remedies. Before reusing an idle connection, ask the socket itself (a poll with no wait, as urllib3 and
httpcore do) whether anything arrived: on an idle HTTP/1.1 connection nothing may arrive but the server's close,
so a readable socket is never reused (one poll syscall per reuse, about 2 µs). That does not close the race: the
server may close just after the check, before a busy loop gets the request written. So a request that fails on a
*reused* connection before any answer (the server disconnected, a reset while writing) is sent once more, on a
new connection — what HTTP clients do for a connection the server closed while idle. It adds no risk the router
did not take already: it retries such connection errors itself, only later and as a failed attempt.
"""

from __future__ import annotations

import contextvars
import select
from typing import Any

import aiohttp
import httpx2
from aiohttp.client import ClientSession

__all__ = ["CheckedConnector", "checked_transport", "server_closed"]

# Set by the connector for the request being sent (aiohttp acquires the connection in the caller's task): whether
# it got an idle connection, and whether it must open a new one (the retry after a reused one failed).
_reused: contextvars.ContextVar[bool] = contextvars.ContextVar("sy_aio_reused", default=False)
_fresh: contextvars.ContextVar[bool] = contextvars.ContextVar("sy_aio_fresh", default=False)


def server_closed(protocol: Any) -> bool:
    """Whether an idle connection's socket has something to read: the server's close, not yet seen by the loop."""
    transport = getattr(protocol, "transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return False
    try:
        fd = sock.fileno()
    except (OSError, ValueError):
        return True
    if fd < 0:
        return True
    # poll, not select: a worker holds thousands of sockets, beyond select's 1,024.
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLPRI)
    return bool(poller.poll(0))


class CheckedConnector(aiohttp.TCPConnector):
    """A TCPConnector whose reused connections are checked for a close the loop has not read yet."""

    async def _get(self, key: Any, traces: list[Any]) -> Any:
        if _fresh.get():
            return None  # a new connection, whatever is idle
        while True:
            conn = await super()._get(key, traces)
            if conn is None:
                return None
            if not server_closed(conn.protocol):
                _reused.set(True)
                return conn
            conn.close()  # closed on the server's side: drop it, try the next idle one (or open one)


def _closed_by_server(exc: BaseException) -> bool:
    """A failure that means the server closed the connection (not a timeout, not a refused connect)."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, aiohttp.ServerTimeoutError | aiohttp.ClientConnectorError):
            return False
        if isinstance(cause, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError | ConnectionResetError):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def checked_transport(transport_cls: type[Any], limits: httpx2.Limits) -> Any:
    """An SDK's vendored `AiohttpTransport` (`transport_cls`) whose session pools through CheckedConnector.

    Each SDK vendors its own copy of the transport, with its own map of aiohttp's exceptions to httpx's, so the
    class comes from the SDK the client is for."""

    class Transport(transport_cls):  # type: ignore[misc]
        async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
            reused, fresh = _reused.set(False), _fresh.set(False)
            try:
                try:
                    response: httpx2.Response = await super().handle_async_request(request)
                    return response
                except Exception as exc:
                    # Raised before the answer's status line: the request may go again if its body can.
                    if not (_reused.get() and _closed_by_server(exc) and _replayable(request)):
                        raise
                _fresh.set(True)
                again: httpx2.Response = await super().handle_async_request(request)
                return again
            finally:
                _reused.reset(reused)
                _fresh.reset(fresh)

    transport = Transport(limits=limits)

    def session() -> ClientSession:
        # What the transport would have built itself, with the connector swapped: made on first use, inside the
        # loop that will run it.
        connector = CheckedConnector(
            keepalive_timeout=limits.keepalive_expiry,
            ssl=transport.ssl_context,
            limit=limits.max_connections or 0,
        )
        return ClientSession(connector=connector)

    transport.client = session
    return transport


def _replayable(request: httpx2.Request) -> bool:
    """A body already in memory (the SDKs' JSON) can be sent again; a stream cannot."""
    try:
        request.content  # noqa: B018 - raises when the body is a stream not yet read
    except httpx2.RequestNotRead:
        return False
    return True
