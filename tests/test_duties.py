"""The periodic duties run inside the workers, one leader at a time: a standby takes over from a SIGKILLed
leader and recovery goes on; a leader whose connection dies stops leading; `switchyard scheduler` beside a
leading worker only stands by; `/readyz` names a duty that has not run for too long.

These tests own their stack (no provider worker): they start, stop and kill workers themselves.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from datetime import datetime

import httpx
import pytest

from tests.support import (
    PG_ADMIN_URL,
    Process,
    Stack,
    chat,
    cli,
    create_database,
    drop_database,
    free_port,
    wait_http,
    wait_task,
    wait_until,
)

DUTIES = {"tasks", "workflow_runs", "webhook_deliveries", "batches"}
# switchyard.workers.duties.LOCK_KEY, as the tests see it from outside.
DUTIES_LOCK_KEY = 0x5377_7964_4475_7479


@pytest.fixture(scope="module")
def own_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("duties"), redis_db=12, provider_worker=False, ml=False)
    yield s
    s.close()


@pytest.fixture
def api(own_stack: Stack) -> Iterator[httpx.Client]:
    with own_stack.client(own_stack.new_key("duties", "admin")) as c:
        yield c


def leaders(stack: Stack) -> dict[str, str]:
    """Who last ran each duty (`host:pid:role`)."""
    return {name: leader for name, leader in stack.sql("SELECT name, leader FROM duties")}


def led_by(stack: Stack, proc: Process, role: str = "worker") -> bool:
    """Every duty was last run by `proc`."""
    found = leaders(stack)
    return set(found) == DUTIES and all(leader.endswith(f":{proc.pid}:{role}") for leader in found.values())


def advisory_holders(stack: Stack) -> int:
    """Sessions holding an advisory lock of this database (the duties' and the relay's leaders)."""
    rows = stack.sql(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )
    return int(rows[0][0])


def watch_leader(stack: Stack, proc: Process, seconds: float, role: str = "worker") -> None:
    """For `seconds` (several sweep intervals), every duty keeps being run by `proc` and by no one else."""
    deadline = time.monotonic() + seconds
    before = {name: at for name, at in stack.sql("SELECT name, last_run_at FROM duties")}
    while time.monotonic() < deadline:
        assert led_by(stack, proc, role), leaders(stack)
        time.sleep(0.2)
    after = {name: at for name, at in stack.sql("SELECT name, last_run_at FROM duties")}
    assert all(after[name] > before[name] for name in DUTIES), (before, after)  # the leader kept working


def test_one_worker_leads_and_a_standby_takes_over_from_a_killed_leader(own_stack: Stack, api: httpx.Client) -> None:
    control = own_stack.control
    wait_until(lambda: led_by(own_stack, control), timeout=30, what="the control worker to lead the duties")
    standby = own_stack.start_worker("webhooks")
    try:
        watch_leader(own_stack, control, 4)
        assert "duties_standing_by" in standby.log()
        assert "duties_leading" not in standby.log()

        # The leader dies without a word; the standby's next try takes the lock the server released.
        control.kill()
        wait_until(lambda: led_by(own_stack, standby), timeout=20, what="the standby to take over the duties")
        assert "duties_leading" in standby.log()

        # Recovery goes on under the new leader: a task whose message was flushed is published again.
        body = {"type": "chat", "model": "chat-default", "input": chat(f"after takeover {secrets.token_hex(4)}")}
        task_id = api.post("/v1/tasks", json=body).json()["id"]
        wait_until(lambda: own_stack.redis.llen("provider") == 1, timeout=10, what="the task's message")
        own_stack.redis.delete("provider")
        provider = own_stack.start_worker("provider")
        try:
            task = wait_task(api, task_id, timeout=60)
        finally:
            provider.stop()
        assert task["status"] == "succeeded", task
        assert len(task["attempts"]) == 1
    finally:
        # Back to one control worker, which leads once the standby has stepped down.
        own_stack.control = own_stack.start_worker("control,webhooks")
        standby.stop()
    wait_until(lambda: led_by(own_stack, own_stack.control), timeout=20, what="the new control worker to lead")


def test_scheduler_beside_a_leading_worker_only_stands_by(own_stack: Stack) -> None:
    control = own_stack.control
    wait_until(lambda: led_by(own_stack, control), timeout=30, what="the control worker to lead the duties")
    scheduler = own_stack.start("scheduler", cli("scheduler"))
    try:
        wait_until(lambda: "duties_standing_by" in scheduler.log(), timeout=30, what="the scheduler to start")
        watch_leader(own_stack, control, 4)
        assert "duties_leading" not in scheduler.log()
        # The duties' leader and the relay's: one lock holder each, whatever else competes.
        assert advisory_holders(own_stack) == 2

        # With the worker stopped (a warm shutdown gives the lock back at once), the scheduler leads.
        control.stop()
        wait_until(lambda: led_by(own_stack, scheduler, "scheduler"), timeout=20, what="the scheduler to lead")
        own_stack.control = own_stack.start_worker("control,webhooks")
        # Now the worker stands by, beside the leading scheduler.
        watch_leader(own_stack, scheduler, 3, "scheduler")
        assert "duties_leading" not in own_stack.control.log()
    finally:
        scheduler.stop()
    wait_until(lambda: led_by(own_stack, own_stack.control), timeout=20, what="the worker to lead again")


def duties_lock_holder(stack: Stack) -> int | None:
    """The server pid of the session holding the duties' advisory lock (its 64-bit key split in two halves)."""
    rows = stack.sql(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = %s AND objid = %s"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        DUTIES_LOCK_KEY >> 32,
        DUTIES_LOCK_KEY & 0xFFFF_FFFF,
    )
    return int(rows[0][0]) if rows else None


def last_run(stack: Stack, name: str) -> datetime:
    at: datetime = stack.sql("SELECT last_run_at FROM duties WHERE name = %s", name)[0][0]
    return at


def test_a_leader_whose_connection_dies_gives_way_and_the_duties_go_on(own_stack: Stack) -> None:
    control = own_stack.control
    wait_until(lambda: led_by(own_stack, control), timeout=30, what="the control worker to lead the duties")
    standby = own_stack.start_worker("webhooks")
    try:
        holder = duties_lock_holder(own_stack)
        assert holder is not None
        # The server ends the leader's session, as a failover or a cut connection would: the lock goes with it,
        # and the old leader's next sweep fails on the dead connection instead of running beside a new leader.
        own_stack.sql("SELECT pg_terminate_backend(%s)", holder)
        wait_until(lambda: "duties_failed" in control.log(), timeout=20, what="the old leader to notice")
        wait_until(lambda: duties_lock_holder(own_stack) not in (None, holder), timeout=20, what="a new leader session")
        since = last_run(own_stack, "tasks")
        wait_until(lambda: last_run(own_stack, "tasks") > since, timeout=20, what="the duties to run again")
    finally:
        standby.stop()
    wait_until(lambda: led_by(own_stack, own_stack.control), timeout=20, what="the control worker to lead")


def start_api(stack: Stack, **overrides: str) -> tuple[Process, str]:
    port = free_port()
    proc = stack.start("api-duties", cli("api", "--port", str(port)), overrides)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/healthz", proc)
    return proc, url


def test_readyz_names_a_duty_that_has_not_run(own_stack: Stack) -> None:
    control = own_stack.control
    wait_until(lambda: led_by(own_stack, control), timeout=30, what="the control worker to lead the duties")
    proc, url = start_api(own_stack, SWITCHYARD_DUTY_STALE_AFTER_S="3")
    try:
        ready = httpx.get(f"{url}/readyz", timeout=30)
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"]["duties"] == "ok"
        assert ready.json()["duties"]["tasks"]["leader"].endswith(f":{control.pid}:worker")

        # No worker at all: no one runs the duties, and the API says which.
        control.stop()

        # Each duty goes stale on its own clock (they last ran moments apart): wait until both are named.
        def not_ready() -> httpx.Response | None:
            response = httpx.get(f"{url}/readyz", timeout=30)
            if response.status_code != 503:
                return None
            return response if "webhook_deliveries" in response.json()["error"]["message"] else None

        stale = wait_until(not_ready, timeout=30, what="/readyz to report the stale duties")
        assert stale.headers["Retry-After"]
        body = stale.json()
        assert body["error"]["type"] == "service_unavailable"
        assert "tasks" in body["error"]["message"]
        assert "webhook_deliveries" in body["error"]["message"]
        assert body["checks"]["database"] == "ok"
        assert body["checks"]["duties"].startswith("not run for over 3s")

        # A worker comes back: it leads at once, and the service is ready again.
        own_stack.control = own_stack.start_worker("control,webhooks")
        wait_until(lambda: httpx.get(f"{url}/readyz", timeout=30).status_code == 200, timeout=30, what="ready again")
    finally:
        proc.stop()


def test_readyz_on_a_fresh_database_waits_for_a_first_worker(own_stack: Stack) -> None:
    # A database no worker has seen: not ready only once the API has been up longer than the threshold.
    name, database_url = create_database(PG_ADMIN_URL, "switchyard_test")
    try:
        env = {"SWITCHYARD_DATABASE_URL": database_url, "SWITCHYARD_DUTY_STALE_AFTER_S": "4"}
        own_stack.run_cli("migrate", env=env)
        proc, url = start_api(own_stack, **env)
        try:
            first = httpx.get(f"{url}/readyz", timeout=30)
            assert first.status_code == 200, first.text
            assert first.json()["checks"]["duties"].startswith("waiting for a worker")
            late = wait_until(
                lambda: (r := httpx.get(f"{url}/readyz", timeout=30)).status_code == 503 and r,
                timeout=30,
                what="/readyz to give up waiting",
            )
            assert "tasks" in late.json()["error"]["message"]
        finally:
            proc.stop()
    finally:
        drop_database(PG_ADMIN_URL, name)
