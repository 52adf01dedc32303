"""Work accepted with a 2xx survives a killed worker, a flushed broker and cancellation races.

These tests own their stack: they start and kill provider workers themselves.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import httpx
import pytest

from tests.support import Stack, chat, wait_status, wait_task, wait_until


@pytest.fixture(scope="module")
def own_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("durability"), redis_db=10, provider_worker=False, ml=False)
    yield s
    s.close()


@pytest.fixture
def api(own_stack: Stack) -> Iterator[httpx.Client]:
    with own_stack.client(own_stack.new_key("durable", "admin")) as c:
        yield c


def chat_requests_seen(stack: Stack, text: str) -> int:
    """How many chat calls the fake served; each test uses unique text, counted via the events it caused."""
    del text
    stats = stack.fake_stats()
    return int(sum(stats["requests"].get("/v1/chat/completions", {}).values()))


def test_sigkill_of_worker_mid_task_still_succeeds_exactly_once(own_stack: Stack, api: httpx.Client) -> None:
    worker = own_stack.start_worker("provider")
    body = {
        "type": "chat",
        "model": "chat-default",
        "options": {"timeout_s": 5},
        "input": chat(f"survive {secrets.token_hex(4)} [[sleep:2500]]"),
    }
    task_id = api.post("/v1/tasks", json=body).json()["id"]
    wait_task(api, task_id, ("running",), timeout=20)
    worker.kill()
    assert not worker.alive()
    replacement = own_stack.start_worker("provider")
    try:
        task = wait_task(api, task_id, timeout=60)
    finally:
        replacement.stop()
    assert task["status"] == "succeeded", task
    # The killed worker's call left no attempt; the replacement's call is the one and only result.
    assert [a["status"] for a in task["attempts"]] == ["succeeded"]
    events = [r[0] for r in own_stack.sql("SELECT type FROM events WHERE task_id = %s ORDER BY id", task_id)]
    assert events.count("task.succeeded") == 1
    assert "task.retrying" in events  # the sweeper's reclaim of the expired lease
    assert own_stack.sql("SELECT reclaim_count FROM tasks WHERE id = %s", task_id) == [(1,)]


def test_redis_flushed_after_202_sweeper_republishes(own_stack: Stack, api: httpx.Client) -> None:
    body = {"type": "chat", "model": "chat-default", "input": chat(f"lost message {secrets.token_hex(4)}")}
    response = api.post("/v1/tasks", json=body)
    assert response.status_code == 202
    task_id = response.json()["id"]
    # No provider worker runs: the message sits in Redis (the API publishes from a thread of its own, just
    # after the 202) until we throw it away.
    wait_until(lambda: own_stack.redis.llen("provider") == 1, timeout=10, what="the task's message")
    own_stack.redis.flushdb()
    assert own_stack.redis.llen("provider") == 0
    worker = own_stack.start_worker("provider")
    try:
        task = wait_task(api, task_id, timeout=60)
    finally:
        worker.stop()
    assert task["status"] == "succeeded", task
    assert len(task["attempts"]) == 1


def test_cancel_of_queued_task_never_runs(own_stack: Stack, api: httpx.Client) -> None:
    before = chat_requests_seen(own_stack, "")
    task_id = api.post(
        "/v1/tasks", json={"type": "chat", "model": "chat-default", "input": chat(f"never {secrets.token_hex(4)}")}
    ).json()["id"]
    canceled = api.post(f"/v1/tasks/{task_id}/cancel")
    assert canceled.status_code == 200
    assert canceled.json()["status"] == "canceled"
    # A worker now consumes the message (and the sweeper may re-publish): the claim must refuse it.
    worker = own_stack.start_worker("provider")
    try:
        probe = api.post("/v1/tasks", json={"type": "chat", "model": "chat-default", "input": chat("after")})
        wait_task(api, probe.json()["id"], timeout=30)
    finally:
        worker.stop()
    task = api.get(f"/v1/tasks/{task_id}").json()
    assert task["status"] == "canceled"
    assert task["attempts"] == []
    assert chat_requests_seen(own_stack, "") == before + 1  # only the probe reached the provider
    events = [r[0] for r in own_stack.sql("SELECT type FROM events WHERE task_id = %s ORDER BY id", task_id)]
    assert events == ["task.queued", "task.canceled"]


def test_long_retry_wait_is_a_durable_due_time(own_stack: Stack, api: httpx.Client) -> None:
    # Retry-After above the inline limit releases the worker: the task is queued with a due time in Postgres.
    worker = own_stack.start_worker("provider")
    try:
        text = f"later {secrets.token_hex(4)} [[fail:429:1]] [[retry-after:7]]"
        task_id = api.post("/v1/tasks", json={"type": "chat", "model": "chat-default", "input": chat(text)}).json()[
            "id"
        ]

        def waiting() -> bool:
            rows = own_stack.sql("SELECT status, due_at, claim_id FROM tasks WHERE id = %s", task_id)
            return bool(rows and rows[0][0] == "queued" and rows[0][1] is not None and rows[0][2] is None)

        wait_until(waiting, timeout=20, what="the task to wait with a due time")
        task = wait_task(api, task_id, timeout=40)
    finally:
        worker.stop()
    assert task["status"] == "succeeded", task
    assert [a["status"] for a in task["attempts"]] == ["failed", "succeeded"]


def test_sigkill_of_worker_mid_run_still_completes_each_step_once(own_stack: Stack, api: httpx.Client) -> None:
    nonce = secrets.token_hex(4)
    steps = [
        {
            "id": "first",
            "type": "chat",
            "model": "chat-default",
            "timeout_s": 5,
            "input": {"messages": [{"role": "user", "content": f"{nonce} first [[sleep:2500]]"}]},
        },
        {
            "id": "second",
            "type": "chat",
            "model": "chat-default",
            "input": {"messages": [{"role": "user", "content": "after {{ steps.first.output.content }}"}]},
        },
    ]
    assert api.post("/v1/workflows", json={"name": f"kill_{nonce}", "steps": steps}).status_code == 201
    worker = own_stack.start_worker("provider")
    run_id = api.post(f"/v1/workflows/kill_{nonce}/runs", json={"input": {}}).json()["id"]
    wait_until(lambda: api.get(f"/v1/runs/{run_id}").json()["steps"]["first"]["status"] == "running", timeout=20)
    worker.kill()
    replacement = own_stack.start_worker("provider")
    try:
        run = wait_status(api, f"/v1/runs/{run_id}", timeout=60)
    finally:
        replacement.stop()
    assert run["status"] == "succeeded", run
    for step in run["steps"].values():
        assert len(step["task_ids"]) == 1
        task = api.get(f"/v1/tasks/{step['task_ids'][0]}").json()
        assert [a["status"] for a in task["attempts"]] == ["succeeded"]
    assert run["steps"]["second"]["output"]["content"] == f"echo: after echo: {nonce} first [[sleep:2500]]"


def test_events_survive_the_relay_being_killed(own_stack: Stack, api: httpx.Client) -> None:
    # The relay runs in the control worker. Killed, it leaves committed events unnumbered; the next relay
    # numbers them, in order, and tells the API processes to look (listeners miss nothing).
    task_id = api.post("/v1/tasks", json={"type": "chat", "model": "chat-default", "input": chat("x")}).json()["id"]
    with api.stream("GET", f"/v1/tasks/{task_id}/events") as before:
        assert next(line for line in before.iter_lines() if line.startswith("event:")) == "event: task.queued"
    own_stack.control.kill()
    worker = own_stack.start_worker("provider")
    try:
        later = api.post("/v1/tasks", json={"type": "chat", "model": "chat-default", "input": chat("y")}).json()["id"]
        assert wait_task(api, task_id)["status"] == "succeeded"
        assert wait_task(api, later)["status"] == "succeeded"
        # Written, but no relay has numbered them: not readable as events yet.
        assert api.get("/v1/events", params={"task_id": later}).json()["data"] == []
        with api.stream("GET", f"/v1/tasks/{later}/events") as stream:
            own_stack.control = own_stack.start_worker("control,webhooks")
            types = [line.removeprefix("event: ") for line in stream.iter_lines() if line.startswith("event:")]
    finally:
        worker.stop()
    assert types == ["task.queued", "task.started", "task.succeeded"]
    ids = [e["id"] for e in api.get("/v1/events", params={"task_id": task_id}).json()["data"]]
    assert len(ids) == 3
    assert ids == sorted(ids)


def test_canceling_a_queued_step_task_advances_its_run(tmp_path_factory: pytest.TempPathFactory) -> None:
    # No provider worker: the step's task stays queued until it is canceled. The runs' sweep re-advances only
    # runs that sat still for ten minutes here, so only the cancel itself can move the run on.
    stack = Stack(
        tmp_path_factory.mktemp("cancel-step"),
        redis_db=13,
        provider_worker=False,
        ml=False,
        env={"SWITCHYARD_REQUEUE_AFTER_S": "600"},
    )
    try:
        with stack.client(stack.new_key("steps", "admin")) as api:
            step = {"id": "only", "type": "chat", "model": "chat-default", "input": chat("waits")}
            assert api.post("/v1/workflows", json={"name": "one_step", "steps": [step]}).status_code == 201
            run_id = api.post("/v1/workflows/one_step/runs", json={"input": {}}).json()["id"]
            task_ids: list[str] = wait_until(
                lambda: api.get(f"/v1/runs/{run_id}").json()["steps"]["only"]["task_ids"], timeout=20
            )
            canceled = api.post(f"/v1/tasks/{task_ids[0]}/cancel")
            assert canceled.status_code == 200
            assert canceled.json()["status"] == "canceled"
            run = wait_status(api, f"/v1/runs/{run_id}", timeout=30)
    finally:
        stack.close()
    assert run["status"] == "failed", run
    assert run["steps"]["only"]["status"] == "canceled"
