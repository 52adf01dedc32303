"""Issue 17, the streams: per-tenant caps on SSE streams, WebSocket subscriptions, frame sizes and unanswered
client frames, synchronous waiters and request heads (a 429/503 with Retry-After or a close code, never a hang);
`?api_key=` only on the WebSocket handshake, tickets for EventSource; a revoked key's open streams closed; and
webhook signing secrets rotated with an overlap window, verified with `standardwebhooks`.

A stack of its own with low caps, and no provider worker: tasks stay queued, so their streams stay open and
synchronous calls keep waiting."""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import psycopg
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.support import Stack, chat, wait_until
from tests.test_webhooks import Receiver

ENV = {
    "SWITCHYARD_WEBHOOK_ALLOW_PRIVATE": "true",
    "SWITCHYARD_SSE_MAX_STREAMS_PER_TENANT": "5",
    "SWITCHYARD_WS_MAX_SUBSCRIPTIONS": "5",
    "SWITCHYARD_WS_MAX_PENDING_FRAMES": "8",
    "SWITCHYARD_WS_MAX_REPLAYS_PER_TENANT": "2",
    "SWITCHYARD_WS_SEND_TIMEOUT_S": "2",
    "SWITCHYARD_SYNC_MAX_WAITERS_PER_TENANT": "2",
    "SWITCHYARD_SYNC_WAIT_S": "20",
    # Revocations must reach open streams over the invalidation channel, not by the periodic look.
    "SWITCHYARD_STREAM_KEY_RECHECK_S": "120",
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("stream-limits"), redis_db=4, provider_worker=False, ml=False, env=ENV)
    yield s
    s.close()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.start()
    yield r
    r.stop()


def ws_url(stack: Stack, query: str = "") -> str:
    return stack.url.replace("http://", "ws://") + "/v1/ws" + query


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def tenant_keys(stack: Stack, role: str = "viewer") -> tuple[str, str]:
    """An admin key and a key of `role` of a new tenant."""
    tenant = f"streams-{secrets.token_hex(4)}"
    return stack.new_key(tenant, "admin"), stack.new_key(tenant, role)


def queued_task(stack: Stack, key: str, **extra: Any) -> str:
    """A task that stays queued (this stack has no provider worker): its streams stay open."""
    body = {"type": "chat", "model": "chat-default", "input": chat(f"wait {secrets.token_hex(3)}"), **extra}
    with stack.client(key) as client:
        response = client.post("/v1/tasks", json=body)
    assert response.status_code == 202, response.text
    task_id: str = response.json()["id"]
    return task_id


async def recv_json(ws: ClientConnection, within: float = 10) -> dict[str, Any]:
    frame: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), within))
    return frame


async def until_closed(ws: ClientConnection, within: float = 10) -> tuple[list[dict[str, Any]], int | None]:
    """The frames received until the server closes the connection, and its close code (TimeoutError when it
    stays open)."""
    frames: list[dict[str, Any]] = []
    try:
        while True:
            frames.append(await recv_json(ws, within))
    except ConnectionClosed as closed:
        return frames, closed.rcvd.code if closed.rcvd else None


# --- caps -----------------------------------------------------------------------------------------------------------


def test_sse_streams_per_tenant_are_capped_with_429_and_retry_after(stack: Stack) -> None:
    admin, viewer = tenant_keys(stack)
    task_id = queued_task(stack, admin)
    path = f"/v1/tasks/{task_id}/events"

    async def scenario() -> None:
        async with httpx.AsyncClient(base_url=stack.url, headers=bearer(viewer), timeout=10) as client:
            streams = []
            for _ in range(5):
                opened = client.stream("GET", path)
                response = await opened.__aenter__()
                assert response.status_code == 200
                streams.append(opened)
            async with client.stream("GET", path) as refused:
                assert refused.status_code == 429
                assert refused.headers["retry-after"] == "5"
                error = json.loads(await refused.aread())["error"]
                assert error["type"] == "rate_limit_error"
                assert error["code"] == "too_many_streams"
            # Another tenant is not held back by this one's streams.
            other_admin, _ = tenant_keys(stack)
            other_task = queued_task(stack, other_admin)
            async with client.stream("GET", f"/v1/tasks/{other_task}/events", headers=bearer(other_admin)) as other:
                assert other.status_code == 200
            # A closed stream gives its slot back.
            await streams.pop().__aexit__(None, None, None)
            deadline = time.monotonic() + 10
            while True:
                async with client.stream("GET", path) as again:
                    if again.status_code == 200:
                        break
                assert time.monotonic() < deadline, "the closed stream's slot was not given back"
                await asyncio.sleep(0.3)
            for opened in streams:
                await opened.__aexit__(None, None, None)

    asyncio.run(scenario())


def test_websocket_subscriptions_per_connection_are_capped(stack: Stack) -> None:
    admin, viewer = tenant_keys(stack)
    tasks = [queued_task(stack, admin) for _ in range(6)]

    async def scenario() -> list[dict[str, Any]]:
        async with connect(ws_url(stack), additional_headers=bearer(viewer)) as ws:
            answers = []
            for task_id in tasks:
                await ws.send(json.dumps({"action": "subscribe", "task_id": task_id}))
                answers.append(await recv_json(ws))
            # Subscribing again to one it has is not a new subscription; after an unsubscribe there is room.
            await ws.send(json.dumps({"action": "subscribe", "task_id": tasks[0]}))
            answers.append(await recv_json(ws))
            await ws.send(json.dumps({"action": "unsubscribe", "task_id": tasks[0]}))
            answers.append(await recv_json(ws))
            await ws.send(json.dumps({"action": "subscribe", "task_id": tasks[5]}))
            answers.append(await recv_json(ws))
            return answers

    answers = asyncio.run(scenario())
    assert [a["type"] for a in answers[:5]] == ["subscribed"] * 5
    assert answers[5]["type"] == "error", answers[5]
    assert answers[5]["code"] == "too_many_subscriptions"
    assert "5 subscriptions" in answers[5]["message"]
    assert [a["type"] for a in answers[6:]] == ["subscribed", "unsubscribed", "subscribed"]


def test_a_websocket_frame_over_64_kib_closes_the_connection_with_1009(stack: Stack) -> None:
    _, viewer = tenant_keys(stack)

    async def scenario() -> int | None:
        async with connect(ws_url(stack), additional_headers=bearer(viewer), max_size=None) as ws:
            await ws.send(json.dumps({"action": "ping", "pad": "x" * 60_000}))
            assert await recv_json(ws) == {"type": "pong"}  # under the bound: answered
            await ws.send(json.dumps({"action": "ping", "pad": "x" * 100_000}))
            with pytest.raises(ConnectionClosed) as closed:
                await recv_json(ws)
            return closed.value.rcvd.code if closed.value.rcvd else None

    assert asyncio.run(scenario()) == 1009


def test_a_client_flooding_frames_is_closed_with_1008_not_buffered(stack: Stack) -> None:
    _, viewer = tenant_keys(stack)

    async def scenario() -> tuple[int | None, list[dict[str, Any]]]:
        async with connect(ws_url(stack), additional_headers=bearer(viewer)) as ws:
            try:
                # Each subscribe is a database look-up: far slower to answer than to send.
                for i in range(2000):
                    await ws.send(json.dumps({"action": "subscribe", "task_id": f"task_{i:026d}"}))
            except ConnectionClosed:
                pass
            frames, code = await until_closed(ws, within=15)
            return code, frames

    code, frames = asyncio.run(scenario())
    assert code == 1008
    assert len(frames) < 2000
    assert "too many frames" in frames[-1]["message"]


def _masked_text_frame(payload: bytes) -> bytes:
    """A client's WebSocket text frame (clients must mask), for a client written on a bare socket."""
    mask = secrets.token_bytes(4)
    size = len(payload)
    head = bytes([0x81]) + (
        bytes([0x80 | size])
        if size < 126
        else bytes([0x80 | 126]) + size.to_bytes(2, "big")
        if size < 65536
        else bytes([0x80 | 127]) + size.to_bytes(8, "big")
    )
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def test_a_client_that_stops_reading_is_let_go_not_buffered_for(stack: Stack) -> None:
    _, viewer = tenant_keys(stack)
    host, port = stack.url.removeprefix("http://").split(":")
    # A bare socket that never reads (a client library would keep reading into its own buffers).
    conn = socket.socket()
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: no window scaling past it
    conn.settimeout(30)
    conn.connect((host, int(port)))
    conn.sendall(
        b"GET /v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        + f"Authorization: Bearer {viewer}\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += conn.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    try:
        # Each unknown id comes back in its error frame: ~50 KB an answer, until the server's buffers are full
        # and its sends wait (paced, so that the answers, not the frames, pile up).
        for i in range(100):
            frame = json.dumps({"action": "subscribe", "task_id": f"task_{i}" + "x" * 50_000}).encode()
            conn.sendall(_masked_text_frame(frame))
            time.sleep(0.03)
    except OSError:
        pass  # already let go
    time.sleep(5)  # SWITCHYARD_WS_SEND_TIMEOUT_S is 2
    # Now read: what was sent, then the end of the connection — the server gave up on this client.
    conn.settimeout(15)
    received = 0
    try:
        while chunk := conn.recv(1 << 20):
            received += len(chunk)
    except TimeoutError:
        pytest.fail(f"the connection is still open after {received} bytes: the server kept waiting on its client")
    except OSError:
        pass  # reset: let go as well
    finally:
        conn.close()
    assert received < 100 * 50_000  # not every answer was kept for it


def test_websocket_replays_per_tenant_are_capped(stack: Stack) -> None:
    admin, viewer = tenant_keys(stack)
    queued_task(stack, admin)  # an event to replay, once the relay has numbered it (a feed at 0 replays nothing)
    with stack.client(admin) as api:
        wait_until(lambda: api.get("/v1/events").json()["data"], timeout=30, what="the event to be numbered")

    async def subscribe_since(ws: ClientConnection) -> dict[str, Any]:
        await ws.send(json.dumps({"action": "subscribe", "all": True, "since": 0}))
        return await recv_json(ws)

    async def scenario() -> list[dict[str, Any]]:
        url = ws_url(stack)
        async with (
            connect(url, additional_headers=bearer(viewer)) as first,
            connect(url, additional_headers=bearer(viewer)) as second,
            connect(url, additional_headers=bearer(viewer)) as third,
        ):
            # While the events table is locked, a replay waits on its first page: the two running ones hold the
            # tenant's two places (SWITCHYARD_WS_MAX_REPLAYS_PER_TENANT), and the third is refused.
            with psycopg.connect(stack.database_url) as conn:
                conn.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
                answers = [await subscribe_since(first), await subscribe_since(second)]
                await asyncio.sleep(0.5)
                answers.append(await subscribe_since(third))
            # The lock is gone: the replays end and give their places back.
            for ws in (first, second):
                replayed = await recv_json(ws)
                assert replayed["type"] == "task.queued", replayed
            await asyncio.sleep(0.5)
            answers.append(await subscribe_since(third))
            return answers

    answers = asyncio.run(scenario())
    assert [a["type"] for a in answers[:2]] == ["subscribed", "subscribed"], answers
    refused = answers[2]
    assert refused["type"] == "error", refused
    assert refused["code"] == "too_many_replays"
    assert refused["param"] == "since"
    assert refused["retry_after"] == 1
    assert answers[3]["type"] == "subscribed", answers[3]


def test_synchronous_waiters_per_tenant_are_capped_with_429(stack: Stack) -> None:
    _, member = tenant_keys(stack, "member")
    nonce = secrets.token_hex(4)
    body = {"model": "chat-default", "messages": [{"role": "user", "content": f"wait for me {nonce}"}]}
    waiting: list[int] = []

    def wait_call() -> None:
        with httpx.Client(base_url=stack.url, headers=bearer(member), timeout=60) as client:
            waiting.append(client.post("/v1/chat/completions", json=body).status_code)

    threads = [threading.Thread(target=wait_call, daemon=True) for _ in range(2)]
    for thread in threads:
        thread.start()
    sdk = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=member, max_retries=0, timeout=10)

    def both_waiting() -> bool:
        # A waiter's task is made once its place is taken: two tasks, two places held.
        rows = stack.sql("SELECT count(*) FROM tasks WHERE input::text LIKE %s", f"%wait for me {nonce}%")
        return bool(rows[0][0] >= 2)

    wait_until(both_waiting, timeout=20, what="the two waiters' tasks")

    def refused() -> openai.RateLimitError | None:
        try:
            # Not refused (a place came free): this call waits too, and times out on our side.
            sdk.with_options(timeout=1).chat.completions.create(**body)
        except openai.RateLimitError as exc:
            return exc
        except openai.APITimeoutError:
            return None
        raise AssertionError("a chat completion finished on a stack without a provider worker")

    error = wait_until(refused, timeout=20, what="a third waiter to be refused")
    assert error.status_code == 429
    assert error.response.headers["retry-after"] == "1"
    assert error.response.json()["error"]["code"] == "too_many_waiters"
    # The waiters end (504 after SWITCHYARD_SYNC_WAIT_S) and free their places.
    for thread in threads:
        thread.join(40)
    assert waiting == [504, 504]


def test_a_request_head_over_the_limit_is_refused_with_431(stack: Stack) -> None:
    host, port = stack.url.removeprefix("http://").split(":")

    def head(size: int) -> bytes:
        with socket.create_connection((host, int(port)), timeout=10) as conn:
            request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * size + b"\r\n\r\n"
            try:
                conn.sendall(request)
            except OSError:
                pass  # refused while it was still being sent: the answer is read below
            return conn.recv(200)

    assert head(8_000).startswith(b"HTTP/1.1 200")
    assert head(1_000_000).startswith(b"HTTP/1.1 431")


# --- keys in URLs, tickets ----------------------------------------------------------------------------------------


def test_api_key_in_the_query_is_refused_on_http_routes_but_works_on_the_websocket(stack: Stack) -> None:
    admin, viewer = tenant_keys(stack)
    task_id = queued_task(stack, admin)
    for headers in ({}, bearer(viewer)):
        response = httpx.get(f"{stack.url}/v1/tasks/{task_id}", params={"api_key": viewer}, headers=headers)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == "api_key"
        assert "only on the WebSocket handshake" in error["message"]
    with httpx.stream("GET", f"{stack.url}/v1/tasks/{task_id}/events", params={"api_key": viewer}) as sse:
        assert sse.status_code == 400

    async def websocket() -> dict[str, Any]:
        async with connect(ws_url(stack, f"?api_key={viewer}")) as ws:
            await ws.send(json.dumps({"action": "ping"}))
            return await recv_json(ws)

    assert asyncio.run(websocket()) == {"type": "pong"}  # API.md: `?api_key=` on the WebSocket


def test_a_ticket_opens_one_sse_stream_or_websocket_once(stack: Stack) -> None:
    admin, viewer = tenant_keys(stack)
    task_id = queued_task(stack, admin)

    def ticket() -> str:
        response = httpx.post(f"{stack.url}/v1/ws/ticket", headers=bearer(viewer))
        assert response.status_code == 201, response.text
        assert response.json()["expires_in"] == 30
        value: str = response.json()["ticket"]
        return value

    sse_ticket = ticket()
    url = f"{stack.url}/v1/tasks/{task_id}/events"
    with httpx.stream("GET", url, params={"ticket": sse_ticket}, timeout=10) as sse:
        assert sse.status_code == 200
        assert sse.headers["content-type"].startswith("text/event-stream")
    with httpx.stream("GET", url, params={"ticket": sse_ticket}, timeout=10) as again:
        assert again.status_code == 401  # single use
        assert "ticket" in json.loads(again.read())["error"]["message"]
    # A ticket is for the streams only.
    assert httpx.get(f"{stack.url}/v1/tasks/{task_id}", params={"ticket": ticket()}).status_code == 401

    ws_ticket = ticket()

    async def websocket() -> dict[str, Any]:
        async with connect(ws_url(stack, f"?ticket={ws_ticket}")) as ws:
            await ws.send(json.dumps({"action": "subscribe", "task_id": task_id}))
            return await recv_json(ws)

    assert asyncio.run(websocket())["type"] == "subscribed"
    with pytest.raises(InvalidStatus) as reused:
        asyncio.run(websocket())
    assert reused.value.response.status_code == 401


# --- revocation -----------------------------------------------------------------------------------------------------


def test_revoking_a_key_closes_its_open_websocket_and_sse_stream(stack: Stack) -> None:
    admin, viewer = tenant_keys(stack)
    task_id = queued_task(stack, admin)
    key_id = stack.key_id(viewer)
    sse_lines: list[str] = []
    sse_ended = threading.Event()

    def follow() -> None:
        url = f"{stack.url}/v1/tasks/{task_id}/events"
        with httpx.stream("GET", url, headers=bearer(viewer), timeout=30) as sse:
            assert sse.status_code == 200
            for line in sse.iter_lines():
                sse_lines.append(line)
        sse_ended.set()

    async def scenario() -> tuple[float, int | None, list[dict[str, Any]]]:
        async with connect(ws_url(stack), additional_headers=bearer(viewer)) as ws:
            await ws.send(json.dumps({"action": "subscribe", "all": True}))
            assert (await recv_json(ws))["type"] == "subscribed"
            wait_until(lambda: any(line.startswith(":") for line in sse_lines), timeout=10, what="the SSE stream")
            revoked_at = time.monotonic()
            async with httpx.AsyncClient(base_url=stack.url, headers=bearer(admin)) as client:
                assert (await client.delete(f"/v1/keys/{key_id}")).status_code == 204
            frames, code = await until_closed(ws)
            return time.monotonic() - revoked_at, code, frames

    threading.Thread(target=follow, daemon=True).start()
    took, code, frames = asyncio.run(scenario())
    assert code == 1008
    assert took < 5
    assert frames[-1] == {"type": "error", "message": "this key has been revoked"}
    assert sse_ended.wait(5), "the SSE stream outlived its key"
    assert "event: error" in sse_lines
    error = json.loads(sse_lines[sse_lines.index("event: error") + 1].removeprefix("data: "))["error"]
    assert error["type"] == "authentication_error"
    assert error["code"] == "key_revoked"


# --- secret rotation ------------------------------------------------------------------------------------------------


def verify(secret: str, request: Any) -> dict[str, Any]:
    payload: dict[str, Any] = Webhook(secret).verify(request.body, request.headers)
    return payload


def test_a_subscription_secret_rotates_with_an_overlap(stack: Stack, receiver: Receiver) -> None:
    admin, _ = tenant_keys(stack)
    path = f"/sub-{secrets.token_hex(3)}"
    with stack.client(admin) as client:
        created = client.post("/v1/webhooks", json={"url": receiver.url(path), "events": ["task.queued"]}).json()
        old = created["secret"]
        rotated = client.post(f"/v1/webhooks/{created['id']}/secret/rotate", json={"overlap_s": 600})
        assert rotated.status_code == 200, rotated.text
        new = rotated.json()["secret"]
        assert new != old
        assert rotated.json()["previous_secret_expires_at"] is not None
        queued_task(stack, admin)
        [during] = wait_until(lambda: receiver.at(path), timeout=20, what="a delivery in the overlap")
        assert len(during.headers["webhook-signature"].split(" ")) == 2
        # A receiver with either secret accepts it.
        assert verify(old, during)["type"] == verify(new, during)["type"] == "task.queued"

        # Rotated again with no overlap: only the newest signs.
        latest = client.post(f"/v1/webhooks/{created['id']}/secret/rotate", json={"overlap_s": 0}).json()
        assert latest["previous_secret_expires_at"] is None
        queued_task(stack, admin)
        after = wait_until(lambda: receiver.at(path)[1:], timeout=20, what="a delivery after the window")[0]
        assert len(after.headers["webhook-signature"].split(" ")) == 1
        assert verify(latest["secret"], after)["type"] == "task.queued"
        for stale in (old, new):
            with pytest.raises(WebhookVerificationError):
                verify(stale, after)
        # Bad input is named.
        bad = client.post(f"/v1/webhooks/{created['id']}/secret/rotate", json={"overlap_s": -1})
        assert bad.status_code == 422
        assert "overlap_s" in bad.text
        assert client.post("/v1/webhooks/wh_nope/secret/rotate", json={}).status_code == 404


def test_the_tenant_signing_secret_rotates_with_an_overlap_window(stack: Stack, receiver: Receiver) -> None:
    admin, _ = tenant_keys(stack)
    path = f"/own-{secrets.token_hex(3)}"
    hook = {"url": receiver.url(path), "events": ["task.queued"]}
    with stack.client(admin) as client:
        old = client.get("/v1/webhooks/signing-secret").json()["secret"]
        rotated = client.post("/v1/webhooks/signing-secret/rotate", json={"overlap_s": 3}).json()
        new = rotated["secret"]
        assert client.get("/v1/webhooks/signing-secret").json()["secret"] == new
        queued_task(stack, admin, webhook=hook)
        [during] = wait_until(lambda: receiver.at(path), timeout=20, what="a delivery in the overlap")
        assert verify(old, during)["type"] == verify(new, during)["type"] == "task.queued"
        time.sleep(3.5)  # the window ends
        queued_task(stack, admin, webhook=hook)
        after = wait_until(lambda: receiver.at(path)[1:], timeout=20, what="a delivery after the window")[0]
        assert verify(new, after)["type"] == "task.queued"
        with pytest.raises(WebhookVerificationError):
            verify(old, after)
