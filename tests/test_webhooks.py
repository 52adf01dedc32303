"""Signed webhooks through the real stack: subscriptions and per-object webhooks, deliveries verified with
`standardwebhooks` by a real HTTP receiver, durable retries (the same webhook-id while the receiver is
down), Retry-After, 410 Gone, failure after the last attempt and retry by hand, refusal of private addresses."""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from tests.support import Stack, chat, free_port, wait_task, wait_until

SCHEDULE = [0.2, 0.2, 0.2, 0.2, 2.0]  # six attempts; the sweeper (every second) publishes each when due


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    answered: int

    @property
    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data


@dataclass
class Receiver:
    """A webhook receiver on 127.0.0.1 that records every request; `answers[path]` sets what it replies."""

    port: int = field(default_factory=free_port)
    answers: dict[str, tuple[int, dict[str, str]]] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                status, headers = receiver.answers.get(self.path, (200, {}))
                receiver.received.append(
                    Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body, status)
                )
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *_: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def at(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]


@pytest.fixture(scope="module")
def hook_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"SWITCHYARD_WEBHOOK_ALLOW_PRIVATE": "true", "SWITCHYARD_WEBHOOK_RETRY_SCHEDULE_S": json.dumps(SCHEDULE)}
    s = Stack(tmp_path_factory.mktemp("webhooks"), redis_db=11, ml=False, env=env)
    yield s
    s.close()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.start()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def admin(hook_stack: Stack) -> Iterator[httpx.Client]:
    with hook_stack.client(hook_stack.new_key(f"hooks-{secrets.token_hex(3)}", "admin")) as c:
        yield c


def subscribe(client: httpx.Client, url: str, events: list[str]) -> dict[str, Any]:
    response = client.post("/v1/webhooks", json={"url": url, "events": events, "description": "test"})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def submit(client: httpx.Client, text: str, **extra: Any) -> str:
    response = client.post("/v1/tasks", json={"type": "chat", "model": "chat-default", "input": chat(text), **extra})
    assert response.status_code == 202, response.text
    task_id: str = response.json()["id"]
    return task_id


def deliveries(client: httpx.Client, webhook_id: str, **params: Any) -> list[dict[str, Any]]:
    response = client.get(f"/v1/webhooks/{webhook_id}/deliveries", params={"limit": 100, **params})
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


def verify(secret: str, request: Received) -> dict[str, Any]:
    """Verify as a receiver would; raises if the signature does not match the body and headers."""
    verified: dict[str, Any] = Webhook(secret).verify(request.body, request.headers)
    return verified


def test_subscription_deliveries_are_signed_and_logged(admin: httpx.Client, receiver: Receiver) -> None:
    path = f"/sub-{secrets.token_hex(3)}"
    hook = subscribe(admin, receiver.url(path), ["task.*"])
    assert hook["secret"].startswith("whsec_")
    assert hook["status"] == "enabled"
    listed = admin.get("/v1/webhooks").json()["data"]
    assert hook["id"] in [h["id"] for h in listed]
    assert all("secret" not in h for h in listed)
    task_id = wait_task(admin, submit(admin, f"hooked {secrets.token_hex(3)}"))["id"]

    got = wait_until(
        lambda: (
            len([r for r in receiver.at(path) if r.payload["data"].get("id") == task_id]) == 3 and receiver.at(path)
        ),
        timeout=20,
        what="three deliveries",
    )
    mine = [r for r in got if r.payload["data"].get("id") == task_id]
    assert sorted(r.payload["type"] for r in mine) == ["task.queued", "task.started", "task.succeeded"]
    for request in mine:
        assert verify(hook["secret"], request) == request.payload
        assert request.headers["webhook-id"].startswith("msg_")
        assert request.headers["content-type"] == "application/json"
        datetime.fromisoformat(request.payload["timestamp"])
    final = next(r for r in mine if r.payload["type"] == "task.succeeded")
    assert final.payload["data"]["result"]["content"].startswith("echo: hooked")
    with pytest.raises(Exception):  # noqa: B017, PT011 - the SDK's WebhookVerificationError
        verify("whsec_" + "A" * 43 + "=", final)

    log = wait_until(
        lambda: (d := deliveries(admin, hook["id"], status="succeeded")) and len(d) == 3 and d,
        timeout=10,
        what="the delivery log",
    )
    assert {d["id"] for d in log} == {r.headers["webhook-id"] for r in mine}
    assert all(d["attempts"][0]["status_code"] == 200 for d in log)
    assert all(d["event_type"].startswith("task.") for d in log)


def test_receiver_down_then_up_gets_the_delivery_with_the_same_webhook_id(
    admin: httpx.Client, hook_stack: Stack
) -> None:
    late = Receiver()  # nothing listens on its port yet
    hook = subscribe(admin, late.url("/late"), ["task.succeeded"])
    task_id = wait_task(admin, submit(admin, f"late receiver {secrets.token_hex(3)}"))["id"]

    def failed_twice() -> list[dict[str, Any]] | None:
        found = deliveries(admin, hook["id"])
        return found if found and len(found[0]["attempts"]) >= 2 else None

    before = wait_until(failed_twice, timeout=20, what="two failed attempts")[0]
    assert before["status"] in ("pending", "delivering")
    assert all(a["status_code"] is None and "connect" in a["error"] for a in before["attempts"])
    late.start()
    try:
        arrived = wait_until(lambda: late.at("/late"), timeout=20, what="the delivery once the receiver is up")
    finally:
        late.stop()
    assert arrived[0].headers["webhook-id"] == before["id"]
    assert arrived[0].payload["data"]["id"] == task_id
    done = wait_until(
        lambda: (d := deliveries(admin, hook["id"])) and d[0]["status"] == "succeeded" and d[0], timeout=10
    )
    assert len(done["attempts"]) >= 3
    assert done["attempts"][-1]["status_code"] == 200


def test_retry_after_is_honoured(admin: httpx.Client, receiver: Receiver) -> None:
    path = f"/busy-{secrets.token_hex(3)}"
    receiver.answers[path] = (429, {"Retry-After": "3"})
    hook = subscribe(admin, receiver.url(path), ["task.succeeded"])
    submit(admin, f"busy receiver {secrets.token_hex(3)}")
    wait_until(lambda: receiver.at(path), timeout=20, what="the first attempt")
    receiver.answers[path] = (200, {})
    wait_until(lambda: len(receiver.at(path)) == 2, timeout=20, what="the second attempt")
    first, second = receiver.at(path)
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    # The schedule's first wait is 0.2 s; the receiver asked for 3 s.
    gap = int(second.headers["webhook-timestamp"]) - int(first.headers["webhook-timestamp"])
    assert gap >= 3
    attempts = deliveries(admin, hook["id"])[0]["attempts"]
    assert [a["status_code"] for a in attempts] == [429, 200]


def test_gone_disables_the_subscription(admin: httpx.Client, receiver: Receiver) -> None:
    path = f"/gone-{secrets.token_hex(3)}"
    receiver.answers[path] = (410, {})
    hook = subscribe(admin, receiver.url(path), ["task.succeeded"])
    submit(admin, f"gone receiver {secrets.token_hex(3)}")
    wait_until(lambda: admin.get(f"/v1/webhooks/{hook['id']}").json()["status"] == "disabled", timeout=20)
    assert "410" in admin.get(f"/v1/webhooks/{hook['id']}").json()["disabled_reason"]
    [delivery] = deliveries(admin, hook["id"])
    assert delivery["status"] == "failed"
    assert len(delivery["attempts"]) == 1
    # Later events make no deliveries for it.
    wait_task(admin, submit(admin, f"after gone {secrets.token_hex(3)}"))
    other = subscribe(admin, receiver.url(path + "-probe"), ["task.succeeded"])
    wait_task(admin, submit(admin, f"probe {secrets.token_hex(3)}"))
    wait_until(lambda: deliveries(admin, other["id"], status="succeeded"), timeout=20, what="the probe's delivery")
    assert len(receiver.at(path)) == 1
    assert len(deliveries(admin, hook["id"])) == 1


def test_last_attempt_fails_then_a_retry_by_hand_delivers_the_same_id(admin: httpx.Client, receiver: Receiver) -> None:
    path = f"/broken-{secrets.token_hex(3)}"
    receiver.answers[path] = (500, {})
    hook = subscribe(admin, receiver.url(path), ["task.succeeded"])
    submit(admin, f"broken receiver {secrets.token_hex(3)}")
    failed = wait_until(
        lambda: (d := deliveries(admin, hook["id"], status="failed")) and d[0], timeout=40, what="a failed delivery"
    )
    assert len(failed["attempts"]) == len(SCHEDULE) + 1
    assert failed["last_status_code"] == 500
    assert len({r.headers["webhook-id"] for r in receiver.at(path)}) == 1

    receiver.answers[path] = (204, {})
    retried = admin.post(f"/v1/webhooks/{hook['id']}/deliveries/{failed['id']}/retry")
    assert retried.status_code == 202, retried.text
    wait_until(lambda: receiver.at(path)[-1].answered == 204, timeout=20, what="the retried delivery")
    assert receiver.at(path)[-1].headers["webhook-id"] == failed["id"]
    done = wait_until(
        lambda: (d := deliveries(admin, hook["id"])) and d[0]["status"] == "succeeded" and d[0], timeout=10
    )
    assert [a["n"] for a in done["attempts"]] == list(range(1, len(SCHEDULE) + 3))
    again = admin.post(f"/v1/webhooks/{hook['id']}/deliveries/{failed['id']}/retry")
    assert again.status_code == 409


def test_per_object_webhooks_are_signed_with_the_tenant_secret(admin: httpx.Client, receiver: Receiver) -> None:
    path = f"/task-{secrets.token_hex(3)}"
    task_id = submit(
        admin, f"own webhook {secrets.token_hex(3)}", webhook={"url": receiver.url(path), "events": ["task.succeeded"]}
    )
    task = wait_task(admin, task_id)
    assert task["webhook"]["id"].startswith("wh_")
    [request] = wait_until(lambda: receiver.at(path), timeout=20, what="the task's webhook")
    secret = admin.get("/v1/webhooks/signing-secret").json()["secret"]
    assert verify(secret, request)["type"] == "task.succeeded"
    assert request.payload["data"]["id"] == task_id
    # It is the task's own: not listed among the subscriptions, but its log can be read.
    assert task["webhook"]["id"] not in [h["id"] for h in admin.get("/v1/webhooks").json()["data"]]
    assert deliveries(admin, task["webhook"]["id"])[0]["event_type"] == "task.succeeded"

    run_path = f"/run-{secrets.token_hex(3)}"
    name = f"wf_hook_{secrets.token_hex(3)}"
    spec = {"name": name, "steps": [{"id": "s", "type": "chat", "model": "chat-default", "input": chat("x")}]}
    assert admin.post("/v1/workflows", json=spec).status_code == 201
    run = admin.post(f"/v1/workflows/{name}/runs", json={"input": {}, "webhook": {"url": receiver.url(run_path)}})
    assert run.status_code == 202, run.text
    got = wait_until(
        lambda: any(r.payload["type"] == "run.succeeded" for r in receiver.at(run_path)) and receiver.at(run_path),
        timeout=30,
        what="the run's webhook",
    )
    # A run's webhook gets the run's events (all of them: no patterns were given), not its tasks'.
    assert all(r.payload["type"].startswith("run.") for r in got)
    assert {"run.queued", "run.started", "run.succeeded"} <= {r.payload["type"] for r in got}
    for request in got:
        verify(secret, request)


def test_a_batchs_webhook_gets_its_events_signed(admin: httpx.Client, receiver: Receiver) -> None:
    path = f"/batch-{secrets.token_hex(3)}"
    lines = b"".join(
        json.dumps(
            {
                "custom_id": f"b{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "chat-default", "messages": [{"role": "user", "content": f"hook line {i}"}]},
            }
        ).encode()
        + b"\n"
        for i in range(3)
    )
    uploaded = admin.post("/v1/files", files={"file": ("lines.jsonl", lines)}, data={"purpose": "batch"})
    assert uploaded.status_code == 200, uploaded.text
    created = admin.post(
        "/v1/batches",
        json={
            "input_file_id": uploaded.json()["id"],
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
            "webhook": {"url": receiver.url(path)},
        },
    )
    assert created.status_code == 200, created.text
    batch_id = created.json()["id"]
    got = wait_until(
        lambda: any(r.payload["type"] == "batch.completed" for r in receiver.at(path)) and receiver.at(path),
        timeout=60,
        what="the batch's webhook",
    )
    secret = admin.get("/v1/webhooks/signing-secret").json()["secret"]
    # The batch's own events only (not its lines' task events), each signed with the tenant's secret.
    assert all(verify(secret, r)["type"].startswith("batch.") for r in got)
    [completed] = [r.payload for r in got if r.payload["type"] == "batch.completed"]
    assert completed["data"]["id"] == batch_id
    assert completed["data"]["request_counts"] == {"total": 3, "completed": 3, "failed": 0}


def test_webhook_api_validates_and_isolates(admin: httpx.Client, hook_stack: Stack, receiver: Receiver) -> None:
    bad = admin.post("/v1/webhooks", json={"url": receiver.url("/x"), "events": ["tasks.everything"]})
    assert bad.status_code == 422
    assert bad.json()["error"]["param"] == "events"
    assert admin.post("/v1/webhooks", json={"url": "ftp://example.com/x", "events": ["*"]}).status_code == 422
    assert admin.post("/v1/webhooks", json={"url": receiver.url("/x"), "events": []}).status_code == 422
    hook = subscribe(admin, receiver.url("/x"), ["*"])
    with hook_stack.client(hook_stack.new_key(f"hooks-other-{secrets.token_hex(3)}", "admin")) as other:
        assert other.get(f"/v1/webhooks/{hook['id']}").status_code == 404
        assert other.delete(f"/v1/webhooks/{hook['id']}").status_code == 404
    with hook_stack.client(hook_stack.new_key(f"hooks-member-{secrets.token_hex(3)}", "member")) as member:
        assert member.post("/v1/webhooks", json={"url": receiver.url("/x"), "events": ["*"]}).status_code == 403
    paused = admin.patch(f"/v1/webhooks/{hook['id']}", json={"status": "disabled"})
    assert paused.json()["status"] == "disabled"
    assert admin.delete(f"/v1/webhooks/{hook['id']}").status_code == 204
    assert admin.get(f"/v1/webhooks/{hook['id']}").status_code == 404


def test_private_addresses_are_refused_without_the_setting(client: httpx.Client) -> None:
    # The shared stack runs with the default: SWITCHYARD_WEBHOOK_ALLOW_PRIVATE unset.
    for url in ("http://127.0.0.1:9/hook", "http://10.0.0.7/hook", "http://169.254.169.254/latest", "http://[::1]/x"):
        response = client.post("/v1/webhooks", json={"url": url, "events": ["*"]})
        assert response.status_code == 422, url
        assert response.json()["error"]["param"] == "url"
    response = client.post(
        "/v1/tasks",
        json={"type": "chat", "model": "chat-default", "input": chat("x"), "webhook": {"url": "http://192.168.1.5/h"}},
    )
    assert response.status_code == 422
    assert response.json()["error"]["param"] == "webhook.url"
