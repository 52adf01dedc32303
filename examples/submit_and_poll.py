"""Submit tasks over Switchyard's own API and poll them until they finish.

Run it with the service up (`make dev` in another terminal prints the URL and a key):

    SWITCHYARD_API_KEY=sy_... python examples/submit_and_poll.py

SWITCHYARD_URL defaults to http://127.0.0.1:8000. It submits a chat and an embed task, each with an
`Idempotency-Key` (sending the same key and body again returns the same task instead of a new one), waits
for each to finish and prints its result, usage, cost and every provider attempt. Exits 1 if a task fails.
"""

import os
import sys
import time
import uuid

import httpx

URL = os.environ.get("SWITCHYARD_URL", "http://127.0.0.1:8000").rstrip("/")
KEY = os.environ.get("SWITCHYARD_API_KEY")
if not KEY:
    sys.exit("SWITCHYARD_API_KEY is not set: use the key `make dev` printed (SWITCHYARD_API_KEY=sy_... python ...)")

api = httpx.Client(base_url=URL, headers={"Authorization": f"Bearer {KEY}"}, timeout=30)


def submit(body: dict, idempotency_key: str) -> dict:
    """POST /v1/tasks: the task is stored and queued; the answer (202) carries its id, not its result."""
    response = api.post("/v1/tasks", json=body, headers={"Idempotency-Key": idempotency_key})
    if response.status_code != 202:
        # Errors are always {"error": {"type", "message", "param", "code"}}.
        sys.exit(f"POST /v1/tasks answered {response.status_code}: {response.text}")
    return response.json()


def wait(task_id: str, timeout_s: float = 120) -> dict:
    """Poll GET /v1/tasks/{id} until the task leaves `queued`/`running` (see websocket.py and sse.py to be told)."""
    deadline = time.monotonic() + timeout_s
    while True:
        task = api.get(f"/v1/tasks/{task_id}").raise_for_status().json()
        if task["status"] not in ("queued", "running"):
            return task
        if time.monotonic() > deadline:
            sys.exit(f"{task_id} is still {task['status']} after {timeout_s:.0f} s")
        time.sleep(0.2)


def show(task: dict) -> None:
    print(f"{task['id']} ({task['type']} on {task['model']}): {task['status']}")
    for attempt in task["attempts"]:  # one row per provider call, failed ones included
        error = f" ({attempt['error']['type']})" if attempt["error"] else ""
        print(f"  attempt {attempt['n']}: {attempt['provider']}/{attempt['provider_model']} {attempt['status']}{error}")
    print(f"  usage: {task['usage']}   cost: ${task['cost_usd']:.8f}")
    if task["error"]:
        print(f"  error: {task['error']['type']}: {task['error']['message']}")


chat_body = {
    "type": "chat",
    "model": "chat-default",  # a logical model of the config, not a provider's model name
    "input": {"messages": [{"role": "user", "content": "Hello from examples/submit_and_poll.py"}], "max_tokens": 200},
    "metadata": {"example": "submit_and_poll"},  # yours: stored and shown with the task
}
embed_body = {"type": "embed", "model": "embed-default", "input": {"input": ["first text", "second text"]}}

# Use a key that identifies the job on your side (an order id, a file name); a retry after a timeout then
# cannot create a second task. A random one here, so that each run of the example makes new tasks.
run = uuid.uuid4().hex[:8]
chat = submit(chat_body, f"example-chat-{run}")
again = submit(chat_body, f"example-chat-{run}")
print(f"submitted {chat['id']} ({chat['status']}); the same Idempotency-Key again gave {again['id']}")
if again["id"] != chat["id"]:
    sys.exit("the Idempotency-Key was not honoured")
embed = submit(embed_body, f"example-embed-{run}")
print(f"submitted {embed['id']} ({embed['status']})")

chat = wait(chat["id"])
show(chat)
if chat["status"] == "succeeded":
    print(f"  answer: {chat['result']['content']!r} (finish_reason {chat['result']['finish_reason']})")

embed = wait(embed["id"])
show(embed)
if embed["status"] == "succeeded":
    vectors = embed["result"]["embeddings"]
    print(f"  {len(vectors)} vectors of {len(vectors[0])} dimensions; first values {vectors[0][:3]}")

if chat["status"] != "succeeded" or embed["status"] != "succeeded":
    sys.exit(1)
