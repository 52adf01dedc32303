"""The hand-off (workers/handoff.py): a synchronous call's task reaches a worker through a Redis list, not a
Celery message, when a worker takes the queue's hand-offs; with none, or when the id is lost on the way, the task
still runs once (Celery, and the sweeper's re-publish); `POST /v1/tasks` still goes by Celery."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from switchyard.workers.handoff import alive_key, list_key
from tests.processes import Process, cli, free_port
from tests.support import Stack, chat, wait_task, wait_until


class HandoffStack:
    """A stack without the default provider worker: the tests start the ones they need."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.key = stack.new_key(f"handoff-{secrets.token_hex(3)}", "admin")

    def worker(self, name: str, env: dict[str, str] | None = None) -> tuple[Process, int]:
        port = free_port()
        argv = cli("worker", "--queues", "provider", "--concurrency", "8", "--loglevel", "INFO")
        proc = self.stack.start(name, [*argv, "--metrics-port", str(port)], env)
        wait_until(lambda: "ready." in proc.log() or not proc.alive(), timeout=60, what=name)
        assert proc.alive(), proc.log()[-3000:]
        return proc, port

    def call(self, text: str, timeout: float = 30) -> httpx.Response:
        return httpx.post(
            f"{self.stack.url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {self.key}"},
            json={"model": "chat-default", "messages": [{"role": "user", "content": text}]},
            timeout=timeout,
        )


@pytest.fixture(scope="module")
def hs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HandoffStack]:
    s = Stack(tmp_path_factory.mktemp("handoff"), redis_db=11, provider_worker=False, ml=False)
    yield HandoffStack(s)
    s.close()


def handed_off(port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "switchyard_handoff_tasks_total" and s.labels.get("queue") == "provider"
    )


def test_a_synchronous_call_goes_by_the_hand_off_and_a_submitted_task_by_celery(hs: HandoffStack) -> None:
    worker, port = hs.worker("worker-handoff")
    try:
        wait_until(lambda: hs.stack.redis.exists(alive_key("provider")), timeout=10, what="the announcement")
        for n in range(5):
            answer = hs.call(f"handed off {n} {secrets.token_hex(3)}")
            assert answer.status_code == 200, answer.text
            assert answer.json()["choices"][0]["message"]["content"].startswith("echo: handed off")
        assert handed_off(port) == 5
        # A task of POST /v1/tasks is a Celery message (Flower lists it), not a hand-off.
        with hs.stack.client(hs.key) as api:
            created = api.post("/v1/tasks", json={"type": "chat", "model": "chat-default", "input": chat("by celery")})
            assert created.status_code == 202, created.text
            assert wait_task(api, created.json()["id"])["status"] == "succeeded"
        assert handed_off(port) == 5
    finally:
        worker.stop()
    # A worker that stops withdraws its announcement: the API goes back to Celery messages at once.
    assert not hs.stack.redis.exists(alive_key("provider"))


def test_with_no_worker_taking_hand_offs_the_call_goes_by_celery(hs: HandoffStack) -> None:
    worker, port = hs.worker("worker-celery-only", {"SWITCHYARD_HANDOFF": "false"})
    try:
        assert not hs.stack.redis.exists(alive_key("provider"))
        answer = hs.call(f"no hand-off {secrets.token_hex(3)}")
        assert answer.status_code == 200, answer.text
        assert handed_off(port) == 0
    finally:
        worker.stop()


def test_an_id_lost_on_the_way_is_published_again_and_runs_once(hs: HandoffStack) -> None:
    # The API believes a worker takes the hand-offs (its announcement is there) but none pops them: the id sits
    # in the list, as one popped by a worker that died before its claim would be lost. A worker that takes
    # Celery messages only is running; the sweeper publishes the still-queued task to it.
    hs.stack.redis.delete(list_key("provider"))
    hs.stack.redis.set(alive_key("provider"), "1", ex=120)
    worker, _ = hs.worker("worker-sweep", {"SWITCHYARD_HANDOFF": "false"})
    try:
        answer = hs.call(f"lost on the way {secrets.token_hex(3)}", timeout=60)
        assert answer.status_code == 200, answer.text
        assert hs.stack.redis.llen(list_key("provider")) == 1
        task_id = answer.headers["x-switchyard-task-id"]
        with hs.stack.client(hs.key) as api:
            task = api.get(f"/v1/tasks/{task_id}").json()
        assert [a["status"] for a in task["attempts"]] == ["succeeded"]
    finally:
        worker.stop()
        hs.stack.redis.delete(alive_key("provider"), list_key("provider"))
