"""Follow a task over the WebSocket `GET /v1/ws`, streamed text included.

Run it with the service up (`make dev` in another terminal prints the URL and a key):

    SWITCHYARD_API_KEY=sy_... python examples/websocket.py

SWITCHYARD_URL defaults to http://127.0.0.1:8000. It submits a chat task with `"options": {"stream": true}`,
subscribes to it with `since: 0` (the task's stored events first, then the live ones: none is missed, none
comes twice) and prints every event until the task ends. A streamed task's subscribers also get `task.delta`
events, the text as the provider produces it (best effort: over Redis, or local sockets under `make dev`).
Exits 1 if the task does not succeed.
"""

import asyncio
import json
import os
import sys

import httpx
import websockets

URL = os.environ.get("SWITCHYARD_URL", "http://127.0.0.1:8000").rstrip("/")
KEY = os.environ.get("SWITCHYARD_API_KEY")
if not KEY:
    sys.exit("SWITCHYARD_API_KEY is not set: use the key `make dev` printed (SWITCHYARD_API_KEY=sy_... python ...)")

TERMINAL = ("task.succeeded", "task.failed", "task.canceled")
# The fake model of `make dev` answers at once; [[sleep:300]] asks it to wait 300 ms before it starts, as a
# real model would, so that the subscription below is in place before the first chunk. Deltas are not stored:
# a subscriber gets those produced after it subscribed. Leave the marker out with a real provider.
PROMPT = "[[sleep:300]] Tell me, in a few words, how a switchyard sorts the railway cars of a freight train."


async def main() -> int:
    headers = {"Authorization": f"Bearer {KEY}"}
    # The key goes in the Authorization header (or `?api_key=` where a client cannot set headers).
    async with websockets.connect(URL.replace("http", "ws", 1) + "/v1/ws", additional_headers=headers) as ws:
        async with httpx.AsyncClient(base_url=URL, headers=headers, timeout=30) as api:
            body = {
                "type": "chat",
                "model": "chat-default",
                "input": {"messages": [{"role": "user", "content": PROMPT}]},
                "options": {"stream": True},
            }
            response = await api.post("/v1/tasks", json=body)
            if response.status_code != 202:
                sys.exit(f"POST /v1/tasks answered {response.status_code}: {response.text}")
            task_id = response.json()["id"]
            print(f"submitted {task_id}")

        await ws.send(json.dumps({"action": "subscribe", "task_id": task_id, "since": 0}))
        streamed: list[str] = []
        while True:
            frame = json.loads(await asyncio.wait_for(ws.recv(), timeout=120))
            kind = frame["type"]
            if kind == "subscribed":
                print(f"subscribed to {frame['task_id']} (since {frame['since']})")
            elif kind == "error":
                sys.exit(f"the server refused: {frame['message']}")
            elif kind == "task.delta":
                # A chunk of text; no `id`: deltas are not stored. They may arrive before `task.started`,
                # which comes through the event log.
                streamed.append(frame["data"]["content"])
                print(f"  task.delta  {frame['data']['content']!r}")
            else:
                # A stored event: `id` increases, so a client that reconnects sends the last id it saw as `since`.
                print(f"#{frame['id']:<5} {kind}")
            if kind in TERMINAL:
                task = frame["data"]  # a terminal event carries the whole task, as GET /v1/tasks/{id} shows it
                break

    if task["status"] != "succeeded":
        print(f"the task ended {task['status']}: {task['error']}")
        return 1
    print(f"answer: {task['result']['content']!r}")
    if streamed:
        whole = "".join(streamed) == task["result"]["content"]
        print(f"{len(streamed)} deltas streamed; together they are the answer: {whole}")
    else:
        print("no task.delta events arrived (they are best effort; the result above is complete)")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
