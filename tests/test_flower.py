"""`switchyard flower`, a real Flower beside a real stack: Switchyard's messages listed by task type and model with
their task, run and batch ids in the args, Flower's HTTP API behind SWITCHYARD_FLOWER_BASIC_AUTH, loopback unless
told otherwise (and never a public address without credentials), its state kept across a restart, and task
events that SWITCHYARD_TASK_EVENTS=false turns off (Flower does not turn them on again)."""

from __future__ import annotations

import base64
import json
import os
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from celery import Celery

from tests.processes import children
from tests.support import ROOT, Process, Stack, chat, cli, free_port, wait_http, wait_task, wait_until

USER, PASSWORD = "watcher", secrets.token_urlsafe(12)
AUTH = (USER, PASSWORD)
CREDENTIALS = {"SWITCHYARD_FLOWER_BASIC_AUTH": f"someone:else,{USER}:{PASSWORD}"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # A stack of this module's own: the events test replaces its provider worker.
    s = Stack(tmp_path_factory.mktemp("flower"), redis_db=15, ml=False)
    yield s
    s.close()


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[httpx.Client]:
    with stack.client(stack.new_key("flower-watchers")) as c:
        yield c


def start_flower(stack: Stack, data_dir: Path, *args: str, env: dict[str, str] | None = None) -> tuple[Process, str]:
    """`switchyard flower` on a free port, its state in `data_dir`; with credentials, returns once it receives the
    broker's events (a task's events published before that would never reach it)."""
    env = env if env is not None else CREDENTIALS
    port = free_port()
    proc = stack.start(
        "flower", cli("flower", "--port", str(port), *args), env={"SWITCHYARD_DATA_DIR": str(data_dir), **env}
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/healthcheck", proc)
    if env.get("SWITCHYARD_FLOWER_BASIC_AUTH"):
        receiving(stack, url)
    return proc, url


def receiving(stack: Stack, url: str) -> None:
    """Wait until Flower receives events: its log says it is connected before it subscribes, so send it an
    event of our own until one arrives."""
    probe = f"probe-{secrets.token_hex(4)}"
    with Celery(broker=stack.redis_url).events.default_dispatcher() as dispatcher:

        def arrived() -> bool:
            dispatcher.send("task-sent", uuid=probe, name="flower-probe")
            return bool(flower_tasks(url, probe))

        wait_until(arrived, timeout=30, interval=0.3, what="Flower to receive events")


def flower_tasks(url: str, search: str) -> dict[str, Any]:
    """Flower's `/api/tasks` matching `search` (a substring of a message's name, args, ...), by message id."""
    answer = httpx.get(f"{url}/api/tasks", params={"search": search}, auth=AUTH, timeout=10)
    assert answer.status_code == 200, answer.text
    tasks: dict[str, Any] = answer.json()
    return tasks


def wait_listed(url: str, search: str, state: str = "SUCCESS") -> dict[str, Any]:
    """The one message Flower lists for `search`, once it has reached `state`."""

    def listed() -> dict[str, Any] | None:
        found = [t for t in flower_tasks(url, search).values() if t["state"] == state]
        return found[0] if found else None

    found: dict[str, Any] = wait_until(listed, timeout=30, what=f"Flower to list {search} as {state}")
    return found


def listening_addresses(port: int) -> set[str]:
    """The local addresses of the sockets listening on `port` (from /proc: what the kernel has, not a log line)."""
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        with open(table) as f:
            for row in f.read().splitlines()[1:]:
                local, state = row.split()[1], row.split()[3]
                address, hex_port = local.split(":")
                if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                    raw = bytes.fromhex(address)
                    # /proc prints each 32-bit word in host (little-endian) order.
                    ordered = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                    family = socket.AF_INET if len(ordered) == 4 else socket.AF_INET6
                    found.add(socket.inet_ntop(family, ordered))
    return found


def test_flower_lists_a_task_by_type_and_model_with_its_id(stack: Stack, client: httpx.Client, tmp_path: Path) -> None:
    proc, url = start_flower(stack, tmp_path)
    try:
        task = client.post("/v1/tasks", json={"type": "chat", "model": "chat-default", "input": chat("hi flower")})
        assert task.status_code == 202, task.text
        task_id = task.json()["id"]
        assert wait_task(client, task_id)["status"] == "succeeded"

        listed = wait_listed(url, task_id)
        assert listed["name"] == "chat chat-default"
        assert listed["args"] == f"task={task_id}"
        assert listed["worker"].startswith("switchyard-provider")
        # The UI's filter by name finds it too (one name per type and model, whatever the message carries).
        names = httpx.get(f"{url}/api/task/types", auth=AUTH, timeout=10).json()["task-types"]
        assert "chat chat-default" in names
    finally:
        proc.stop()


def test_flower_lists_a_batchs_lines_under_the_batch_id(stack: Stack, client: httpx.Client, tmp_path: Path) -> None:
    proc, url = start_flower(stack, tmp_path)
    try:
        lines = [
            {
                "custom_id": f"q{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "chat-default", "messages": [{"role": "user", "content": f"line {i}"}]},
            }
            for i in range(3)
        ]
        upload = client.post(
            "/v1/files",
            files={"file": ("in.jsonl", "".join(json.dumps(line) + "\n" for line in lines).encode())},
            data={"purpose": "batch"},
        )
        assert upload.status_code == 200, upload.text
        batch = client.post(
            "/v1/batches",
            json={
                "input_file_id": upload.json()["id"],
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
            },
        )
        assert batch.status_code == 200, batch.text
        batch_id = batch.json()["id"]
        wait_until(
            lambda: client.get(f"/v1/batches/{batch_id}").json()["status"] == "completed",
            timeout=60,
            what=f"batch {batch_id} completed",
        )

        # The lines travel three to a message (released together), named by their type and model.
        lines_message = wait_listed(url, f"batch={batch_id}")
        assert lines_message["name"] == "chat chat-default"
        assert lines_message["args"].endswith(f"count=3 batch={batch_id}")
        task_ids = {row[0] for row in stack.sql("SELECT id FROM tasks WHERE batch_id = %s", batch_id)}
        assert set(lines_message["args"].split()[0].removeprefix("tasks=").split(",")) == task_ids
    finally:
        proc.stop()


def test_flower_api_needs_the_credentials(stack: Stack, tmp_path: Path) -> None:
    proc, url = start_flower(stack, tmp_path)
    try:
        assert httpx.get(f"{url}/api/tasks", timeout=10).status_code == 401
        assert httpx.get(f"{url}/api/tasks", auth=(USER, "wrong"), timeout=10).status_code == 401
        assert httpx.get(f"{url}/api/tasks", auth=AUTH, timeout=10).status_code == 200
        # Every pair of the list is accepted.
        assert httpx.get(f"{url}/api/tasks", auth=("someone", "else"), timeout=10).status_code == 200
        # The UI too.
        assert httpx.get(f"{url}/tasks", timeout=10).status_code == 401
        assert PASSWORD not in proc.log()
    finally:
        proc.stop()


def test_flower_binds_to_loopback_by_default(stack: Stack, tmp_path: Path) -> None:
    proc, url = start_flower(stack, tmp_path, env={})
    try:
        port = int(url.rsplit(":", 1)[1])
        assert listening_addresses(port) == {"127.0.0.1"}
        # Without credentials Flower's API stays closed (FLOWER_UNAUTHENTICATED_API would open it).
        assert httpx.get(f"{url}/api/tasks", timeout=10).status_code == 401
    finally:
        proc.stop()


def refused(env: dict[str, str], *args: str) -> str:
    """The one line `switchyard flower` fails with."""
    done = subprocess.run(
        cli("flower", "--port", str(free_port()), *args),
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    return lines[0]


def test_flower_on_every_interface_needs_credentials(stack: Stack, tmp_path: Path) -> None:
    env = {k: v for k, v in stack.env.items() if k != "SWITCHYARD_FLOWER_BASIC_AUTH"}
    line = refused({**env, "SWITCHYARD_DATA_DIR": str(tmp_path / "data")}, "--address", "0.0.0.0")
    assert "0.0.0.0" in line
    assert "SWITCHYARD_FLOWER_BASIC_AUTH" in line
    assert not (tmp_path / "data").exists()

    # With credentials it serves there, and asks for them.
    proc, url = start_flower(stack, tmp_path, "--address", "0.0.0.0")
    try:
        assert listening_addresses(int(url.rsplit(":", 1)[1])) == {"0.0.0.0"}
        assert httpx.get(f"{url}/api/tasks", timeout=10).status_code == 401
        assert httpx.get(f"{url}/api/tasks", auth=AUTH, timeout=10).status_code == 200
    finally:
        proc.stop()


def test_flower_refuses_the_embedded_broker(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD_")}
    line = refused({**env, "SWITCHYARD_DATA_DIR": str(tmp_path / "data")})
    assert "SWITCHYARD_REDIS_URL" in line


def test_flower_state_survives_a_restart(stack: Stack, client: httpx.Client, tmp_path: Path) -> None:
    proc, url = start_flower(stack, tmp_path, "--save-interval", "0.5")
    stopped = False
    try:
        first = client.post("/v1/tasks", json={"type": "embed", "model": "embed-default", "input": {"input": ["a"]}})
        first_id = first.json()["id"]
        assert wait_task(client, first_id)["status"] == "succeeded"
        wait_listed(url, first_id)
        # A stop saves the state (SIGTERM, as compose and systemd stop it) ...
        proc.stop()
        stopped = True
        assert list(tmp_path.glob("flower.db*")), proc.log()[-3000:]

        # ... and the restarted Flower lists the task at once, from the saved state (its events are long gone).
        proc, url = start_flower(stack, tmp_path, "--save-interval", "0.5")
        stopped = False
        listed = flower_tasks(url, first_id)
        assert [t["name"] for t in listed.values()] == ["embed embed-default"], listed
        assert next(iter(listed.values()))["state"] == "SUCCESS"

        # A Flower killed outright keeps what its last periodic save held.
        second = client.post("/v1/tasks", json={"type": "embed", "model": "embed-default", "input": {"input": ["b"]}})
        second_id = second.json()["id"]
        assert wait_task(client, second_id)["status"] == "succeeded"
        wait_listed(url, second_id)
        time.sleep(1.5)
        proc.kill()
        stopped = True
        proc, url = start_flower(stack, tmp_path)
        stopped = False
        assert list(flower_tasks(url, second_id)), "the periodic save lost the task"
        assert list(flower_tasks(url, first_id))
    finally:
        if not stopped:
            proc.stop()


def test_task_events_off(stack: Stack, client: httpx.Client, tmp_path: Path) -> None:
    """SWITCHYARD_TASK_EVENTS=false: the worker publishes no task event, even with a Flower running (Flower asks
    every worker to turn events on every 5 s unless told not to)."""
    off = {"SWITCHYARD_TASK_EVENTS": "false"}
    assert stack.provider is not None
    stack.provider.stop()
    quiet = stack.start("worker-quiet", cli("worker", "--queues", "provider,batch", "--loglevel", "INFO"), off)
    wait_until(lambda: "ready." in quiet.log() or not quiet.alive(), timeout=60, what="the quiet worker")
    # The worker on the provider queue, and its batch process on the batch queue.
    child = wait_until(lambda: children(quiet.pid), timeout=30, what="the quiet worker's batch process")[0]
    nodes = (f"switchyard-provider-{quiet.pid}@", f"switchyard-batch-{child}@")
    proc, url = start_flower(stack, tmp_path, env={**CREDENTIALS, **off})
    events = redis.Redis.from_url(stack.redis_url).pubsub()
    try:
        # kombu's Redis transport publishes the `celeryev` fanout exchange on channels "/<db>.celeryev/<type>".
        events.psubscribe(f"/{stack.redis_url.rsplit('/', 1)[1]}.celeryev/*")
        time.sleep(6)  # past Flower's first "enable events" broadcast
        task_id = client.post("/v1/tasks", json={"type": "chat", "model": "chat-default", "input": chat("q")}).json()[
            "id"
        ]
        assert wait_task(client, task_id)["status"] == "succeeded"
        time.sleep(1)
        seen: list[dict[str, Any]] = []
        while (message := events.get_message(timeout=0.2)) is not None:
            if message["type"] == "pmessage":
                seen.append(json.loads(base64.b64decode(json.loads(message["data"])["body"])))
        # The API still says it sent the message (its own setting is on): the subscription works ...
        assert any(e["type"] == "task-sent" and task_id in e["args"] for e in seen), seen
        # ... and the worker says nothing, Flower running or not.
        from_quiet = [e["type"] for e in seen if e["hostname"].startswith(nodes)]
        assert [t for t in from_quiet if t.startswith("task-")] == [], from_quiet
    finally:
        events.close()
        proc.stop()
        quiet.stop()
        stack.provider = stack.start_worker("provider,batch")
