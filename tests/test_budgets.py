"""Budgets per key and tenant: a call's worst case reserved at admission and settled to its real cost, so
concurrent calls never overspend; max_per_call_usd; workflow steps, retried tasks and batch lines drawing on
the same budget; GET /v1/budget; the spend of a window coming back from Postgres after Redis lost it."""

from __future__ import annotations

import asyncio
import json
import secrets
from typing import Any

import httpx
import openai
import pytest

from tests.support import Stack, chat, wait_status, wait_task, wait_until

# chat-default: $0.15 per million input tokens, $0.60 per million output tokens. "hello" is 2 prompt tokens
# (4 characters a token): with max_tokens 10, a call may cost (2 * 0.15 + 10 * 0.60) / 1e6 at worst.
WORST = (2 * 0.15 + 10 * 0.60) / 1e6


def tenant() -> str:
    return f"bud_{secrets.token_hex(4)}"


def spent(stack: Stack, key: str) -> float:
    return float(stack.sql("SELECT COALESCE(SUM(cost_usd), 0) FROM tasks WHERE key_id = %s", stack.key_id(key))[0][0])


def chat_requests(stack: Stack) -> int:
    return sum(stack.fake_stats()["requests"].get("/v1/chat/completions", {}).values())


def test_60_concurrent_calls_never_overspend(stack: Stack) -> None:
    key = stack.new_key(tenant(), "member")
    budget = 10.3 * WORST
    stack.set_policy(key, budget={"daily_usd": budget})
    before = chat_requests(stack)

    async def one(client: openai.AsyncOpenAI) -> Any:
        try:
            return await client.chat.completions.create(
                model="chat-default", messages=[{"role": "user", "content": "hello"}], max_tokens=10
            )
        except openai.RateLimitError as exc:
            return exc

    async def all_at_once() -> list[Any]:
        client = openai.AsyncOpenAI(base_url=f"{stack.url}/v1", api_key=key, max_retries=0, timeout=60)
        try:
            return await asyncio.gather(*(one(client) for _ in range(60)))
        finally:
            await client.close()

    outcomes = asyncio.run(all_at_once())
    refused = [o for o in outcomes if isinstance(o, openai.RateLimitError)]
    admitted = [o for o in outcomes if not isinstance(o, openai.RateLimitError)]
    assert len(admitted) >= 10
    assert refused, "some calls must be refused"
    assert all(r.response.json()["error"]["type"] == "budget_exceeded" for r in refused)
    assert spent(stack, key) <= budget
    # A refused call never reached the provider.
    assert chat_requests(stack) - before == len(admitted)
    assert stack.sql("SELECT count(*) FROM tasks WHERE key_id = %s", stack.key_id(key))[0][0] == len(admitted)


def test_max_per_call_usd_refuses_before_any_provider_call(stack: Stack) -> None:
    key = stack.new_key(tenant(), "member")
    stack.set_policy(key, budget={"max_per_call_usd": 0.0001})
    before = chat_requests(stack)
    with stack.client(key) as client:
        big = client.post(
            "/v1/tasks", json={"type": "chat", "model": "chat-default", "input": chat("x", max_tokens=1000)}
        )
        assert big.status_code == 429
        assert big.json()["error"]["type"] == "budget_exceeded"
        assert big.json()["error"]["code"] == "max_per_call_usd"
        # Without max_tokens, 1024 output tokens are assumed: $0.0006 at worst, over the cap too.
        unset = client.post("/v1/tasks", json={"type": "chat", "model": "chat-default", "input": chat("x")})
        assert unset.status_code == 429
        small = client.post(
            "/v1/tasks", json={"type": "chat", "model": "chat-default", "input": chat("x", max_tokens=10)}
        )
        assert small.status_code == 202
        wait_task(client, small.json()["id"])
    assert chat_requests(stack) - before == 1


def test_get_budget_shows_spent_reserved_and_left(stack: Stack) -> None:
    name = tenant()
    key = stack.new_key(name, "viewer")
    member = stack.new_key(name, "member")
    stack.set_policy(member, budget={"daily_usd": 1.0, "monthly_usd": 5.0})
    stack.set_policy(member, budget={"monthly_usd": 20.0}, tenant=True)
    with stack.client(member) as client:
        for _ in range(3):
            task = client.post(
                "/v1/tasks", json={"type": "chat", "model": "chat-default", "input": chat("hello", max_tokens=10)}
            )
            wait_task(client, task.json()["id"])
        view = client.get("/v1/budget").json()
    cost = spent(stack, member)
    assert cost > 0
    daily = view["key"]["windows"]["daily"]
    assert daily["limit_usd"] == 1.0
    assert daily["spent_usd"] == pytest.approx(cost, abs=1e-9)
    assert daily["reserved_usd"] == 0
    assert daily["left_usd"] == pytest.approx(1.0 - cost, abs=1e-9)
    assert daily["resets_at"].endswith("T00:00:00Z")
    assert view["key"]["windows"]["monthly"]["limit_usd"] == 5.0
    assert view["tenant"]["windows"]["monthly"]["limit_usd"] == 20.0
    assert view["tenant"]["windows"]["monthly"]["spent_usd"] == pytest.approx(cost, abs=1e-9)
    assert view["tenant"]["windows"]["daily"]["limit_usd"] is None
    # A viewer reads its own key's figures (no budget: spend only) and the tenant's.
    with stack.client(key) as viewer:
        seen = viewer.get("/v1/budget").json()
    assert seen["key"]["windows"]["daily"]["limit_usd"] is None
    assert seen["tenant"]["windows"]["monthly"]["left_usd"] == pytest.approx(20.0 - cost, abs=1e-9)


def test_spend_comes_back_from_postgres_when_redis_loses_it(stack: Stack) -> None:
    key = stack.new_key(tenant(), "member")
    stack.set_policy(key, budget={"daily_usd": 1.0})
    with stack.client(key) as client:
        for _ in range(2):
            task = client.post(
                "/v1/tasks", json={"type": "chat", "model": "chat-default", "input": chat("hello", max_tokens=10)}
            )
            wait_task(client, task.json()["id"])
        before = client.get("/v1/budget").json()["key"]["windows"]["daily"]["spent_usd"]
        assert before > 0
        # What a FLUSHALL does to the quota state (the rest of this shared Redis is left alone).
        doomed = list(stack.redis.scan_iter("sy:q:*"))
        assert doomed
        stack.redis.delete(*doomed)
        after = client.get("/v1/budget").json()["key"]["windows"]["daily"]
        assert after["spent_usd"] == pytest.approx(before, abs=1e-9)
        task = client.post(
            "/v1/tasks", json={"type": "chat", "model": "chat-default", "input": chat("hello", max_tokens=10)}
        )
        assert task.status_code == 202
        wait_task(client, task.json()["id"])
        last = client.get("/v1/budget").json()["key"]["windows"]["daily"]["spent_usd"]
    assert last == pytest.approx(spent(stack, key), abs=1e-9)


def test_a_retried_task_is_counted_once_at_its_real_cost(stack: Stack) -> None:
    key = stack.new_key(tenant(), "member")
    stack.set_policy(key, budget={"daily_usd": 1.0})
    text = f"retry me {secrets.token_hex(3)} [[fail:503:2]]"
    with stack.client(key) as client:
        task = client.post(
            "/v1/tasks", json={"type": "chat", "model": "chat-default", "input": chat(text, max_tokens=20)}
        )
        assert task.status_code == 202
        done = wait_task(client, task.json()["id"])
        assert done["status"] == "succeeded"
        assert len(done["attempts"]) == 3
        view = client.get("/v1/budget").json()["key"]["windows"]["daily"]
    assert view["spent_usd"] == pytest.approx(done["cost_usd"], abs=1e-9)
    assert view["reserved_usd"] == 0


def test_workflow_steps_draw_on_the_run_keys_budget(stack: Stack) -> None:
    key = stack.new_key(tenant(), "admin")
    # Enough for the first step's worst case ("step x": 2 prompt tokens), not for a second one on top of what
    # the first spent.
    budget = WORST * 1.2
    stack.set_policy(key, budget={"daily_usd": budget})
    name = f"wf_{secrets.token_hex(4)}"

    def step(step_id: str, depends: list[str]) -> dict[str, Any]:
        return {
            "id": step_id,
            "type": "chat",
            "model": "chat-default",
            "input": {"messages": [{"role": "user", "content": "step x"}], "max_tokens": 10},
            "depends_on": depends,
        }

    with stack.client(key) as client:
        spec = {"name": name, "steps": [step("a", []), step("b", ["a"]), step("c", ["b"])]}
        assert client.post("/v1/workflows", json=spec).status_code == 201
        run = client.post(f"/v1/workflows/{name}/runs", json={"input": {}})
        assert run.status_code == 202
        done = wait_status(client, f"/v1/runs/{run.json()['id']}", timeout=60)
    assert done["status"] == "failed"
    assert done["steps"]["a"]["status"] == "succeeded"
    assert done["steps"]["b"]["status"] == "failed"
    assert done["steps"]["b"]["error"]["type"] == "budget_exceeded"
    assert done["steps"]["c"]["status"] in ("pending", "canceled", "skipped")
    assert spent(stack, key) <= budget
    assert stack.sql("SELECT count(*) FROM tasks WHERE run_id = %s", run.json()["id"])[0][0] == 1


def test_batch_lines_draw_on_the_budget(stack: Stack) -> None:
    key = stack.new_key(tenant(), "member")
    # chat-default's batch price is half: a line with max_tokens 10 may cost (2 * 0.075 + 10 * 0.30) / 1e6.
    line_worst = (2 * 0.075 + 10 * 0.30) / 1e6
    stack.set_policy(key, budget={"daily_usd": line_worst * 2.5})
    sdk = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=key, max_retries=0, timeout=30)
    lines = [
        {
            "custom_id": f"l{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "chat-default", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 10},
        }
        for i in range(5)
    ]
    content = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    file = sdk.files.create(file=("in.jsonl", content), purpose="batch")
    batch = sdk.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")

    def finished() -> Any:
        b = sdk.batches.retrieve(batch.id)
        return b if b.status in ("completed", "failed", "expired", "cancelled") else None

    done = wait_until(finished, timeout=60, interval=0.2, what="batch done")
    assert done.status == "completed"
    assert done.request_counts is not None
    assert done.request_counts.completed == 2
    assert done.request_counts.failed == 3
    assert done.error_file_id is not None
    errors = [json.loads(line) for line in sdk.files.content(done.error_file_id).text.splitlines()]
    assert len(errors) == 3
    for line in errors:
        assert line["response"]["status_code"] == 429
        assert line["response"]["body"]["error"]["type"] == "budget_exceeded"
    assert spent(stack, key) <= line_worst * 2.5


def test_no_budget_no_reservation(stack: Stack, client: httpx.Client) -> None:
    response = client.post("/v1/tasks", json={"type": "chat", "model": "chat-default", "input": chat("free")})
    task_id = response.json()["id"]
    wait_task(client, task_id)
    assert stack.sql("SELECT admission FROM tasks WHERE id = %s", task_id)[0][0] is None
