"""A dependency that is down is a 503 naming it, never a 500; accepted work is kept for the sweeper."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support import Process, Stack, chat, cli, free_port, wait_http, wait_task


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
