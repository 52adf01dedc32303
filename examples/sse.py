"""Follow a task with Server-Sent Events, `GET /v1/tasks/{id}/events`, and resume after a dropped connection.

Run it with the service up (`make dev` in another terminal prints the URL and a key):

    SWITCHYARD_API_KEY=sy_... python examples/sse.py

SWITCHYARD_URL defaults to http://127.0.0.1:8000. It submits a chat task, reads the first event of its stream
and hangs up, then reconnects with `Last-Event-ID` (what a browser's EventSource sends by itself) and reads on:
the stream goes on after that event, with no gap and no duplicate, and ends after the task's terminal event.
Exits 1 if the task does not succeed.
"""

import json
import os
import sys
from collections.abc import Iterator

import httpx

URL = os.environ.get("SWITCHYARD_URL", "http://127.0.0.1:8000").rstrip("/")
KEY = os.environ.get("SWITCHYARD_API_KEY")
if not KEY:
    sys.exit("SWITCHYARD_API_KEY is not set: use the key `make dev` printed (SWITCHYARD_API_KEY=sy_... python ...)")

api = httpx.Client(base_url=URL, headers={"Authorization": f"Bearer {KEY}"}, timeout=httpx.Timeout(30, read=60))


def events(response: httpx.Response) -> Iterator[dict]:
    """The events of a text/event-stream: records of `id:`, `event:` and `data:` lines, each ended by a blank
    line; lines starting with `:` are comments (`: keep-alive` on a quiet stream). `data:` is the event as
    GET /v1/events shows it: {"id", "type", "task_id", ..., "data": {...}}; `id:` is its id."""
    record: dict = {}
    for line in response.iter_lines():
        if not line:
            if "data" in record:
                yield json.loads(record["data"])
            record = {}
        elif not line.startswith(":"):
            field, _, value = line.partition(":")
            record[field] = value.removeprefix(" ")


def show(event: dict) -> None:
    print(f"  id {event['id']:<5} {event['type']:<15} {event['data']['id']} status {event['data'].get('status')}")


body = {"type": "chat", "model": "chat-default", "input": {"messages": [{"role": "user", "content": "Hello, SSE"}]}}
response = api.post("/v1/tasks", json=body)
if response.status_code != 202:
    sys.exit(f"POST /v1/tasks answered {response.status_code}: {response.text}")
task_id = response.json()["id"]
print(f"submitted {task_id}")

# First connection: from the beginning (no Last-Event-ID), one event, then hang up as a flaky network would.
print("first connection:")
with api.stream("GET", f"/v1/tasks/{task_id}/events") as stream:
    stream.raise_for_status()
    first = next(events(stream))
    show(first)

# Second connection: resume after the last event seen. The server ends the stream after the terminal event.
print(f"reconnected with Last-Event-ID: {first['id']}")
seen = [first]
with api.stream("GET", f"/v1/tasks/{task_id}/events", headers={"Last-Event-ID": str(first["id"])}) as stream:
    stream.raise_for_status()
    for event in events(stream):
        show(event)
        seen.append(event)

ids = [e["id"] for e in seen]
print(f"event ids {ids}: increasing, no duplicate: {ids == sorted(set(ids))}")
last = seen[-1]
if last["type"] not in ("task.succeeded", "task.failed", "task.canceled"):
    sys.exit(f"the stream ended without a terminal event (last: {last['type']})")
task = last["data"]  # a terminal event carries the whole task
if task["status"] != "succeeded":
    sys.exit(f"the task ended {task['status']}: {task['error']}")
print(f"answer: {task['result']['content']!r}  cost: ${task['cost_usd']:.8f}")
