"""Retention with short retentions (seconds): the leading worker deletes finished tasks with their attempts,
a prefix of the events, ended webhook deliveries with their attempts, ended batches with their lines and files
(bytes included) and audit entries; what is recent or still live stays, and a reader paging `/v1/events` by
`since` finds consecutive ids from the first that remains."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import Stack, chat, wait_task, wait_until

RETENTION_S = 6


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {
        "SWITCHYARD_RETENTION_TASKS_S": str(RETENTION_S),
        "SWITCHYARD_RETENTION_DELIVERIES_S": str(RETENTION_S),
        "SWITCHYARD_RETENTION_BATCHES_S": str(RETENTION_S),
        "SWITCHYARD_RETENTION_AUDIT_S": str(RETENTION_S),
        "SWITCHYARD_RETENTION_INTERVAL_S": "1",
        # Tiny steps, so that one pass takes several and the bounded loop is what does the work.
        "SWITCHYARD_RETENTION_BATCH": "2",
        "SWITCHYARD_RETENTION_MAX_BATCHES": "50",
        "SWITCHYARD_WEBHOOK_ALLOW_PRIVATE": "true",
        # A delivery fails for good at its first failed attempt (it then has ended, and can expire).
        "SWITCHYARD_WEBHOOK_RETRY_SCHEDULE_S": "[]",
    }
    s = Stack(tmp_path_factory.mktemp("retention"), redis_db=6, ml=False, env=env)
    yield s
    s.close()


def all_events(client: httpx.Client, **params: str) -> list[dict[str, object]]:
    """Every stored event of the tenant, paged by `since` the way a reader catches up."""
    found: list[dict[str, object]] = []
    since: object = 0
    while since is not None:
        page = client.get("/v1/events", params={"since": str(since), "limit": "3", **params}).json()
        found += page["data"]
        since = page["next"]
    return found


def submit(client: httpx.Client, text: str, **options: object) -> str:
    body = {"type": "chat", "model": "chat-default", "input": chat(text), "options": options}
    response = client.post("/v1/tasks", json=body)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def test_expired_rows_go_and_recent_and_live_ones_stay(stack: Stack) -> None:
    client = stack.client(stack.new_key("keeper", "admin"))
    # A subscription whose receiver refuses every POST (the fake's health check is GET only): each delivery
    # ends failed at once. Creating it writes an audit entry.
    hook = client.post("/v1/webhooks", json={"url": f"{stack.fake_url}/healthz", "events": ["task.succeeded"]})
    assert hook.status_code == 201, hook.text

    # An old batch, finished, with its input, output files.
    lines = [
        {
            "custom_id": str(n),
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "chat-default", "messages": chat(f"line {n}")["messages"]},
        }
        for n in range(3)
    ]
    content = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    upload = client.post("/v1/files", files={"file": ("in.jsonl", content)}, data={"purpose": "batch"}).json()
    batch = client.post(
        "/v1/batches",
        json={"input_file_id": upload["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"},
    ).json()
    done = wait_until(
        lambda: (b := client.get(f"/v1/batches/{batch['id']}").json())["status"] == "completed" and b,
        timeout=60,
        what="the batch completed",
    )
    file_ids = [upload["id"], done["output_file_id"]]
    keys = [row[0] for row in stack.sql("SELECT storage_key FROM files WHERE id = ANY(%s)", file_ids)]
    files_dir = stack.tmp / "data" / "files"
    assert all((files_dir / key).exists() for key in keys)

    # Old tasks, finished (with an attempt each, and a failed delivery each).
    old = [submit(client, f"old {n}") for n in range(5)]
    for task_id in old:
        assert wait_task(client, task_id)["status"] == "succeeded"
    wait_until(
        lambda: stack.sql("SELECT count(*) FROM webhook_deliveries WHERE status = 'failed'")[0][0] >= len(old),
        timeout=30,
        what="the deliveries ended",
    )
    # A live task: running far longer than the retention. It, and every event from its first on, must stay.
    live = submit(client, "[[sleep:25000]] still going", timeout_s=60)
    wait_task(client, live, ("running",))
    cut_at = time.time()

    def old_gone() -> bool:
        remaining = stack.sql("SELECT count(*) FROM tasks WHERE id = ANY(%s)", old)[0][0]
        batches = stack.sql("SELECT count(*) FROM batches")[0][0]
        return bool(remaining == 0 and batches == 0)

    wait_until(old_gone, timeout=RETENTION_S + 30, interval=0.5, what="the old tasks and batch deleted")
    assert time.time() - cut_at < RETENTION_S + 30
    recent = submit(client, "recent")
    assert wait_task(client, recent)["status"] == "succeeded"

    # Tasks: the old ones and their attempts are gone; the live and the recent ones stay.
    for task_id in old:
        assert client.get(f"/v1/tasks/{task_id}").status_code == 404
    assert stack.sql("SELECT count(*) FROM attempts WHERE task_id = ANY(%s)", old)[0][0] == 0
    assert (
        stack.sql("SELECT count(*) FROM attempts a LEFT JOIN tasks t ON t.id = a.task_id WHERE t.id IS NULL")[0][0] == 0
    )
    assert client.get(f"/v1/tasks/{live}").json()["status"] == "running"
    assert client.get(f"/v1/tasks/{recent}").status_code == 200

    # The batch, its lines, its files' rows and bytes.
    assert client.get(f"/v1/batches/{batch['id']}").status_code == 404
    assert stack.sql("SELECT count(*) FROM batch_lines")[0][0] == 0
    for file_id in file_ids:
        assert client.get(f"/v1/files/{file_id}").status_code == 404
    assert not any((files_dir / key).exists() for key in keys)

    # Deliveries (and their attempts) of the old events: gone. The audit entry too.
    wait_until(
        lambda: (
            stack.sql("SELECT count(*) FROM webhook_deliveries WHERE created_at < to_timestamp(%s)", cut_at)[0][0] == 0
        ),
        timeout=10,
        what="old deliveries deleted",
    )
    orphans = "SELECT count(*) FROM webhook_attempts a LEFT JOIN webhook_deliveries d ON d.id = a.delivery_id"
    assert stack.sql(orphans + " WHERE d.id IS NULL")[0][0] == 0
    assert stack.sql("SELECT count(*) FROM audit_log")[0][0] == 0

    # Events: a prefix went; what remains pages with consecutive ids (no hole) and includes all of the live
    # task's events (its first one included) and the recent task's.
    events = all_events(client)
    ids = [int(str(e["id"])) for e in events]
    assert ids[0] > 1, "nothing was deleted"
    assert ids == list(range(ids[0], ids[0] + len(ids)))
    assert not {e["task_id"] for e in events} & set(old)
    live_events = [e["type"] for e in all_events(client, task_id=live)]
    assert live_events[:2] == ["task.queued", "task.started"]
    assert "task.succeeded" in [e["type"] for e in all_events(client, task_id=recent)]
    client.close()


def test_nothing_is_deleted_without_retention(tmp_path: Path) -> None:
    from switchyard.retention.service import enabled
    from switchyard.settings import Settings

    assert not enabled(Settings(data_dir=tmp_path))
    settings = Settings(data_dir=tmp_path, retention_tasks_days=0.5)
    assert settings.retention_s("tasks") == 43200
    assert settings.retention_s("events") == 43200  # events follow the tasks unless given their own
    assert settings.retention_s("audit") is None
    assert Settings(retention_audit_days=0).retention_s("audit") is None
