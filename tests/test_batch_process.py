"""The batch process (workers/batch_process.py): a worker on the provider and batch queues runs batch lines in a
child process of its own, supervised: at a lower CPU priority, restarted when it crashes (losing no line),
ended with its worker however that worker ends."""

from __future__ import annotations

import os
import secrets
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families

from switchyard.settings import Settings
from switchyard.workers.batch_process import splits_off
from tests.processes import Process, alive, children, cli, free_port, nice_of
from tests.support import Stack, wait_until
from tests.test_batches import assert_each_line_once, chat_line, start, wait_batch


@pytest.fixture(scope="module")
def own_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"SWITCHYARD_BATCH_WINDOW": "4"}
    s = Stack(tmp_path_factory.mktemp("batch-process"), redis_db=13, provider_worker=False, ml=False, env=env)
    yield s
    s.close()


@pytest.fixture
def own_sdk(own_stack: Stack) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(base_url=f"{own_stack.url}/v1", api_key=own_stack.new_key("b", "admin"), max_retries=0)
    yield client
    client.close()


def the_child(worker: Process) -> int:
    """The worker's batch process, once it is there."""
    found: list[int] = wait_until(lambda: children(worker.pid), timeout=30, what="the batch process")
    assert len(found) == 1, found
    return found[0]


def queues_by_node(stack: Stack) -> dict[str, list[str]]:
    app = Celery(broker=stack.redis_url)
    try:
        replies = app.control.inspect(timeout=3).active_queues() or {}
    finally:
        app.close()
    return {node: sorted(q["name"] for q in queues) for node, queues in replies.items()}


def test_batch_lines_run_in_a_child_process_at_a_lower_priority(own_stack: Stack, own_sdk: openai.OpenAI) -> None:
    worker = own_stack.start_worker("provider,batch")
    try:
        child = the_child(worker)
        assert nice_of(child) == nice_of(worker.pid) + 10
        # Two Celery nodes: the worker on the provider queue, its child on the batch queue.
        nodes = wait_until(
            lambda: (found := queues_by_node(own_stack)) and len(found) == 3 and found,
            timeout=30,
            what="three nodes (control, provider, batch)",
        )
        mine = {node: queues for node, queues in nodes.items() if f"-{worker.pid}@" in node or f"-{child}@" in node}
        assert sorted(mine.values()) == [["batch"], ["provider"]], nodes
        assert any(node.startswith(f"switchyard-batch-{child}@") for node in mine), nodes
        batch = start(own_sdk, [chat_line(f"c{i}", f"in the child {i}") for i in range(5)])
        done = wait_batch(own_sdk, batch.id, timeout=60)
        assert done.status == "completed", done
        assert done.request_counts.completed == 5
    finally:
        worker.stop()
    assert not alive(child)


def test_a_crashed_batch_process_is_replaced_and_no_line_is_lost(own_stack: Stack, own_sdk: openai.OpenAI) -> None:
    worker = own_stack.start_worker("provider,batch")
    try:
        first = the_child(worker)
        nonce = secrets.token_hex(3)
        batch = start(own_sdk, [chat_line(f"k{i}", f"{nonce} {i} [[sleep:1500]]") for i in range(6)])

        def running() -> bool:
            rows = own_stack.sql("SELECT count(*) FROM tasks WHERE batch_id = %s AND status = 'running'", batch.id)
            return bool(rows[0][0] > 0)

        wait_until(running, timeout=30, interval=0.05, what="a running line")
        os.kill(first, signal.SIGKILL)
        second = wait_until(
            lambda: [pid for pid in children(worker.pid) if pid != first], timeout=30, what="a new batch process"
        )[0]
        assert worker.alive()
        assert "batch_process_exited" in worker.log()
        assert_each_line_once(own_sdk, own_stack, wait_batch(own_sdk, batch.id, timeout=90), 6)
        assert alive(second)
    finally:
        worker.stop()


def test_the_batch_process_dies_with_a_killed_worker(own_stack: Stack) -> None:
    worker = own_stack.start_worker("provider,batch")
    child = the_child(worker)
    try:
        # SIGKILL to the worker alone, not its process group: the kernel tells the child (PR_SET_PDEATHSIG).
        os.kill(worker.pid, signal.SIGKILL)
        wait_until(lambda: not alive(child), timeout=30, what="the orphaned batch process to end")
    finally:
        worker.stop()


def test_sigterm_to_the_worker_stops_both(own_stack: Stack) -> None:
    worker = own_stack.start_worker("provider,batch")
    child = the_child(worker)
    try:
        t0 = time.monotonic()
        os.kill(worker.pid, signal.SIGTERM)
        worker.proc.wait(40)
        # The worker waits for its child before it exits.
        assert not alive(child)
        assert time.monotonic() - t0 < 30
        assert worker.proc.returncode == 0, worker.log()[-3000:]
    finally:
        worker.stop()


def test_the_batch_process_can_be_turned_off(own_stack: Stack, own_sdk: openai.OpenAI) -> None:
    argv = cli("worker", "--queues", "provider,batch", "--concurrency", "16", "--loglevel", "INFO")
    worker = own_stack.start("worker-single", argv, {"SWITCHYARD_BATCH_PROCESS": "false"})
    try:
        wait_until(lambda: "ready." in worker.log(), timeout=60, what="the worker")
        time.sleep(1)
        assert children(worker.pid) == []
        nodes = queues_by_node(own_stack)
        assert [q for node, q in nodes.items() if f"-{worker.pid}@" in node] == [["batch", "provider"]], nodes
        batch = start(own_sdk, [chat_line("one", "in one process")])
        assert wait_batch(own_sdk, batch.id, timeout=60).status == "completed"
    finally:
        worker.stop()


def test_the_batch_process_counts_reach_the_workers_metrics_port(own_stack: Stack, own_sdk: openai.OpenAI) -> None:
    port = free_port()
    argv = cli("worker", "--queues", "provider,batch", "--concurrency", "16", "--metrics-port", str(port))
    worker = own_stack.start("worker-metrics", argv)
    try:
        wait_until(lambda: "ready." in worker.log(), timeout=60, what="the worker")
        the_child(worker)
        batch = start(own_sdk, [chat_line(f"m{i}", f"counted {i}") for i in range(3)])
        assert wait_batch(own_sdk, batch.id, timeout=60).status == "completed"
        own_sdk.chat.completions.create(model="chat-default", messages=[{"role": "user", "content": "interactive"}])

        def scraped() -> dict[str, float] | None:
            values: dict[str, float] = {}
            for family in text_string_to_metric_families(httpx.get(f"http://127.0.0.1:{port}/metrics").text):
                for sample in family.samples:
                    if sample.name == "switchyard_tasks_total" and sample.labels.get("status") == "succeeded":
                        values["tasks"] = values.get("tasks", 0) + sample.value
                    if sample.name == "switchyard_calls_in_flight":
                        values[f"lane_{sample.labels['lane']}"] = sample.value
            return values if values.get("tasks", 0) >= 4 else None

        # The lines' counts come from the child, the interactive call's from the worker: one port shows both.
        values = wait_until(scraped, timeout=20, what="4 tasks on the worker's port")
        assert values["tasks"] == 4, values
        assert values["lane_batch"] == 0, values
        assert values["lane_interactive"] == 0, values
    finally:
        worker.stop()


def test_which_workers_split(tmp_path: Path) -> None:
    settings = Settings(database_url="postgresql://x/y", data_dir=tmp_path)
    assert splits_off(["provider", "batch"], settings)
    assert splits_off(["provider", "ml", "control", "webhooks", "batch"], settings)
    assert not splits_off(["batch"], settings)  # it is the batch process
    assert not splits_off(["provider", "control"], settings)
    assert not splits_off(["provider", "batch"], settings.model_copy(update={"batch_process": False}))
    # Embedded mode: one process writes the SQLite file.
    sqlite = Settings(database_url=f"sqlite:///{tmp_path / 'db.sqlite'}", data_dir=tmp_path)
    assert not splits_off(["provider", "batch"], sqlite)
