"""Embedded mode's local transports within one test process: the streamed chunks' Unix sockets
(`events/local_bus`) and the workers' health files (`providers/health_snapshots`). `test_embedded.py` runs
them between the real processes of `switchyard dev`."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson

from switchyard.core.config import load_config
from switchyard.events.bus import delta_event
from switchyard.events.local_bus import LocalDeltaListener, LocalDeltaSender
from switchyard.providers.health import EndedCall
from switchyard.providers.health_snapshots import MAX_AGE_S, WorkerSnapshots, health_folder, written_store
from switchyard.providers.limits import RateLimits
from tests.processes import wait_until

TENANT = "ten_01test"


def _chunk(index: int) -> dict[str, object]:
    return delta_event(task_id="task_01test", run_id=None, step_id=None, index=index, content=f" w{index}")


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    return int(done.stdout)


def test_a_burst_of_chunks_waits_in_the_socket_and_arrives_whole_and_in_order(tmp_path: Path) -> None:
    received: list[tuple[str, bytes]] = []

    async def scenario() -> None:
        listener = LocalDeltaListener(tmp_path, lambda tenant, message: received.append((tenant, message)))
        await listener.start()
        sender = LocalDeltaSender(tmp_path)
        # All sent while the loop does not read (a datagram socket would have kept 10 of them).
        for i in range(100):
            sender(TENANT, _chunk(i))
        for _ in range(200):
            if len(received) == 100:
                break
            await asyncio.sleep(0.01)
        sender.close()
        await listener.close()

    asyncio.run(scenario())
    assert {tenant for tenant, _ in received} == {TENANT}
    assert [orjson.loads(message)["delta"]["data"]["index"] for _, message in received] == list(range(100))
    assert not list(tmp_path.glob("*.sock"))  # the listener removed its socket


def test_a_listener_that_stops_reading_never_blocks_the_sender(tmp_path: Path) -> None:
    # A socket that accepts and never reads, as an API process whose loop is stuck.
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(tmp_path / f"{os.getpid()}.sock"))
    server.listen()
    sender = LocalDeltaSender(tmp_path)
    started = time.monotonic()
    for i in range(2000):
        sender(TENANT, _chunk(i))
    assert time.monotonic() - started < 10  # chunks are dropped, not waited for
    peer, _ = server.accept()
    sender.close()
    data = b""
    while chunk := peer.recv(1 << 16):
        data += chunk
    peer.close()
    server.close()
    # What got through is whole lines in order, and some were dropped; a half line at the end (the sender
    # closes a connection it could only half write to) is what the listener discards.
    lines = data.split(b"\n")[:-1]
    indexes = [orjson.loads(line.partition(b" ")[2])["delta"]["data"]["index"] for line in lines]
    assert indexes == list(range(len(indexes)))
    assert 0 < len(indexes) < 2000


def test_a_sender_removes_sockets_of_dead_processes_only(tmp_path: Path) -> None:
    stale, starting = tmp_path / f"{_dead_pid()}.sock", tmp_path / f"{os.getpid()}.sock"
    for path in (stale, starting):
        # Bound and not listening: a killed API process's socket, or one between bind and listen.
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(path))
        sock.close()
    LocalDeltaSender(tmp_path)(TENANT, _chunk(0))
    assert not stale.exists()
    assert starting.exists()


def test_the_api_reads_the_workers_health_files(tmp_path: Path) -> None:
    config_file = tmp_path / "config.yaml"
    config_file.write_text(
        "providers:\n  fake: {kind: openai, base_url: 'http://127.0.0.1:9/v1', api_key: fake}\n"
        "models:\n  chat:\n    type: chat\n    deployments:\n      - {provider: fake, model: m, rpm: 10}\n"
    )
    config = load_config(config_file)
    dep = config.models["chat"].deployments[0]
    limits = RateLimits(None)
    store, writer = written_store(tmp_path, config, limits)
    bucket_s, now = 3.0, time.time()
    store.begin(dep.name, "call_slow", now + 60)
    store.end(EndedCall(dep.name, "call_ok", "ok", 12.5), now, bucket_s)
    store.end(EndedCall(dep.name, "call_fail", "fail", 40.0), now, bucket_s)
    assert limits.take(dep)

    writer.start()  # the change above is written within about a second
    folder = health_folder(tmp_path)
    own = wait_until(lambda: writer.path.exists() and writer.path.read_bytes(), timeout=5, what="the health file")
    # Another live worker's file (the parent process's pid), a killed worker's, and one too old.
    (folder / f"{os.getppid()}.json").write_bytes(own)
    (folder / f"{_dead_pid()}.json").write_bytes(own)
    (folder / "1.json").write_bytes(orjson.dumps({**orjson.loads(own), "written_at": now - MAX_AGE_S - 1}))

    snapshots = WorkerSnapshots(folder)
    [stats] = snapshots.read([dep.name], time.time(), bucket_s, keep=200)
    assert (stats.ok, stats.failed, stats.in_flight) == (2, 2, 1)
    assert stats.latencies_ms == (12.5, 12.5)
    assert snapshots.usage(dep) == {"rpm_remaining": 9, "tpm_remaining": None}
    assert sorted(p.stem for p in folder.glob("*.json")) == sorted([str(os.getpid()), str(os.getppid()), "1"])
    writer.close()
    assert not writer.path.exists()
