"""Rate limits per key and per tenant, counted in Redis across every API process: rpm shared by two API
processes (exactly the limit admitted), tpm with max_tokens settling to the real usage, max_concurrent
released when tasks end, a tenant limit over two keys, a tier from the config file, the OpenAI SDK's
RateLimitError with the x-ratelimit-* headers."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.support import Stack, chat, cli, free_port, wait_http, wait_task


def tenant() -> str:
    return f"lim_{secrets.token_hex(4)}"


def fresh_window(span_s: int = 60, margin_s: float = 8.0) -> None:
    """Fixed windows roll over at the minute: start a counting test well inside one."""
    left = span_s - time.time() % span_s
    if left < margin_s:
        time.sleep(left + 0.2)


@pytest.fixture(scope="module")
def second_api(stack: Stack) -> Iterator[str]:
    """Another API process on the same database and Redis."""
    port = free_port()
    proc = stack.start("api-2", cli("api", "--port", str(port)))
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/healthz", proc)
    yield url
    proc.stop()


def sdk(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=30)


def test_rpm_is_shared_by_two_api_processes(stack: Stack, second_api: str) -> None:
    key = stack.new_key(tenant(), "member")
    stack.set_policy(key, limits={"rpm": 5})
    clients = [sdk(stack.url, key), sdk(second_api, key)]
    fresh_window()
    admitted, refused = [], []
    for i in range(9):
        try:
            raw = clients[i % 2].chat.completions.with_raw_response.create(
                model="chat-default", messages=[{"role": "user", "content": f"hi {i}"}], max_tokens=5
            )
            admitted.append(raw.headers)
        except openai.RateLimitError as exc:
            refused.append(exc)
    assert len(admitted) == 5
    assert len(refused) == 4
    assert admitted[0]["x-ratelimit-limit-requests"] == "5"
    assert [h["x-ratelimit-remaining-requests"] for h in admitted] == ["4", "3", "2", "1", "0"]
    headers = refused[0].response.headers
    assert headers["x-ratelimit-limit-requests"] == "5"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"].endswith("s")
    assert 1 <= int(headers["retry-after"]) <= 60
    assert refused[0].response.json()["error"]["type"] == "rate_limit_error"


def test_tpm_counts_max_tokens_and_settles_to_real_usage(stack: Stack) -> None:
    key = stack.new_key(tenant(), "member")
    stack.set_policy(key, limits={"tpm": 200})
    client = sdk(stack.url, key)
    fresh_window()
    # "hi there": 2 prompt tokens (4 characters a token) + max_tokens 50 = 52 counted at admission.
    first = client.chat.completions.with_raw_response.create(
        model="chat-default", messages=[{"role": "user", "content": "hi there"}], max_tokens=50
    )
    assert first.headers["x-ratelimit-limit-tokens"] == "200"
    assert first.headers["x-ratelimit-remaining-tokens"] == str(200 - 52)
    usage = first.parse().usage
    assert usage is not None
    real = usage.prompt_tokens + usage.completion_tokens
    assert real < 52
    # The first call settled to its real usage before it answered: the second counts from there.
    second = client.chat.completions.with_raw_response.create(
        model="chat-default", messages=[{"role": "user", "content": "hi there"}], max_tokens=50
    )
    assert second.headers["x-ratelimit-remaining-tokens"] == str(200 - real - 52)
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(
            model="chat-default", messages=[{"role": "user", "content": "hi"}], max_tokens=500
        )
    assert refused.value.response.headers["x-ratelimit-limit-tokens"] == "200"
    assert "tpm" in refused.value.message


def test_max_concurrent_is_released_when_tasks_end(stack: Stack) -> None:
    key = stack.new_key(tenant(), "member")
    stack.set_policy(key, limits={"max_concurrent": 2})
    with stack.client(key) as client:
        slow = {"type": "chat", "model": "chat-default", "input": chat("wait [[sleep:1500]]", max_tokens=5)}
        ids = []
        for _ in range(2):
            response = client.post("/v1/tasks", json=slow)
            assert response.status_code == 202, response.text
            ids.append(response.json()["id"])
        third = client.post("/v1/tasks", json=slow)
        assert third.status_code == 429
        assert third.headers["retry-after"] == "1"
        assert "max_concurrent" in third.json()["error"]["message"]
        for task_id in ids:
            assert wait_task(client, task_id)["status"] == "succeeded"
        # A canceled task gives its slot back too.
        queued = client.post("/v1/tasks", json=slow)
        assert queued.status_code == 202
        client.post(f"/v1/tasks/{queued.json()['id']}/cancel")
        wait_task(client, queued.json()["id"])
        for _ in range(2):
            response = client.post("/v1/tasks", json=slow)
            assert response.status_code == 202, response.text
        assert client.post("/v1/tasks", json=slow).status_code == 429


def test_a_tenant_limit_applies_across_its_keys(stack: Stack) -> None:
    name = tenant()
    a, b = stack.new_key(name, "member"), stack.new_key(name, "member")
    stack.set_policy(a, limits={"rpm": 3}, tenant=True)
    body = {"type": "chat", "model": "chat-default", "input": chat("hello", max_tokens=5)}
    fresh_window()
    with stack.client(a) as ca, stack.client(b) as cb:
        codes = [c.post("/v1/tasks", json=body).status_code for c in (ca, cb, ca, cb, ca)]
    assert codes == [202, 202, 202, 429, 429]


def test_a_tier_from_the_config_file(stack: Stack) -> None:
    key = stack.new_key(tenant(), "member")
    stack.set_policy(key, tier="tiny")  # tiny: rpm 2, max_per_call_usd 0.0001
    client = sdk(stack.url, key)
    fresh_window()
    with pytest.raises(openai.RateLimitError) as expensive:
        # 100,000 output tokens at $0.60/M: $0.06 at worst, over the tier's $0.0001 a call.
        client.chat.completions.create(
            model="chat-default", messages=[{"role": "user", "content": "x"}], max_tokens=100_000
        )
    assert expensive.value.response.json()["error"]["type"] == "budget_exceeded"
    for _ in range(2):
        client.chat.completions.create(model="chat-default", messages=[{"role": "user", "content": "x"}], max_tokens=5)
    with pytest.raises(openai.RateLimitError) as limited:
        client.chat.completions.create(model="chat-default", messages=[{"role": "user", "content": "x"}], max_tokens=5)
    assert limited.value.response.headers["x-ratelimit-limit-requests"] == "2"


def test_runs_and_batches_count_as_requests(stack: Stack) -> None:
    key = stack.new_key(tenant(), "admin")
    stack.set_policy(key, limits={"rpm": 1})
    fresh_window()
    with stack.client(key) as client:
        spec = {
            "name": f"wf_{secrets.token_hex(3)}",
            "steps": [
                {
                    "id": "a",
                    "type": "chat",
                    "model": "chat-default",
                    "input": {"messages": [{"role": "user", "content": "x"}]},
                }
            ],
        }
        assert client.post("/v1/workflows", json=spec).status_code == 201
        first = client.post(f"/v1/workflows/{spec['name']}/runs", json={"input": {}})
        assert first.status_code == 202, first.text
        assert first.headers["x-ratelimit-remaining-requests"] == "0"
        second = client.post(f"/v1/workflows/{spec['name']}/runs", json={"input": {}})
        assert second.status_code == 429
        batch = client.post(
            "/v1/batches",
            json={"input_file_id": "file_nope", "endpoint": "/v1/chat/completions", "completion_window": "24h"},
        )
        assert batch.status_code == 429


def test_no_policy_no_headers(client: httpx.Client) -> None:
    response = client.post("/v1/tasks", json={"type": "chat", "model": "chat-default", "input": chat("plain")})
    assert response.status_code == 202
    assert not any(h.startswith("x-ratelimit") for h in response.headers)


def test_limits_set_over_the_api_apply_at_once_on_every_api_process(stack: Stack, second_api: str) -> None:
    # The admin API, not the database: a key made with limits, then the tenant's limits changed while both API
    # processes hold the key in their caches.
    admin = stack.new_key(tenant(), "admin")
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {admin}"}, timeout=30) as api:
        made = api.post("/v1/keys", json={"name": "limited", "role": "member", "limits": {"rpm": 2}})
        assert made.status_code == 201, made.text
        key = made.json()["key"]
        clients = [sdk(stack.url, key), sdk(second_api, key)]
        fresh_window()
        for client in clients:
            client.chat.completions.create(model="chat-default", messages=[{"role": "user", "content": "a"}])
        with pytest.raises(openai.RateLimitError):
            clients[0].chat.completions.create(model="chat-default", messages=[{"role": "user", "content": "b"}])

        other = api.post("/v1/keys", json={"name": "free", "role": "member"}).json()["key"]
        free = [sdk(stack.url, other), sdk(second_api, other)]
        for client in free:  # cached by both processes, with no tenant limit yet
            client.chat.completions.create(model="chat-default", messages=[{"role": "user", "content": "c"}])
        assert api.put("/v1/tenant/limits", json={"rpm": 1}).status_code == 200
        # Whether calls made before the tenant had a limit were counted or not, at most one more is admitted
        # across both processes; a process still serving its cached principal would admit all of its own.
        admitted, limits_seen = 0, set()
        for i in range(6):
            try:
                free[i % 2].chat.completions.create(model="chat-default", messages=[{"role": "user", "content": "d"}])
                admitted += 1
            except openai.RateLimitError as exc:
                limits_seen.add(exc.response.headers["x-ratelimit-limit-requests"])
        assert admitted <= 1
        assert limits_seen == {"1"}
