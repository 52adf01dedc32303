"""Receive Switchyard's signed webhooks and verify them with the `standardwebhooks` package.

Webhooks to 127.0.0.1 are refused unless the server allows private addresses, so start it with:

    SWITCHYARD_WEBHOOK_ALLOW_PRIVATE=true make dev        (in another terminal; it prints the URL and a key)
    SWITCHYARD_API_KEY=sy_... python examples/webhook_receiver.py

SWITCHYARD_URL defaults to http://127.0.0.1:8000; the key must be an admin key (`make dev`'s is). The script
starts a small receiver (the standard library's http.server) on a free port of 127.0.0.1, then shows both
kinds of webhook:
- a subscription, `POST /v1/webhooks` (events of the whole tenant that match its patterns), signed with the
  secret returned when it is made (shown once);
- a `webhook` object on one task (that task's events), signed with the tenant's secret from
  `GET /v1/webhooks/signing-secret`.
It submits a task, prints every delivery as it arrives (a delivery whose signature does not verify is
answered 400, and Switchyard retries it later), deletes the subscription and exits 1 if anything went wrong.
"""

import json
import os
import queue
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
from standardwebhooks import Webhook, WebhookVerificationError

URL = os.environ.get("SWITCHYARD_URL", "http://127.0.0.1:8000").rstrip("/")
KEY = os.environ.get("SWITCHYARD_API_KEY")
if not KEY:
    sys.exit("SWITCHYARD_API_KEY is not set: use the key `make dev` printed (SWITCHYARD_API_KEY=sy_... python ...)")

api = httpx.Client(base_url=URL, headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
verifiers: dict[str, Webhook] = {}  # the receiver's path -> the secret that signs what is sent there
received: queue.Queue = queue.Queue()  # (path, headers, payload or None when the signature is wrong)


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        verifier = verifiers.get(self.path)
        try:
            if verifier is None:
                raise WebhookVerificationError(f"nothing expected at {self.path}")
            # Checks webhook-signature (HMAC-SHA256 of "webhook-id.webhook-timestamp.body") and that the
            # timestamp is recent; returns the parsed body. Verify the raw bytes, before any parsing.
            payload = verifier.verify(body, dict(self.headers))
        except WebhookVerificationError as exc:
            received.put((self.path, dict(self.headers), None))
            self.send_response(400)
            self.end_headers()
            self.wfile.write(str(exc).encode())
            return
        received.put((self.path, dict(self.headers), payload))
        self.send_response(204)  # any 2xx: delivered
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass  # quiet: the main loop prints what arrives


def refused(response: httpx.Response, what: str) -> None:
    message = f"{what} answered {response.status_code}: {response.text}"
    if response.status_code == 422 and "destination_not_allowed" in response.text:
        message += (
            "\nThe server refuses webhooks to 127.0.0.1: restart it with SWITCHYARD_WEBHOOK_ALLOW_PRIVATE=true"
            " (e.g. `SWITCHYARD_WEBHOOK_ALLOW_PRIVATE=true make dev`)."
        )
    elif response.status_code == 403:
        message += "\nWebhooks need an admin key (switchyard keys create --tenant NAME --role admin)."
    sys.exit(message)


server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)  # port 0: any free port
threading.Thread(target=server.serve_forever, daemon=True).start()
base = f"http://127.0.0.1:{server.server_address[1]}"
print(f"receiver listening on {base}")

response = api.get("/v1/webhooks/signing-secret")
if response.status_code != 200:
    refused(response, "GET /v1/webhooks/signing-secret")
verifiers["/task-hook"] = Webhook(response.json()["secret"])

subscription = {"url": f"{base}/subscription", "events": ["task.*"], "description": "examples/webhook_receiver.py"}
response = api.post("/v1/webhooks", json=subscription)
if response.status_code != 201:
    refused(response, "POST /v1/webhooks")
hook = response.json()
verifiers["/subscription"] = Webhook(hook["secret"])  # keep it: it is never shown again
print(f"subscribed {hook['id']} to {hook['events']}")

failures = 0
try:
    body = {
        "type": "chat",
        "model": "chat-default",
        "input": {"messages": [{"role": "user", "content": "Hello, webhooks"}]},
        # This task's own webhook: its terminal events only (leave `events` out for all of them).
        "webhook": {"url": f"{base}/task-hook", "events": ["task.succeeded", "task.failed", "task.canceled"]},
    }
    response = api.post("/v1/tasks", json=body)
    if response.status_code != 202:
        refused(response, "POST /v1/tasks")
    task_id = response.json()["id"]
    print(f"submitted {task_id}; waiting for its deliveries")

    # Wait for the terminal event on both paths. Deliveries are sent concurrently, so they may arrive out of
    # order; a receiver that cares orders them by the event ids in `data` or re-reads the task.
    finished: dict[str, dict] = {}
    deadline = time.monotonic() + 60
    while len(finished) < 2:
        try:
            path, headers, payload = received.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            sys.exit(f"timed out waiting for deliveries; got the terminal event on {sorted(finished) or 'no path'}")
        if payload is None:
            failures += 1
            print(f"  {path}: signature did NOT verify (answered 400)")
            continue
        data = payload["data"]
        if data.get("id") != task_id:
            continue  # the subscription gets every task of the tenant: not ours
        print(f"  {path:<14} {payload['type']:<15} webhook-id {headers['webhook-id']}  signature verified")
        if payload["type"] in ("task.succeeded", "task.failed", "task.canceled"):
            finished[path] = data  # a terminal event's data is the whole task
finally:
    api.delete(f"/v1/webhooks/{hook['id']}").raise_for_status()
    print(f"deleted {hook['id']}")
    server.shutdown()

task = finished["/task-hook"]
print(f"task {task['id']} {task['status']}: {json.dumps(task.get('result'))}")
if failures or task["status"] != "succeeded":
    sys.exit(1)
