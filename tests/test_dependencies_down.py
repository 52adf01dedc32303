"""A dependency that is down is a 503 naming it, never a 500; accepted work is kept for the sweeper."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.support import (
    PG_ADMIN_URL,
    REDIS_BASE,
    Process,
    Stack,
    chat,
    cli,
    free_port,
    wait_http,
    wait_task,
    wait_until,
)
from tests.tcp_proxy import TcpProxy


def start_api(stack: Stack, **overrides: str) -> tuple[Process, str]:
    port = free_port()
    env = {**stack.env, **overrides}
    proc = Process("api-degraded", cli("api", "--port", str(port)), env, stack.tmp)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/healthz", proc)
    return proc, url


@pytest.fixture
def dead_port() -> int:
    return free_port()  # nothing listens there


@pytest.fixture
def broker_down_api(stack: Stack, dead_port: int) -> Iterator[str]:
    proc, url = start_api(stack, SWITCHYARD_REDIS_URL=f"redis://127.0.0.1:{dead_port}/0")
    yield url
    proc.stop()


def test_readyz_names_the_broker_and_redis_when_down(broker_down_api: str) -> None:
    response = httpx.get(f"{broker_down_api}/readyz", timeout=30)
    assert response.status_code == 503
    assert response.headers["Retry-After"]
    body = response.json()
    assert body["error"]["type"] == "service_unavailable"
    assert "broker" in body["error"]["message"]
    assert "redis" in body["error"]["message"]
    assert body["checks"]["database"] == "ok"


def test_task_accepted_while_broker_is_down_is_published_later(
    stack: Stack, admin_key: str, broker_down_api: str
) -> None:
    # The row commits before the publish; a failed publish is the sweeper's to repeat.
    headers = {"Authorization": f"Bearer {admin_key}"}
    response = httpx.post(
        f"{broker_down_api}/v1/tasks",
        headers=headers,
        timeout=60,
        json={"type": "chat", "model": "chat-default", "input": chat("kept while redis is down")},
    )
    assert response.status_code == 202, response.text
    task_id = response.json()["id"]
    # The healthy stack's sweeper finds it (queued, published too long ago) and the task completes there.
    with stack.client(admin_key) as client:
        assert wait_task(client, task_id, timeout=60)["status"] == "succeeded"


def test_database_down_is_503(stack: Stack, admin_key: str, dead_port: int) -> None:
    proc, url = start_api(stack, SWITCHYARD_DATABASE_URL=f"postgresql://postgres@127.0.0.1:{dead_port}/x")
    try:
        headers = {"Authorization": f"Bearer {admin_key}"}
        response = httpx.post(
            f"{url}/v1/tasks",
            headers=headers,
            timeout=60,
            json={"type": "chat", "model": "chat-default", "input": chat("no database")},
        )
        assert response.status_code == 503, response.text
        assert response.json()["error"]["type"] == "service_unavailable"
        ready = httpx.get(f"{url}/readyz", timeout=30)
        assert ready.status_code == 503
        assert "database" in ready.json()["error"]["message"]
    finally:
        proc.stop()


def test_an_api_whose_port_is_taken_exits_saying_so(stack: Stack) -> None:
    # uvicorn stops the application when it cannot bind. The process used to stay up for good, serving nothing:
    # a background loop had swallowed its cancel (redis-py does, mid-subscribe) and the shutdown waited on it.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = Process("api-port-taken", cli("api", "--port", str(port)), stack.env, stack.tmp)
        try:
            wait_until(lambda: not proc.alive(), timeout=30, what="the API to exit")
        finally:
            proc.stop()
    assert proc.proc.returncode not in (0, None)
    assert "address already in use" in proc.log()
    assert "Application shutdown complete" in proc.log()


def test_redis_down_limits_fail_open_and_budgets_answer_503(stack: Stack, broker_down_api: str) -> None:
    # Counters unreachable: a rate limit does not stop the service (it is logged), but a budget cannot be
    # checked without them, so a call that needs one is a 503 rather than a chance to overspend.
    limited = stack.new_key("redis_down_limits", "member")
    stack.set_policy(limited, limits={"rpm": 1})
    budgeted = stack.new_key("redis_down_budget", "member")
    stack.set_policy(budgeted, budget={"daily_usd": 5.0})
    body = {"type": "chat", "model": "chat-default", "input": chat("counters are down")}
    for _ in range(2):
        accepted = httpx.post(
            f"{broker_down_api}/v1/tasks", headers={"Authorization": f"Bearer {limited}"}, json=body, timeout=60
        )
        assert accepted.status_code == 202, accepted.text
    refused = httpx.post(
        f"{broker_down_api}/v1/tasks", headers={"Authorization": f"Bearer {budgeted}"}, json=body, timeout=60
    )
    assert refused.status_code == 503, refused.text
    assert refused.headers["Retry-After"]
    assert refused.json()["error"]["type"] == "service_unavailable"


# --- outages of a running deployment: Postgres and Redis taken away through a proxy, then given back ---------

# A client gives up after this long: every answer during an outage must come before it.
CLIENT_TIMEOUT_S = 15
# Bodies that pass validation, so that the endpoint itself meets the outage (a 422 needs no database).
VALID_BODIES: dict[tuple[str, str], Any] = {
    ("post", "/v1/tasks"): {"type": "chat", "model": "chat-default", "input": chat("outage")},
    ("post", "/v1/chat/completions"): {"model": "chat-default", "messages": [{"role": "user", "content": "x"}]},
    ("post", "/v1/embeddings"): {"model": "embed-default", "input": "x"},
    ("post", "/v1/moderations"): {"model": "moderate-default", "input": "x"},
    ("post", "/v1/predict/{model}"): {"inputs": {"features": [[0.0] * 8]}},
    ("post", "/v1/workflows"): {
        "name": "outage",
        "steps": [{"id": "a", "type": "chat", "model": "chat-default", "input": chat("x")}],
    },
    ("post", "/v1/workflows/{name}/runs"): {"input": {}},
    ("post", "/v1/webhooks"): {"url": "http://127.0.0.1:9/hook", "events": ["task.succeeded"]},
    ("patch", "/v1/webhooks/{webhook_id}"): {"description": "x"},
    ("post", "/v1/keys"): {"role": "viewer"},
    ("patch", "/v1/keys/{key_id}"): {"name": "x"},
    ("put", "/v1/tenant/limits"): {"rpm": 1000},
    ("put", "/v1/tenant/budget"): {"daily_usd": 100},
    ("post", "/v1/batches"): {
        "input_file_id": "file_x",
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    },
}
PATH_VALUES = {"model": "risk-classifier", "name": "outage"}


@pytest.fixture(scope="module")
def outage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, TcpProxy, TcpProxy]]:
    pg = TcpProxy(int(urlsplit(PG_ADMIN_URL).port or 5432))
    redis_base = urlsplit(REDIS_BASE)
    rd = TcpProxy(int(redis_base.port or 6379))
    # Keys stay cached through the outage: the endpoints, not only the key lookup, meet it.
    env = {"SWITCHYARD_REDIS_URL": rd.url(f"{REDIS_BASE}/4"), "SWITCHYARD_API_KEY_CACHE_S": "600"}
    stack = Stack(tmp_path_factory.mktemp("outage"), redis_db=4, env=env, database_url_for=pg.url)
    try:
        yield stack, pg, rd
    finally:
        stack.close()
        pg.close()
        rd.close()


def sweep(url: str, headers: dict[str, str], doc: dict[str, Any]) -> dict[str, tuple[int, str, float]]:
    """Every operation of the document once: status, Retry-After and seconds taken, by 'METHOD path'."""
    seen: dict[str, tuple[int, str, float]] = {}
    for path, item in doc["paths"].items():
        for method in ("get", "post", "put", "patch", "delete"):
            if method not in item:
                continue
            concrete = re.sub(r"{(\w+)}", lambda m: PATH_VALUES.get(m.group(1), f"{m.group(1)}_missing"), path)
            body = VALID_BODIES.get((method, path))
            started = time.monotonic()
            try:
                response = httpx.request(
                    method, f"{url}{concrete}", headers=headers, json=body, timeout=CLIENT_TIMEOUT_S
                )
            except httpx.TimeoutException:
                seen[f"{method.upper()} {path}"] = (0, "", time.monotonic() - started)
                continue
            retry_after = response.headers.get("Retry-After", "")
            seen[f"{method.upper()} {path}"] = (response.status_code, retry_after, time.monotonic() - started)
    return seen


def test_postgres_down_every_endpoint_is_503_and_the_api_recovers_by_itself(
    outage: tuple[Stack, TcpProxy, TcpProxy],
) -> None:
    stack, pg, _ = outage
    key = stack.new_key("outage-pg", "admin")
    headers = {"Authorization": f"Bearer {key}"}
    doc = httpx.get(f"{stack.url}/openapi.json", timeout=30).json()
    with stack.client(key) as client:
        before = wait_task(client, client.post("/v1/tasks", json=VALID_BODIES[("post", "/v1/tasks")]).json()["id"])
        assert before["status"] == "succeeded"
    pg.down()
    try:
        answers = sweep(stack.url, headers, doc)
        hung = {op: a for op, a in answers.items() if a[0] == 0}
        assert not hung, f"no answer within {CLIENT_TIMEOUT_S}s: {hung}"
        errors = {op: a for op, a in answers.items() if a[0] >= 500 and (a[0] != 503 or not a[1])}
        assert not errors, f"not a 503 with Retry-After: {errors}"
        unavailable = [op for op, a in answers.items() if a[0] == 503]
        # Only answers that need no database may be anything else: a refused body, an unknown model.
        assert len(unavailable) >= len(answers) - 8, {op: a for op, a in answers.items() if a[0] != 503}
        assert httpx.get(f"{stack.url}/healthz", timeout=5).status_code == 200  # alive, only not ready
        assert httpx.get(f"{stack.url}/readyz", timeout=CLIENT_TIMEOUT_S).status_code == 503
        # Workers live through it: a worker that exits on a lost database would need someone to restart it.
        time.sleep(3)
        assert all(p.alive() for p in stack.processes), [p.name for p in stack.processes if not p.alive()]
    finally:
        pg.up()
    # Back by itself: no restart, the same processes answer and the workers take work again.
    wait_until(
        lambda: httpx.get(f"{stack.url}/readyz", timeout=CLIENT_TIMEOUT_S).status_code == 200,
        timeout=60,
        what="ready again",
    )
    again = sweep(stack.url, headers, doc)
    still = {op: a for op, a in again.items() if a[0] >= 500 or a[0] == 0}
    assert not still, still
    with stack.client(key) as client:
        after = client.post("/v1/tasks", json=VALID_BODIES[("post", "/v1/tasks")])
        assert after.status_code == 202, after.text
        assert wait_task(client, after.json()["id"], timeout=60)["status"] == "succeeded"


def test_postgres_that_stops_answering_is_503_within_the_client_timeout(
    outage: tuple[Stack, TcpProxy, TcpProxy],
) -> None:
    stack, pg, _ = outage
    key = stack.new_key("outage-pg-hang", "admin")
    headers = {"Authorization": f"Bearer {key}"}
    assert httpx.get(f"{stack.url}/v1/tasks", headers=headers, timeout=30).status_code == 200
    pg.hang()
    try:
        for method, path, body in (
            ("GET", "/v1/tasks", None),
            ("POST", "/v1/tasks", VALID_BODIES[("post", "/v1/tasks")]),
            ("GET", "/v1/runs", None),
        ):
            started = time.monotonic()
            response = httpx.request(method, f"{stack.url}{path}", headers=headers, json=body, timeout=CLIENT_TIMEOUT_S)
            assert response.status_code == 503, (path, response.text)
            assert response.headers["Retry-After"]
            assert time.monotonic() - started < CLIENT_TIMEOUT_S
    finally:
        pg.up()
    wait_until(
        lambda: httpx.get(f"{stack.url}/v1/tasks", headers=headers, timeout=CLIENT_TIMEOUT_S).status_code == 200,
        timeout=60,
        what="the API back",
    )


def test_redis_down_tasks_are_accepted_and_run_once_it_is_back(outage: tuple[Stack, TcpProxy, TcpProxy]) -> None:
    stack, _, rd = outage
    key = stack.new_key("outage-redis", "admin")
    with stack.client(key) as client:
        assert client.get("/v1/tasks").status_code == 200
        rd.down()
        try:
            accepted = []
            for i in range(3):
                response = client.post(
                    "/v1/tasks",
                    json={"type": "chat", "model": "chat-default", "input": chat(f"while redis is down {i}")},
                    timeout=CLIENT_TIMEOUT_S,
                )
                assert response.status_code == 202, response.text
                accepted.append(response.json()["id"])
            time.sleep(3)
            assert all(p.alive() for p in stack.processes), [p.name for p in stack.processes if not p.alive()]
        finally:
            rd.up()
        for task_id in accepted:
            assert wait_task(client, task_id, timeout=90)["status"] == "succeeded"
        # Each ran once: one succeeded attempt, one provider call.
        for task_id in accepted:
            attempts = stack.sql("SELECT count(*) FROM attempts WHERE task_id = %s AND status = 'succeeded'", task_id)
            assert attempts[0][0] == 1, (task_id, attempts)
