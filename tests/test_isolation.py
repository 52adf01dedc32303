"""Tenant isolation, probed from the route table (OWASP API1, broken object-level authorization).

One tenant (the owner) makes one object of every kind an id can name: a task, a workflow, a run, a webhook and
one of its deliveries, a file, a batch and a key, each carrying a secret string. Then, for every route of the
app whose path has a parameter, and every method of it, another tenant asks with the owner's ids: the answer
must be 404 and hold none of the owner's data. Every list (every GET without a path parameter, and every query
parameter that names an object) must show the other tenant none of the owner's objects, and a WebSocket
subscription to the owner's objects is refused the same way.

The routes come from `app.routes`: a new route with an id parameter is probed without anyone adding it here, and
one whose parameter this file has no way to make an object for fails the test (add a maker to `make_objects`).
"""

from __future__ import annotations

import json
import re
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import fastapi.routing
import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute, APIWebSocketRoute
from websockets.sync.client import connect

from switchyard.gateway_api import websocket as ws_session
from switchyard.gateway_api.app import create_app
from switchyard.settings import Settings
from tests.support import Stack, chat, free_port, wait_status, wait_task, wait_until

# Each path parameter that names a tenant's object, and the kind of object (a key of `Objects.ids`).
OBJECT_PARAMS = {
    "task_id": "task",
    "run_id": "run",
    "name": "workflow",
    "webhook_id": "webhook",
    "delivery_id": "delivery",
    "batch_id": "batch",
    "file_id": "file",
    "key_id": "key",
}
# Path parameters that name nothing a tenant owns, and what they name instead.
NOT_OBJECTS = {"model": "a model of the config file, the same for every tenant"}
# Bodies for the routes that need one to get past validation (the probe asks for 404, not 422).
BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("PATCH", "/v1/webhooks/{webhook_id}"): {"description": "probe"},
    ("PATCH", "/v1/keys/{key_id}"): {"name": "probe"},
    ("POST", "/v1/workflows/{name}/runs"): {"input": {}},
}
# Routes outside the tenant's API: the process's own health and metrics.
OUTSIDE = {"/healthz", "/readyz", "/metrics", "/openapi.json"}


@dataclass
class Objects:
    """The owner's objects: their ids by kind, and the secret each of them carries."""

    secret: str
    tenant: str
    ids: dict[str, str] = field(default_factory=dict)

    def leaked(self, text: str) -> list[str]:
        """What of the owner's shows in `text`: the secret, the tenant's name, or any of its ids."""
        found = [s for s in (self.secret, self.tenant) if s in text]
        return found + [f"{kind} id {value}" for kind, value in self.ids.items() if value in text]


class Receiver:
    """A webhook endpoint on 127.0.0.1 that answers 200 to everything."""

    def __init__(self) -> None:
        self.port = free_port()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                self.rfile.read(int(self.headers.get("content-length", 0)))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def routes(stack: Stack) -> list[APIRoute | APIWebSocketRoute]:
    """The app's routes, read from an app built like the API process builds it (its lifespan is not run)."""
    settings = Settings(
        database_url=stack.database_url, redis_url=stack.redis_url, config=stack.env["SWITCHYARD_CONFIG"]
    )
    app: FastAPI = create_app(settings)
    # FastAPI 0.16x keeps each included router as one entry of app.routes; its routes are under it.
    flatten = getattr(fastapi.routing, "iter_route_contexts", None)
    found = [c.original_route for c in flatten(app.routes)] if flatten is not None else list(app.routes)
    return [r for r in found if isinstance(r, APIRoute | APIWebSocketRoute) and r.path not in OUTSIDE]


def path_params(path: str) -> list[str]:
    return re.findall(r"{(\w+)(?::\w+)?}", path)


def ok(response: httpx.Response, status: int = 200) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    return body


def submit(client: httpx.Client, text: str) -> str:
    """A chat task's id."""
    task = ok(client.post("/v1/tasks", json={"type": "chat", "model": "chat-default", "input": chat(text)}), 202)
    return str(task["id"])


def make_objects(stack: Stack, owner: httpx.Client, tenant: str, receiver: Receiver) -> Objects:
    """One object of each kind, owned by `owner`'s tenant, each holding the secret."""
    objects = Objects(secret=f"iso-secret-{secrets.token_hex(6)}", tenant=tenant)
    secret, ids = objects.secret, objects.ids
    hook = ok(
        owner.post("/v1/webhooks", json={"url": receiver.url, "events": ["task.succeeded"], "description": secret}),
        201,
    )
    ids["webhook"] = hook["id"]
    ids["task"] = ok(
        owner.post("/v1/tasks", json={"type": "chat", "model": "chat-default", "input": chat(secret)}), 202
    )["id"]
    assert wait_task(owner, ids["task"], timeout=60)["status"] == "succeeded"
    deliveries = wait_until(
        lambda: owner.get(f"/v1/webhooks/{ids['webhook']}/deliveries").json()["data"], timeout=60, what="a delivery"
    )
    ids["delivery"] = deliveries[0]["id"]
    workflow = f"iso-{secrets.token_hex(4)}"
    step = {
        "id": "only",
        "type": "chat",
        "model": "chat-default",
        "input": {"messages": [{"role": "user", "content": secret}]},
    }
    ids["workflow"] = ok(owner.post("/v1/workflows", json={"name": workflow, "steps": [step]}), 201)["name"]
    ids["run"] = ok(owner.post(f"/v1/workflows/{workflow}/runs", json={"input": {"secret": secret}}), 202)["id"]
    wait_status(owner, f"/v1/runs/{ids['run']}", timeout=60)
    line = {
        "custom_id": secret,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "chat-default", "messages": [{"role": "user", "content": secret}]},
    }
    upload = owner.post(
        "/v1/files",
        data={"purpose": "batch"},
        files={"file": (f"{secret}.jsonl", (json.dumps(line) + "\n").encode(), "application/jsonl")},
    )
    ids["file"] = ok(upload)["id"]
    batch = {"input_file_id": ids["file"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    ids["batch"] = ok(owner.post("/v1/batches", json={**batch, "metadata": {"secret": secret}}))["id"]
    ids["key"] = ok(owner.post("/v1/keys", json={"name": secret, "role": "viewer"}), 201)["id"]
    return objects


@pytest.fixture(scope="module")
def probe(probe_stack: Stack) -> Iterator[tuple[httpx.Client, httpx.Client, Objects]]:
    receiver = Receiver()
    owner_tenant, other_tenant = f"iso-owner-{secrets.token_hex(3)}", f"iso-other-{secrets.token_hex(3)}"
    # Both admins: the role is never the reason for a refusal here.
    owner = probe_stack.client(probe_stack.new_key(owner_tenant, "admin"))
    other = probe_stack.client(probe_stack.new_key(other_tenant, "admin"))
    try:
        yield owner, other, make_objects(probe_stack, owner, owner_tenant, receiver)
    finally:
        owner.close()
        other.close()
        receiver.close()


def test_every_route_with_an_object_id_answers_another_tenant_404(
    probe_stack: Stack, probe: tuple[httpx.Client, httpx.Client, Objects]
) -> None:
    owner, other, objects = probe
    probed: list[str] = []
    for route in routes(probe_stack):
        params = path_params(route.path)
        unknown = [p for p in params if p not in OBJECT_PARAMS and p not in NOT_OBJECTS]
        assert not unknown, (
            f"{route.path}: the probe cannot make an object for {unknown}; add it to OBJECT_PARAMS and make_objects"
        )
        named = {p: objects.ids[OBJECT_PARAMS[p]] for p in params if p in OBJECT_PARAMS}
        if not named or isinstance(route, APIWebSocketRoute):
            continue
        assert len(named) == len(params), f"{route.path}: mixes an object id with {NOT_OBJECTS}"
        path = route.path.format(**named)
        for method in sorted((route.methods or set()) - {"HEAD"}):
            body = BODIES.get((method, route.path))
            with other.stream(method, path, json=body, timeout=30) as response:
                text = response.read().decode(errors="replace")
            where = f"{method} {route.path} as another tenant"
            assert response.status_code == 404, f"{where}: {response.status_code} {text[:500]}"
            assert response.json()["error"]["type"] == "not_found_error", f"{where}: {text[:500]}"
            # The ids the caller sent may be echoed; nothing else of the owner's may be.
            leaks = [leak for leak in objects.leaked(text) if not any(v in leak for v in named.values())]
            assert not leaks, f"{where} shows {leaks}: {text[:500]}"
            probed.append(f"{method} {route.path}")
            if method == "GET":
                # The same request from the owner succeeds: the 404 is the tenant's, not a bad id's.
                with owner.stream("GET", path, timeout=30) as mine:
                    assert mine.status_code == 200, f"GET {route.path} as its owner: {mine.status_code}"
    # Every kind of object was probed somewhere.
    kinds = {OBJECT_PARAMS[p] for entry in probed for p in path_params(entry.split(" ", 1)[1]) if p in OBJECT_PARAMS}
    assert kinds == set(objects.ids), set(objects.ids) - kinds
    print(f"isolation probe: {len(probed)} operations with an object id answered another tenant 404")  # noqa: T201 - the count the report gives
    assert len(probed) >= 20


def test_lists_never_show_another_tenants_objects(
    probe_stack: Stack, probe: tuple[httpx.Client, httpx.Client, Objects]
) -> None:
    owner, other, objects = probe
    lists = 0
    for route in routes(probe_stack):
        if not isinstance(route, APIRoute) or "GET" not in (route.methods or ()) or path_params(route.path):
            continue
        # Every query parameter that names an object is given the owner's (e.g. /v1/events?task_id=).
        filters = {
            p.name: objects.ids[OBJECT_PARAMS[p.name]] for p in route.dependant.query_params if p.name in OBJECT_PARAMS
        }
        plain: dict[str, str | int] = {"limit": 100}
        variants = [plain, {**filters, **plain}] if filters else [plain]
        for params in variants:
            response = other.get(route.path, params=params)
            if response.status_code == 422 and "limit" in response.text:
                response = other.get(route.path, params={k: v for k, v in params.items() if k != "limit"})
            # A 422 (a list that needs a parameter the probe does not give) shows nothing either.
            assert response.status_code in (200, 404, 422), f"GET {route.path} {params}: {response.text[:500]}"
            leaks = [leak for leak in objects.leaked(response.text) if not any(v in leak for v in filters.values())]
            assert not leaks, f"GET {route.path} {params} as another tenant shows {leaks}"
            if response.status_code == 200 and len(params) > 1:
                assert response.json().get("data", []) == [], f"GET {route.path} {params}"
            lists += 1
    # The owner's own lists do show them: the probe looks where the objects are.
    assert objects.ids["task"] in owner.get("/v1/tasks", params={"limit": 100}).text
    assert objects.ids["key"] in owner.get("/v1/keys", params={"limit": 100}).text
    print(f"isolation probe: {lists} list requests showed another tenant nothing of the owner's")  # noqa: T201 - the count the report gives
    assert lists >= 15


def test_websocket_subscriptions_to_another_tenants_objects_are_refused(
    probe_stack: Stack, probe: tuple[httpx.Client, httpx.Client, Objects]
) -> None:
    owner, other, objects = probe
    ws_url = probe_stack.url.replace("http://", "ws://") + "/v1/ws"
    headers = {"Authorization": other.headers["Authorization"]}
    with connect(ws_url, additional_headers=headers, open_timeout=30) as ws:
        # Every target a subscription can name: the session's own list, so a new one is probed too.
        for target in ws_session._TARGETS:
            kind = OBJECT_PARAMS.get(target)
            assert kind is not None, f"the probe cannot make an object for the WebSocket target {target}"
            ws.send(json.dumps({"action": "subscribe", target: objects.ids[kind]}))
            frame = json.loads(ws.recv(timeout=30))
            assert frame["type"] == "error", frame
            assert frame["param"] == target, frame
            assert not [leak for leak in objects.leaked(json.dumps(frame)) if objects.ids[kind] not in leak], frame
        # The whole tenant's feed: the owner's new task never shows up in it.
        ws.send(json.dumps({"action": "subscribe", "all": True}))
        assert json.loads(ws.recv(timeout=30))["type"] == "subscribed"
        task = ok(
            owner.post("/v1/tasks", json={"type": "chat", "model": "chat-default", "input": chat(objects.secret)}), 202
        )
        wait_task(owner, task["id"], timeout=60)
        seen: list[str] = []
        try:
            while True:
                seen.append(str(ws.recv(timeout=2)))
        except TimeoutError:
            pass
        assert not [frame for frame in seen if task["id"] in frame or objects.secret in frame], seen


def test_a_body_naming_another_tenants_file_is_404(
    probe: tuple[httpx.Client, httpx.Client, Objects],
) -> None:
    _, other, objects = probe
    batch = {"input_file_id": objects.ids["file"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    response = other.post("/v1/batches", json=batch)
    assert response.status_code == 404, response.text
    assert objects.secret not in response.text
