"""Progress signals through the real stack: the event log numbered by the relay, WebSocket subscriptions
(ordered, resumable, many listeners, tenant isolation), Server-Sent Events with Last-Event-ID, and streamed
`task.delta` chunks."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from switchyard.events.feed import FeedEvent, Listener, SlowConsumer
from tests.support import Stack, chat, wait_task, wait_until

TERMINAL = {"task.succeeded", "task.failed", "task.canceled"}


def ws_url(stack: Stack) -> str:
    return stack.url.replace("http://", "ws://") + "/v1/ws"


def submit(client: httpx.Client, text: str, **options: Any) -> str:
    body: dict[str, Any] = {"type": "chat", "model": "chat-default", "input": chat(text)}
    if options:
        body["options"] = options
    response = client.post("/v1/tasks", json=body)
    assert response.status_code == 202, response.text
    task_id: str = response.json()["id"]
    return task_id


def stored(client: httpx.Client, **query: Any) -> list[dict[str, Any]]:
    """The numbered events as GET /v1/events pages them (the stored truth)."""
    events: list[dict[str, Any]] = []
    since = 0
    while True:
        page = client.get("/v1/events", params={"since": since, "limit": 1000, **query}).json()
        events.extend(page["data"])
        if page["next"] is None:
            return events
        since = page["next"]


def latest_id(client: httpx.Client) -> int:
    events = stored(client)
    return events[-1]["id"] if events else 0


async def frames_until(ws: ClientConnection, done: Any, within: float = 30) -> list[dict[str, Any]]:
    """Frames received until `done(frames)` is true."""
    frames: list[dict[str, Any]] = []

    async def collect() -> None:
        while not done(frames):
            frames.append(json.loads(await ws.recv()))

    await asyncio.wait_for(collect(), within)
    return frames


def events_of(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [f for f in frames if "id" in f and "." in f.get("type", "")]


def test_websocket_delivers_a_tasks_events_in_order(stack: Stack, client: httpx.Client, admin_key: str) -> None:
    async def scenario() -> list[dict[str, Any]]:
        async with connect(ws_url(stack), additional_headers={"Authorization": f"Bearer {admin_key}"}) as ws:
            task_id = submit(client, f"ws order {secrets.token_hex(4)} [[fail:503:1]]")
            await ws.send(json.dumps({"action": "subscribe", "task_id": task_id, "since": 0}))
            frames = await frames_until(ws, lambda fs: any(f.get("type") in TERMINAL for f in fs))
            assert frames[0]["type"] == "subscribed"
            assert frames[0]["task_id"] == task_id
            return events_of(frames)

    events = asyncio.run(scenario())
    assert [e["type"] for e in events] == [
        "task.queued",
        "task.started",
        "task.retrying",
        "task.succeeded",
    ]
    ids = [e["id"] for e in events]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert events[-1]["data"]["status"] == "succeeded"  # a terminal event carries the whole task
    assert events[-1]["data"]["result"]["content"].startswith("echo: ws order")
    assert events == stored(client, task_id=events[0]["task_id"])


def test_websocket_delivers_a_runs_step_events(stack: Stack, client: httpx.Client, admin_key: str) -> None:
    name = f"wf_ws_{secrets.token_hex(4)}"
    spec = {
        "name": name,
        "steps": [
            {"id": "a", "type": "chat", "model": "chat-default", "input": chat("a")},
            {
                "id": "b",
                "type": "chat",
                "model": "chat-default",
                "input": {"messages": [{"role": "user", "content": "{{ steps.a.output.content }}"}]},
            },
        ],
    }
    assert client.post("/v1/workflows", json=spec).status_code == 201

    async def scenario() -> list[dict[str, Any]]:
        async with connect(ws_url(stack) + f"?api_key={admin_key}") as ws:
            started = await asyncio.to_thread(client.post, f"/v1/workflows/{name}/runs", json={"input": {}})
            run_id = started.json()["id"]
            await ws.send(json.dumps({"action": "subscribe", "run_id": run_id, "since": 0}))
            frames = await frames_until(ws, lambda fs: any(f.get("type") == "run.succeeded" for f in fs))
            return events_of(frames)

    events = asyncio.run(scenario())
    run_events = [e["type"] for e in events if e["type"].startswith("run.")]
    assert run_events[:3] == ["run.queued", "run.started", "run.step.started"]
    assert [e["step_id"] for e in events if e["type"] == "run.step.succeeded"] == ["a", "b"]
    assert run_events[-1] == "run.succeeded"
    ids = [e["id"] for e in events]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


def test_resume_with_since_gets_exactly_the_missed_events(stack: Stack, client: httpx.Client, admin_key: str) -> None:
    headers = {"Authorization": f"Bearer {admin_key}"}

    async def scenario() -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
        async with connect(ws_url(stack), additional_headers=headers) as ws:
            await ws.send(json.dumps({"action": "subscribe", "all": True}))
            subscribed = await frames_until(ws, lambda fs: len(fs) == 1)
            start = subscribed[0]["position"]
            first = submit(client, f"before the drop {secrets.token_hex(4)}")
            seen = await frames_until(
                ws, lambda fs: any(f.get("type") == "task.succeeded" and f["task_id"] == first for f in fs)
            )
        # Dropped. Work goes on meanwhile; some of it finishes before the client is back.
        later = [submit(client, f"during the drop {i} {secrets.token_hex(4)}") for i in range(5)]
        for task_id in later[:3]:
            wait_task(client, task_id)
        last = events_of(seen)[-1]["id"]
        async with connect(ws_url(stack), additional_headers=headers) as ws:
            await ws.send(json.dumps({"action": "subscribe", "all": True, "since": last}))
            resumed = await frames_until(
                ws,
                lambda fs: all(
                    any(f.get("type") == "task.succeeded" and f.get("task_id") == t for f in fs) for t in later
                ),
            )
        return [e for e in events_of(seen) if e["id"] > start], events_of(resumed), later

    before, after, later = asyncio.run(scenario())
    ids = [e["id"] for e in before + after]
    assert len(ids) == len(set(ids)), "an event came twice"
    assert ids == sorted(ids)
    # Exactly what the log holds after the resume point: nothing missing, nothing extra, up to what was read.
    truth = [e for e in stored(client) if before[-1]["id"] < e["id"] <= after[-1]["id"]]
    assert after == truth
    assert {e["task_id"] for e in after if e["type"] == "task.queued"} >= set(later)


def test_two_hundred_listeners_each_receive_every_event(stack: Stack, client: httpx.Client, admin_key: str) -> None:
    listeners = 200
    tasks_n = 4

    async def listen(ws: ClientConnection, task_ids: list[str]) -> list[dict[str, Any]]:
        return events_of(
            await frames_until(
                ws,
                lambda fs: (
                    sum(1 for f in fs if f.get("type") == "task.succeeded" and f["task_id"] in task_ids)
                    == len(task_ids)
                ),
                within=60,
            )
        )

    async def scenario() -> tuple[list[list[dict[str, Any]]], list[str]]:
        headers = {"Authorization": f"Bearer {admin_key}"}
        sockets = [await connect(ws_url(stack), additional_headers=headers) for _ in range(listeners)]
        try:
            for ws in sockets:
                await ws.send(json.dumps({"action": "subscribe", "all": True}))
            acks = await asyncio.gather(*(frames_until(ws, lambda fs: len(fs) == 1) for ws in sockets))
            assert all(a[0]["type"] == "subscribed" for a in acks)
            task_ids = [submit(client, f"fan-out {i} {secrets.token_hex(4)}") for i in range(tasks_n)]
            received = await asyncio.gather(*(listen(ws, task_ids) for ws in sockets))
            return list(received), task_ids
        finally:
            await asyncio.gather(*(ws.close() for ws in sockets))

    received, task_ids = asyncio.run(scenario())
    ours = [[e for e in events if e["task_id"] in task_ids] for events in received]
    expected = [e for e in stored(client) if e["task_id"] in task_ids]
    assert len(expected) == tasks_n * 3  # queued, started, succeeded
    for events in ours:
        assert events == expected


def test_tenant_wide_subscription_sees_no_other_tenants_events(stack: Stack, client: httpx.Client) -> None:
    key_a = stack.new_key(f"iso-a-{secrets.token_hex(3)}", "viewer")
    key_b = stack.new_key(f"iso-b-{secrets.token_hex(3)}", "member")

    async def scenario() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        async with (
            connect(ws_url(stack), additional_headers={"Authorization": f"Bearer {key_a}"}) as ws_a,
            connect(ws_url(stack), additional_headers={"Authorization": f"Bearer {key_b}"}) as ws_b,
        ):
            for ws in (ws_a, ws_b):
                await ws.send(json.dumps({"action": "subscribe", "all": True}))
                await frames_until(ws, lambda fs: len(fs) == 1)
            with stack.client(key_b) as b:
                task_b = submit(b, f"tenant b {secrets.token_hex(4)}")
            own_task = submit(client, f"tenant acme {secrets.token_hex(4)}")  # a third tenant, too
            got_b = await frames_until(ws_b, lambda fs: any(f.get("type") == "task.succeeded" for f in fs))
            wait_task(client, own_task)
            await ws_a.send(json.dumps({"action": "ping"}))
            got_a = await frames_until(ws_a, lambda fs: any(f.get("type") == "pong" for f in fs))
            # B's task and acme's task are done and relayed; A, subscribed throughout, saw neither.
            assert {e["task_id"] for e in events_of(got_b)} == {task_b}
            return events_of(got_a), events_of(got_b)

    seen_by_a, _ = asyncio.run(scenario())
    assert seen_by_a == []


def test_other_tenants_ids_and_bad_frames_are_refused(stack: Stack, client: httpx.Client) -> None:
    task_id = submit(client, f"private {secrets.token_hex(4)}")
    other = stack.new_key(f"other-{secrets.token_hex(3)}", "viewer")

    async def scenario() -> list[dict[str, Any]]:
        async with connect(ws_url(stack), additional_headers={"Authorization": f"Bearer {other}"}) as ws:
            await ws.send(json.dumps({"action": "subscribe", "task_id": task_id}))
            await ws.send("not json")
            await ws.send(json.dumps({"action": "subscribe", "task_id": task_id, "since": -1}))
            await ws.send(json.dumps({"action": "dance"}))
            await ws.send(json.dumps({"action": "ping"}))
            return await frames_until(ws, lambda fs: any(f.get("type") == "pong" for f in fs))

    frames = asyncio.run(scenario())
    assert [f["type"] for f in frames] == ["error", "error", "error", "error", "pong"]
    assert frames[0]["message"] == f"no task '{task_id}'"
    assert frames[0]["param"] == "task_id"
    assert frames[2]["param"] == "since"
    assert frames[3]["param"] == "action"


def test_websocket_refuses_a_bad_key(stack: Stack) -> None:
    async def scenario() -> None:
        async with connect(ws_url(stack), additional_headers={"Authorization": "Bearer sy_wrong"}) as ws:
            await ws.recv()

    with pytest.raises((InvalidStatus, ConnectionClosed)) as info:
        asyncio.run(scenario())
    if isinstance(info.value, InvalidStatus):
        assert info.value.response.status_code == 401
        assert json.loads(info.value.response.body)["error"]["type"] == "authentication_error"


def sse_events(response: httpx.Response) -> Iterator[dict[str, Any]]:
    """Parse a text/event-stream body into {id, event, data} records."""
    record: dict[str, Any] = {}
    for line in response.iter_lines():
        if not line:
            if record:
                yield record
                record = {}
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(": ")
        record[field] = json.loads(value) if field == "data" else value


def test_sse_resumes_with_last_event_id_and_ends_after_the_terminal_event(stack: Stack, client: httpx.Client) -> None:
    task_id = submit(client, f"sse {secrets.token_hex(4)} [[sleep:300]]")
    with client.stream("GET", f"/v1/tasks/{task_id}/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        first = next(sse_events(response))
    assert first["event"] == "task.queued"
    with client.stream("GET", f"/v1/tasks/{task_id}/events", headers={"Last-Event-ID": first["id"]}) as response:
        rest = list(sse_events(response))  # returns: the stream ends after the terminal event
    assert [r["event"] for r in rest] == ["task.started", "task.succeeded"]
    assert [int(r["id"]) for r in rest] == [e["id"] for e in stored(client, task_id=task_id)[1:]]
    assert rest[-1]["data"]["data"]["result"]["content"].startswith("echo: sse")
    # Resuming after the end: nothing more, and the stream closes at once.
    with client.stream("GET", f"/v1/tasks/{task_id}/events", headers={"Last-Event-ID": rest[-1]["id"]}) as response:
        assert list(sse_events(response)) == []
    assert client.get("/v1/tasks/task_nope/events").status_code == 404
    assert client.get(f"/v1/tasks/{task_id}/events", headers={"Last-Event-ID": "x"}).status_code == 422


def test_sse_keeps_streaming_after_keep_alives(client: httpx.Client) -> None:
    # The test stack writes a keep-alive every second: a task that sleeps 2.5 s gets some between its events,
    # and the stream still carries the events that follow them (the wait for the next event is not cancelled).
    task_id = submit(client, f"sse quiet {secrets.token_hex(4)} [[sleep:2500]]")
    with client.stream("GET", f"/v1/tasks/{task_id}/events") as response:
        lines = list(response.iter_lines())
    assert ": keep-alive" in lines
    events = [line.removeprefix("event: ") for line in lines if line.startswith("event:")]
    assert events == ["task.queued", "task.started", "task.succeeded"]


def test_run_sse_ends_after_the_run_finishes(client: httpx.Client) -> None:
    name = f"wf_sse_{secrets.token_hex(4)}"
    spec = {
        "name": name,
        "steps": [{"id": "only", "type": "chat", "model": "chat-default", "input": chat("x")}],
    }
    assert client.post("/v1/workflows", json=spec).status_code == 201
    run_id = client.post(f"/v1/workflows/{name}/runs", json={"input": {}}).json()["id"]
    with client.stream("GET", f"/v1/runs/{run_id}/events") as response:
        records = list(sse_events(response))
    types = [r["event"] for r in records]
    assert types[0] == "run.queued"
    assert types[-1] == "run.succeeded"
    assert "run.step.succeeded" in types


def test_streaming_chat_task_sends_deltas_to_listeners(stack: Stack, client: httpx.Client, admin_key: str) -> None:
    words = " ".join(f"word{i}" for i in range(30))

    async def scenario() -> tuple[str, list[dict[str, Any]]]:
        async with connect(ws_url(stack), additional_headers={"Authorization": f"Bearer {admin_key}"}) as ws:
            await ws.send(json.dumps({"action": "subscribe", "all": True}))
            await frames_until(ws, lambda fs: len(fs) == 1)
            # A subscription to the task is what receives its chunks: deltas are not for tenant-wide listeners.
            task_id = submit(client, f"stream {words} [[sleep:200]]", stream=True)
            await ws.send(json.dumps({"action": "subscribe", "task_id": task_id, "since": 0}))
            frames = await frames_until(
                ws, lambda fs: any(f.get("type") == "task.succeeded" and f.get("task_id") == task_id for f in fs)
            )
            return task_id, frames

    task_id, frames = asyncio.run(scenario())
    deltas = [f for f in frames if f["type"] == "task.delta"]
    assert len(deltas) > 3
    assert all(d["id"] is None and d["task_id"] == task_id for d in deltas)
    assert [d["data"]["index"] for d in deltas] == list(range(len(deltas)))
    text = "".join(d["data"]["content"] for d in deltas)
    final = next(f for f in frames if f["type"] == "task.succeeded")
    assert text == final["data"]["result"]["content"] == f"echo: stream {words} [[sleep:200]]"
    # Deltas are not stored.
    assert "task.delta" not in {e["type"] for e in stored(client, task_id=task_id)}


def test_streaming_task_that_breaks_after_text_fails_without_retrying(client: httpx.Client) -> None:
    task_id = submit(client, "w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 [[break:2]]", stream=True)
    task = wait_task(client, task_id)
    assert task["status"] == "failed"
    assert task["error"]["type"] == "stream_interrupted"
    assert len(task["attempts"]) == 1


def test_only_chat_tasks_stream(client: httpx.Client) -> None:
    response = client.post(
        "/v1/tasks",
        json={"type": "embed", "model": "embed-default", "input": {"input": "x"}, "options": {"stream": True}},
    )
    assert response.status_code == 422
    assert response.json()["error"]["param"] == "options.stream"


def test_events_list_pages_with_a_cursor(client: httpx.Client) -> None:
    task_id = submit(client, f"paging {secrets.token_hex(4)}")
    wait_task(client, task_id)
    wait_until(lambda: len(stored(client, task_id=task_id)) == 3, timeout=10, what="relayed events")
    first = client.get("/v1/events", params={"task_id": task_id, "limit": 2}).json()
    assert [e["type"] for e in first["data"]] == ["task.queued", "task.started"]
    rest = client.get("/v1/events", params={"task_id": task_id, "since": first["next"]}).json()
    assert [e["type"] for e in rest["data"]] == ["task.succeeded"]
    assert rest["next"] is None


def test_connections_per_tenant_are_limited(stack: Stack) -> None:
    key = stack.new_key(f"crowd-{secrets.token_hex(3)}", "viewer")
    headers = {"Authorization": f"Bearer {key}"}

    async def scenario() -> int:
        sockets = [await connect(ws_url(stack), additional_headers=headers) for _ in range(250)]
        try:
            with pytest.raises(InvalidStatus) as refused:
                await connect(ws_url(stack), additional_headers=headers)
            await sockets.pop().close()
            # A closed connection frees its slot.
            async with connect(ws_url(stack), additional_headers=headers) as again:
                await again.send(json.dumps({"action": "ping"}))
                assert json.loads(await again.recv()) == {"type": "pong"}
            status: int = refused.value.response.status_code
            return status
        finally:
            await asyncio.gather(*(ws.close() for ws in sockets))

    assert asyncio.run(scenario()) == 429


def test_a_listener_that_falls_behind_is_cut_off() -> None:
    # The feed's Listener itself (no stack needed): a full queue turns into a slow-consumer error, and the
    # backlog is dropped rather than kept.
    listener = Listener(max_queue=10)
    for seq in range(1, 12):
        listener.offer(FeedEvent(seq, {"id": seq, "type": "task.queued"}, "{}"))
    assert listener.queue.qsize() == 1

    async def drain() -> None:
        await listener.next()

    with pytest.raises(SlowConsumer, match="more than 10 events behind"):
        asyncio.run(drain())
