"""`GET /v1/runs` reads a page of runs in a fixed number of queries, however many runs the page holds, and each
run in it is the same view `GET /v1/runs/{id}` gives."""

from __future__ import annotations

import secrets
from typing import Any

import httpx
from sqlalchemy import event

from switchyard.core.db import Database
from switchyard.settings import Settings
from switchyard.workflows import service
from tests.support import Stack, chat, wait_status

RUNS = 6


def test_a_page_of_runs_is_three_queries_and_the_same_views_as_one_run(stack: Stack) -> None:
    key = stack.new_key(f"runs-page-{secrets.token_hex(3)}", "admin")
    tenant_id = stack.sql("SELECT tenant_id FROM api_keys WHERE prefix = %s", key[:10])[0][0]
    name = f"page-{secrets.token_hex(3)}"
    steps = [
        {"id": "a", "type": "chat", "model": "chat-default", "input": chat("first")},
        {"id": "b", "type": "chat", "model": "chat-default", "input": chat("then {{ steps.a.output.content }}")},
    ]
    with stack.client(key) as client:
        assert client.post("/v1/workflows", json={"name": name, "steps": steps}).status_code == 201
        ids = [client.post(f"/v1/workflows/{name}/runs", json={"input": {}}).json()["id"] for _ in range(RUNS)]
        for run_id in ids:
            wait_status(client, f"/v1/runs/{run_id}", timeout=60)
        page = client.get("/v1/runs", params={"limit": 100}).json()["data"]
        assert [r["id"] for r in page] == sorted(ids, reverse=True)
        singles: dict[str, Any] = {run_id: client.get(f"/v1/runs/{run_id}").json() for run_id in ids}
    for view in page:
        assert view == singles[view["id"]]
        assert all(len(step["task_ids"]) == 1 for step in view["steps"].values()), view

    db = Database(Settings(database_url=stack.database_url))
    statements: list[str] = []
    event.listen(db.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    try:
        with db.transaction() as tx:
            listed = service.list_runs(tx, tenant_id, workflow=None, status=None, after=None, limit=100)
    finally:
        db.engine.dispose()
    assert len(listed["data"]) == RUNS
    # The runs, their steps, their tasks: not two more per run.
    assert len(statements) == 3, statements


def test_an_empty_page_of_runs(stack: Stack) -> None:
    key = stack.new_key(f"runs-empty-{secrets.token_hex(3)}", "viewer")
    response = httpx.get(f"{stack.url}/v1/runs", headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json() == {"data": [], "next": None}
