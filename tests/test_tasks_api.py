"""The tasks API over HTTP against the real stack: uvicorn, Celery workers, Postgres, Redis, the fake provider."""

from __future__ import annotations

import math
import secrets

import httpx
import pytest

from tests.support import Stack, chat, wait_task


def post_task(client: httpx.Client, body: dict[str, object], **headers: str) -> httpx.Response:
    return client.post("/v1/tasks", json=body, headers=headers)


def test_chat_task_succeeds_with_result_usage_cost_and_attempts(client: httpx.Client) -> None:
    response = post_task(
        client,
        {
            "type": "chat",
            "model": "chat-default",
            "input": chat("Hello there", max_tokens=50),
            "metadata": {"customer": "c1"},
        },
    )
    assert response.status_code == 202, response.text
    created = response.json()
    assert created["status"] == "queued"
    assert created["id"].startswith("task_")
    task = wait_task(client, created["id"])
    assert task["status"] == "succeeded", task
    assert task["result"]["content"] == "echo: Hello there"
    assert task["result"]["finish_reason"] == "stop"
    assert task["result"]["provider"] == "fake"
    assert task["result"]["provider_model"] == "gpt-4o-mini"
    prompt, reply = math.ceil(len("Hello there") / 4), math.ceil(len("echo: Hello there") / 4)
    assert task["usage"]["input_tokens"] == prompt
    assert task["usage"]["output_tokens"] == reply
    assert task["cost_usd"] == pytest.approx((prompt * 0.15 + reply * 0.60) / 1e6)
    assert [a["status"] for a in task["attempts"]] == ["succeeded"]
    assert task["attempts"][0]["provider"] == "fake"
    assert task["attempts"][0]["latency_ms"] >= 0
    assert task["metadata"] == {"customer": "c1"}
    assert task["started_at"]
    assert task["finished_at"]


def test_embed_task_succeeds(client: httpx.Client) -> None:
    response = post_task(client, {"type": "embed", "model": "embed-default", "input": {"input": ["a", "bb"]}})
    assert response.status_code == 202, response.text
    task = wait_task(client, response.json()["id"])
    assert task["status"] == "succeeded", task
    vectors = task["result"]["embeddings"]
    assert len(vectors) == 2
    assert len(vectors[0]) == 64
    assert sum(v * v for v in vectors[0]) == pytest.approx(1.0, abs=1e-4)
    assert vectors[0] != vectors[1]
    tokens = math.ceil(len("abb") / 4)  # the fake counts the characters of all inputs together
    assert task["usage"]["input_tokens"] == tokens
    assert task["cost_usd"] == pytest.approx(tokens * 0.02 / 1e6)


def test_moderate_task_flags(client: httpx.Client) -> None:
    response = post_task(client, {"type": "moderate", "model": "moderate-default", "input": {"input": "x [[flag]]"}})
    task = wait_task(client, response.json()["id"])
    assert task["status"] == "succeeded", task
    assert task["result"]["flagged"] is True


def test_anthropic_task_maps_system_prompt_and_cache_tokens(client: httpx.Client) -> None:
    text = "Cached prompt [[cached:8]] [[cache-write:4]]"
    body = {
        "type": "chat",
        "model": "claude",
        "input": {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]},
    }
    task = wait_task(client, post_task(client, body).json()["id"])
    assert task["status"] == "succeeded", task
    assert task["result"]["content"] == f"echo: {text}"
    usage = task["usage"]
    assert usage["input_tokens"] == math.ceil((len("Be brief.") + len(text)) / 4)
    assert usage["cached_input_tokens"] == 8
    assert usage["cache_write_tokens"] == 4
    plain = usage["input_tokens"] - 12
    expected = (plain * 0.80 + 8 * 0.08 + 4 * 1.00 + usage["output_tokens"] * 4.00) / 1e6
    assert task["cost_usd"] == pytest.approx(expected)


def test_provider_503_then_200_succeeds_on_attempt_2(client: httpx.Client) -> None:
    text = f"flaky {secrets.token_hex(4)} [[fail:503:1]]"
    task = wait_task(
        client, post_task(client, {"type": "chat", "model": "chat-default", "input": chat(text)}).json()["id"]
    )
    assert task["status"] == "succeeded", task
    attempts = task["attempts"]
    assert [a["status"] for a in attempts] == ["failed", "succeeded"]
    assert attempts[0]["error"]["status_code"] == 503
    assert attempts[0]["error"]["type"] == "provider_error"
    assert [a["n"] for a in attempts] == [1, 2]


def test_provider_400_fails_at_once_without_retry(client: httpx.Client) -> None:
    text = f"bad {secrets.token_hex(4)} [[fail:400]]"
    task = wait_task(
        client, post_task(client, {"type": "chat", "model": "chat-default", "input": chat(text)}).json()["id"]
    )
    assert task["status"] == "failed"
    assert task["error"]["type"] == "invalid_request"
    assert len(task["attempts"]) == 1


def test_retryable_errors_exhaust_max_attempts(client: httpx.Client) -> None:
    body = {
        "type": "chat",
        "model": "chat-default",
        "input": chat(f"down {secrets.token_hex(4)} [[fail:502]]"),
        "options": {"max_attempts": 2},
    }
    task = wait_task(client, post_task(client, body).json()["id"])
    assert task["status"] == "failed"
    assert task["error"]["type"] == "provider_error"
    assert [a["status"] for a in task["attempts"]] == ["failed", "failed"]


def test_retry_after_is_honoured(client: httpx.Client) -> None:
    text = f"slow down {secrets.token_hex(4)} [[fail:429:1]] [[retry-after:2]]"
    task = wait_task(
        client, post_task(client, {"type": "chat", "model": "chat-default", "input": chat(text)}).json()["id"]
    )
    assert task["status"] == "succeeded", task
    first, second = task["attempts"]
    assert first["error"]["type"] == "rate_limited"
    from datetime import datetime

    gap = datetime.fromisoformat(second["started_at"]) - datetime.fromisoformat(first["finished_at"])
    assert gap.total_seconds() >= 1.95


def test_failover_to_next_deployment(client: httpx.Client) -> None:
    # One failure on the first deployment: attempt 2 goes to the second one (the anthropic-kind fake).
    text = f"failover {secrets.token_hex(4)} [[fail:500:1]]"
    task = wait_task(
        client, post_task(client, {"type": "chat", "model": "chat-failover", "input": chat(text)}).json()["id"]
    )
    assert task["status"] == "succeeded", task
    assert [(a["provider"], a["status"]) for a in task["attempts"]] == [
        ("fake", "failed"),
        ("fake-anthropic", "succeeded"),
    ]
    assert task["result"]["provider"] == "fake-anthropic"


def test_pinned_provider_by_header(client: httpx.Client) -> None:
    body = {"type": "chat", "model": "chat-failover", "input": chat("pin me")}
    task = wait_task(client, post_task(client, body, **{"X-Provider": "fake-anthropic"}).json()["id"])
    assert task["result"]["provider"] == "fake-anthropic"
    bad = post_task(client, {**body, "options": {"provider": "nope"}})
    assert bad.status_code == 422
    assert bad.json()["error"]["param"] == "options.provider"


def test_idempotent_repost_returns_same_task(client: httpx.Client) -> None:
    key = secrets.token_hex(8)
    body = {"type": "chat", "model": "chat-default", "input": chat("once")}
    first = post_task(client, body, **{"Idempotency-Key": key})
    second = post_task(client, body, **{"Idempotency-Key": key})
    assert first.status_code == 202
    assert second.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    assert second.headers.get("Idempotent-Replayed") == "true"
    conflict = post_task(client, {**body, "input": chat("other")}, **{"Idempotency-Key": key})
    assert conflict.status_code == 409
    assert conflict.json()["error"]["param"] == "Idempotency-Key"


def test_other_tenants_task_is_404(stack: Stack, client: httpx.Client) -> None:
    task_id = post_task(client, {"type": "chat", "model": "chat-default", "input": chat("mine")}).json()["id"]
    with stack.client(stack.new_key("globex", "admin")) as other:
        for response in (other.get(f"/v1/tasks/{task_id}"), other.post(f"/v1/tasks/{task_id}/cancel")):
            assert response.status_code == 404
            assert response.json()["error"]["type"] == "not_found_error"
        assert task_id not in [t["id"] for t in other.get("/v1/tasks").json()["data"]]


def test_roles(stack: Stack) -> None:
    with stack.client(stack.new_key("acme", "viewer")) as viewer:
        assert viewer.get("/v1/tasks").status_code == 200
        denied = viewer.post("/v1/tasks", json={"type": "chat", "model": "chat-default", "input": chat("x")})
        assert denied.status_code == 403
        assert denied.json()["error"]["type"] == "permission_error"
    with stack.client(stack.new_key("acme", "member")) as member:
        assert (
            member.post("/v1/tasks", json={"type": "chat", "model": "chat-default", "input": chat("x")}).status_code
            == 202
        )


def test_authentication_errors(stack: Stack) -> None:
    assert httpx.get(f"{stack.url}/v1/tasks").status_code == 401
    wrong = httpx.get(f"{stack.url}/v1/tasks", headers={"Authorization": "Bearer sy_nope"})
    assert wrong.status_code == 401
    assert wrong.json()["error"]["type"] == "authentication_error"


def test_list_filters_and_cursor_pagination(stack: Stack) -> None:
    with stack.client(stack.new_key(f"pager-{secrets.token_hex(3)}", "admin")) as c:
        ids = [
            post_task(c, {"type": "embed", "model": "embed-default", "input": {"input": str(i)}}).json()["id"]
            for i in range(5)
        ]
        post_task(c, {"type": "chat", "model": "chat-default", "input": chat("not an embed")})
        seen: list[str] = []
        after = None
        while True:
            params: dict[str, str | int] = {"type": "embed", "limit": 2}
            if after:
                params["after"] = after
            page = c.get("/v1/tasks", params=params).json()
            seen += [t["id"] for t in page["data"]]
            after = page["next"]
            if after is None:
                break
        assert seen == list(reversed(ids))
        for task_id in ids:
            wait_task(c, task_id)
        done = c.get("/v1/tasks", params={"status": "succeeded", "model": "embed-default"}).json()["data"]
        assert {t["id"] for t in done} == set(ids)
        assert c.get("/v1/tasks", params={"status": "bogus"}).status_code == 422


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ('{"type": "chat", "model": ', 400, "body"),
        ("[1, 2]", 422, "body"),
        ('{"type": "chat", "model": 5, "input": {"messages": [{"role": "user", "content": "x"}]}}', 422, "model"),
        ('{"type": "chat", "model": "nope", "input": {"messages": [{"role": "user", "content": "x"}]}}', 422, "model"),
        ('{"type": "dance", "model": "chat-default", "input": {}}', 422, "type"),
        ('{"type": "embed", "model": "chat-default", "input": {"input": "x"}}', 422, "type"),
        ('{"type": "chat", "model": "chat-default", "input": {}}', 422, "input.messages"),
        ('{"type": "chat", "model": "chat-default", "input": {"messages": []}}', 422, "input.messages"),
        (
            '{"type": "chat", "model": "chat-default", "input": {"messages": [{"role": "user", "content": "x"}],'
            ' "temperature": "hot"}}',
            422,
            "input.temperature",
        ),
        (
            '{"type": "chat", "model": "chat-default", "input": {"messages": [{"role": "wizard", "content": "x"}]}}',
            422,
            "input.messages[0].role",
        ),
        (
            '{"type": "chat", "model": "chat-default", "input": {"messages": [{"role": "user", "content": "x"}]},'
            ' "options": {"max_attempts": 0}}',
            422,
            "options.max_attempts",
        ),
        (
            '{"type": "chat", "model": "chat-default", "input": {"messages": [{"role": "user", "content": "x"}]},'
            ' "surprise": 1}',
            422,
            "surprise",
        ),
    ],
)
def test_bad_input_is_4xx_naming_the_field(client: httpx.Client, body: str, status: int, param: str) -> None:
    response = client.post("/v1/tasks", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    assert error["type"] == "invalid_request_error"
    assert error["message"]


def test_oversized_body_is_413(client: httpx.Client) -> None:
    huge = "x" * (3 * 1024 * 1024)
    response = post_task(client, {"type": "chat", "model": "chat-default", "input": chat(huge)})
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "request_too_large"

    def chunks() -> object:
        for _ in range(40):
            yield b"x" * 100_000

    streamed = client.post("/v1/tasks", content=chunks(), headers={"Content-Type": "application/json"})
    assert streamed.status_code == 413


def test_unknown_task_and_route(client: httpx.Client) -> None:
    assert client.get("/v1/tasks/task_nope").status_code == 404
    missing = client.get("/v1/nothing-here")
    assert missing.status_code == 404
    assert "error" in missing.json()


def test_cancel_of_finished_task_is_409(client: httpx.Client) -> None:
    task = wait_task(
        client, post_task(client, {"type": "chat", "model": "chat-default", "input": chat("done")}).json()["id"]
    )
    response = client.post(f"/v1/tasks/{task['id']}/cancel")
    assert response.status_code == 409


def test_cancel_of_running_task_stops_it(client: httpx.Client) -> None:
    body = {"type": "chat", "model": "chat-default", "input": chat(f"long {secrets.token_hex(4)} [[sleep:1500]]")}
    task_id = post_task(client, body).json()["id"]
    wait_task(client, task_id, ("running",))
    assert client.post(f"/v1/tasks/{task_id}/cancel").status_code == 200
    task = wait_task(client, task_id)
    assert task["status"] == "canceled"
    assert task["error"]["type"] == "canceled"


def test_events_are_written_for_every_state_change(stack: Stack, client: httpx.Client) -> None:
    text = f"events {secrets.token_hex(4)} [[fail:503:1]]"
    task_id = post_task(client, {"type": "chat", "model": "chat-default", "input": chat(text)}).json()["id"]
    wait_task(client, task_id)
    rows = stack.sql("SELECT type, data FROM events WHERE task_id = %s ORDER BY id", task_id)
    types = [r[0] for r in rows]
    assert types == ["task.queued", "task.started", "task.retrying", "task.succeeded"]
    assert rows[-1][1]["id"] == task_id
    assert rows[-1][1]["status"] == "succeeded"
    assert len(rows[-1][1]["attempts"]) == 2


def test_health_and_readiness(stack: Stack) -> None:
    assert httpx.get(f"{stack.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{stack.url}/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"database": "ok", "broker": "ok", "redis": "ok", "duties": "ok", "files": "ok"}
