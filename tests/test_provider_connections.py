"""Provider connections the server closes: a kept-alive connection the server closed while it sat idle is never
a failed attempt (issue 17: under load, the pool reused connections uvicorn had closed after its 5 s keep-alive,
and a task in 2,000 failed after three attempts), and a server that drops every request is reported as a
connection failure, not as a timeout. The servers here are raw sockets that misbehave on purpose: the edge of the
world, where a real provider's keep-alive timer lives. `bench/benchmarks/slow_calls.py` is the load run."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Awaitable, Callable

import pytest

from switchyard.core.config import ProviderConfig
from switchyard.core.errors import ProviderError
from switchyard.providers.anthropic_adapter import AnthropicAdapter
from switchyard.providers.openai_adapter import OpenAIAdapter
from tests.processes import free_port

CHAT = {
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "hi"}}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}  # fmt: skip
MESSAGE = {
    "id": "msg_1", "type": "message", "role": "assistant", "model": "m", "stop_reason": "end_turn",
    "content": [{"type": "text", "text": "hi"}], "usage": {"input_tokens": 1, "output_tokens": 1},
}  # fmt: skip
REQUEST = {"messages": [{"role": "user", "content": "hi"}]}

# (connection number, request number on it) -> answer it (True) or close the connection unanswered (False).
Policy = Callable[[int, int], bool]


def _length(head: bytes) -> int:
    """The Content-Length of a request head."""
    return next(int(v.split(b":")[1]) for v in head.split(b"\r\n") if v.lower().startswith(b"content-length"))


class Server:
    """HTTP/1.1 with keep-alive, answering each request with `body` unless `policy` says to close instead."""

    def __init__(self, body: dict[str, object], policy: Policy) -> None:
        self.body = json.dumps(body).encode()
        self.policy = policy
        self.connections = 0
        self.answered = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number, n = self.connections, 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(_length(head))
                n += 1
                if not self.policy(number, n):
                    return  # closes: the request is never answered
                head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
                writer.write(head % len(self.body) + self.body)
                await writer.drain()
                self.answered += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def _serve(server: Server, calls: Callable[[str], Awaitable[None]]) -> None:
    listening = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    try:
        await calls(f"http://127.0.0.1:{listening.sockets[0].getsockname()[1]}")
    finally:
        listening.close()


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_a_kept_alive_connection_the_server_closed_is_not_a_failed_call(kind: str) -> None:
    # The server closes each connection when its second request arrives, as a server whose keep-alive timer
    # fires just as the request comes. The call goes again on a new connection: no error reaches the router.
    server = Server(CHAT if kind == "openai" else MESSAGE, lambda _conn, n: n == 1)

    async def calls(url: str) -> None:
        if kind == "openai":
            adapter: OpenAIAdapter | AnthropicAdapter = OpenAIAdapter(
                ProviderConfig(kind="openai", base_url=f"{url}/v1", api_key="x")
            )
        else:
            adapter = AnthropicAdapter(ProviderConfig(kind="anthropic", base_url=url, api_key="x"))
        try:
            for _ in range(3):
                result = await adapter.achat("m", REQUEST, 5)
                assert result.output["content"] == "hi"
        finally:
            await adapter.aclose()

    asyncio.run(_serve(server, calls))
    assert server.answered == 3
    assert server.connections == 3


def test_an_idle_connection_closed_while_the_loop_was_busy_is_not_reused() -> None:
    # The server closes idle connections after 0.2 s; the client's loop is busy meanwhile, so aiohttp has not read
    # the close when the next call takes a connection. The pool asks the socket and opens a new one instead.
    server = Server(CHAT, lambda _conn, n: True)

    async def close_idle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server.connections += 1
        head = await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(_length(head))
        head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
        writer.write(head % len(server.body) + server.body)
        await writer.drain()
        server.answered += 1
        await asyncio.sleep(0.2)  # the keep-alive timeout
        writer.close()

    server.handle = close_idle  # type: ignore[method-assign]
    errors: list[str] = []

    async def calls(url: str) -> None:
        adapter = OpenAIAdapter(ProviderConfig(kind="openai", base_url=f"{url}/v1", api_key="x"))
        try:
            await adapter.achat("m", REQUEST, 5)
            # The loop is busy (blocked) while the server closes: its FIN waits, unread by aiohttp.
            time.sleep(0.5)  # noqa: ASYNC251 - the point: a loop too busy to read the socket
            try:
                await adapter.achat("m", REQUEST, 5)
            except ProviderError as exc:
                errors.append(exc.message)
        finally:
            await adapter.aclose()

    # The server runs on a loop of its own thread: blocking the client's loop must not stop it closing.
    server_loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, str] = {}

    async def start() -> None:
        listening = await asyncio.start_server(close_idle, "127.0.0.1", 0)
        holder["url"] = f"http://127.0.0.1:{listening.sockets[0].getsockname()[1]}"
        ready.set()

    thread = threading.Thread(target=server_loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), server_loop)
    assert ready.wait(5)
    try:
        asyncio.run(calls(holder["url"]))
    finally:
        server_loop.call_soon_threadsafe(server_loop.stop)
        thread.join(5)
    assert errors == []
    assert server.answered == 2
    assert server.connections == 2


def test_a_server_that_drops_every_request_is_a_connection_failure_not_a_timeout() -> None:
    server = Server(CHAT, lambda _conn, _n: False)

    async def calls(url: str) -> None:
        adapter = OpenAIAdapter(ProviderConfig(kind="openai", base_url=f"{url}/v1", api_key="x"))
        try:
            with pytest.raises(ProviderError) as caught:
                await adapter.achat("m", REQUEST, 5)
        finally:
            await adapter.aclose()
        assert caught.value.error_type == "provider_error"
        assert caught.value.message.startswith("connection failed: ")
        assert "disconnected" in caught.value.message.lower()
        assert caught.value.retryable

    asyncio.run(_serve(server, calls))
    # A new connection that fails is not sent again by the transport: the router decides (one request).
    assert server.connections == 1


def test_a_connection_error_does_not_name_where_the_provider_lives() -> None:
    # Issue 17: the attempt's error is read by the tenant; the host, port and addresses are the server's.
    port = free_port()  # nothing listens there

    async def call() -> ProviderError:
        adapter = OpenAIAdapter(ProviderConfig(kind="openai", base_url=f"http://localhost:{port}/v1", api_key="x"))
        try:
            with pytest.raises(ProviderError) as caught:
                await adapter.achat("m", REQUEST, 5)
        finally:
            await adapter.aclose()
        return caught.value

    error = asyncio.run(call())
    assert error.message.startswith("connection failed: "), error.message
    assert error.retryable
    for secret in ("localhost", str(port), "127.0.0.1", "::1"):
        assert secret not in error.message, error.message
