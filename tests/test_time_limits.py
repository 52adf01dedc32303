"""Issue 17, item 1: Celery tasks have time limits that match their leases, enforced in the thread pool (the
default) as in prefork; a provider call is cut at its `timeout_s` even when every read is within it; one advance
of a run renders for a bounded time, the rest going to a next advance."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import structlog
from celery.exceptions import SoftTimeLimitExceeded

from switchyard.workers.time_limits import TimeLimits
from tests.support import FINISHED, Stack, chat, wait_task, wait_until

# --- the watchdog, on real threads ------------------------------------------------------------------------------


def run_in_thread(limits: TimeLimits, soft: float, hard: float | None, body: Any) -> dict[str, Any]:
    """Run `body()` in a new thread registered with `limits`; what it raised (or returned) and how long it took."""
    seen: dict[str, Any] = {}

    def target() -> None:
        started = time.monotonic()
        limits.started("test.task", "req-1", soft, hard)
        try:
            seen["returned"] = body()
        except SoftTimeLimitExceeded as exc:
            seen["raised"] = exc
        finally:
            limits.ended()
            seen["elapsed"] = time.monotonic() - started

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(timeout=20)
    assert not thread.is_alive()
    return seen


def spin(seconds: float) -> str:
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        pass
    return "finished"


def test_a_task_past_its_soft_limit_gets_soft_time_limit_exceeded_in_its_thread() -> None:
    limits = TimeLimits(tick_s=0.05)
    limits.start()
    try:
        seen = run_in_thread(limits, 0.3, None, lambda: spin(10))
    finally:
        limits.stop()
    assert isinstance(seen.get("raised"), SoftTimeLimitExceeded)
    assert 0.3 <= seen["elapsed"] < 2.0


def test_a_thread_that_has_left_its_task_is_left_alone() -> None:
    limits = TimeLimits(tick_s=0.05)
    limits.start()
    seen: dict[str, Any] = {}

    def target() -> None:
        limits.started("test.task", "req-1", 0.3, None)
        spin(0.05)
        limits.ended()
        try:
            seen["after"] = spin(1.0)  # past the old limit, with no task registered
        except SoftTimeLimitExceeded as exc:
            seen["after"] = exc

    try:
        thread = threading.Thread(target=target)
        thread.start()
        thread.join(timeout=10)
    finally:
        limits.stop()
    assert seen["after"] == "finished"


def test_a_task_that_ignores_its_soft_limit_is_reported_at_its_hard_one() -> None:
    limits = TimeLimits(tick_s=0.05)
    limits.start()

    def stubborn() -> str:
        try:
            spin(10)
        except SoftTimeLimitExceeded:
            return spin(0.6)  # goes on past the hard limit
        return "not interrupted"

    try:
        with structlog.testing.capture_logs() as logs:
            seen = run_in_thread(limits, 0.2, 0.5, stubborn)
    finally:
        limits.stop()
    assert seen["returned"] == "finished"
    events = [entry["event"] for entry in logs]
    assert events == ["task_soft_time_limit", "task_hard_time_limit"], logs


# --- through a real worker --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def limit_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {
        # execute_task's soft limit is 0.9 × (timeout + grace) = 2.7 s; one call in flight per worker.
        "SWITCHYARD_DEFAULT_TIMEOUT_S": "2",
        "SWITCHYARD_LEASE_GRACE_S": "1",
        "SWITCHYARD_MAX_IN_FLIGHT": "1",
        # Templates that take a while each, and an advance that renders for 0.3 s at most.
        "SWITCHYARD_WORKFLOW_TEMPLATE_TIMEOUT_S": "20",
        "SWITCHYARD_WORKFLOW_ADVANCE_RENDER_S": "0.3",
    }
    s = Stack(tmp_path_factory.mktemp("time-limits"), redis_db=10, ml=False, env=env)
    yield s
    s.close()


@pytest.fixture
def api(limit_stack: Stack) -> Iterator[httpx.Client]:
    with limit_stack.client(limit_stack.new_key(f"t-{secrets.token_hex(3)}", "admin")) as c:
        yield c


def submit(api: httpx.Client, text: str, **options: Any) -> str:
    response = api.post(
        "/v1/tasks", json={"type": "chat", "model": "chat-default", "input": chat(text), "options": options}
    )
    assert response.status_code == 202, response.text
    task_id: str = response.json()["id"]
    return task_id


def test_a_worker_thread_waiting_past_its_soft_limit_gives_the_message_up_and_the_task_still_runs_once(
    limit_stack: Stack, api: httpx.Client
) -> None:
    assert limit_stack.provider is not None
    # The one slot is busy for 5 s; the next task's Celery thread waits for it past its 2.7 s soft limit.
    busy = submit(api, f"[[sleep:5000]] {secrets.token_hex(4)}", timeout_s=10)
    time.sleep(0.3)
    waiting = submit(api, f"after the busy one {secrets.token_hex(4)}")
    wait_until(
        lambda: "task_soft_time_limit" in limit_stack.provider.log(),  # type: ignore[union-attr]
        timeout=20,
        what="the soft time limit in the provider worker",
    )
    line = next(x for x in limit_stack.provider.log().splitlines() if "task_soft_time_limit" in x)
    assert "switchyard.execute_task" in line
    # The message is given up, not the task: the sweeper sends it again, and it runs once, after the busy one.
    first = wait_task(api, busy, timeout=30)
    second = wait_task(api, waiting, timeout=30)
    assert first["status"] == "succeeded", first
    assert second["status"] == "succeeded", second
    assert [a["status"] for a in second["attempts"]] == ["succeeded"]
    assert limit_stack.provider.alive()


def test_a_stream_that_trickles_past_timeout_s_is_cut_at_it(limit_stack: Stack, api: httpx.Client) -> None:
    # Each event comes 0.4 s after the last (every read well within the SDK's 1.5 s), twenty of them: without a
    # deadline on the whole call it would take 8 s.
    words = " ".join(f"w{i}" for i in range(80))
    started = time.monotonic()
    task_id = submit(api, f"[[trickle:400]] {words}", timeout_s=1.5, stream=True, max_attempts=1)
    task = wait_task(api, task_id, timeout=30)
    assert time.monotonic() - started < 6.0
    assert task["status"] == "failed", task
    assert "took longer than its timeout of 1.5s" in task["error"]["message"]


def test_an_advance_renders_for_a_bounded_time_and_a_next_one_renders_the_rest(
    limit_stack: Stack, api: httpx.Client
) -> None:
    # Eight steps ready at once, each input a template of a few tenths of a second: more than one advance's
    # 0.3 s. Each advance commits what it rendered and sends the next; the run ends with every step done.
    wf = f"wf_{secrets.token_hex(4)}"
    slow = "{% for i in range(400) %}{% set s = input.words | sort %}{% endfor %}{{ input.text }}"
    steps = [
        {
            "id": f"s{n}",
            "type": "chat",
            "model": "chat-default",
            "input": {"messages": [{"role": "user", "content": slow}]},
        }
        for n in range(8)
    ]
    assert api.post("/v1/workflows", json={"name": wf, "steps": steps}).status_code == 201
    words = [f"w{i}" for i in range(300, 0, -1)]
    started = api.post(f"/v1/workflows/{wf}/runs", json={"input": {"words": words, "text": "slowly"}})
    assert started.status_code == 202, started.text
    run = wait_until(
        lambda: (r := api.get(f"/v1/runs/{started.json()['id']}").json())["status"] in FINISHED and r,
        timeout=60,
        what="the run to finish",
    )
    assert run["status"] == "succeeded", run
    assert all(step["status"] == "succeeded" for step in run["steps"].values())
    logs = limit_stack.control.log() + (limit_stack.provider.log() if limit_stack.provider else "")
    assert "advance_continued" in logs
