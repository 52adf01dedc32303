"""`switchyard dev` on a machine without Postgres or Redis: SQLite, the filesystem broker, real processes."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from websockets.asyncio.client import connect

from switchyard.defaults import DEFAULT_CONFIG
from tests.support import ROOT, Process, chat, cli, free_port, wait_status, wait_task, wait_until


@pytest.fixture(scope="module")
def dev_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("embedded")


@pytest.fixture(scope="module")
def dev(dev_tmp: Path) -> Iterator[tuple[str, str]]:
    tmp = dev_tmp
    # Nothing of the outer test environment: no database URL, no Redis, so the embedded defaults apply.
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD_")}
    env["SWITCHYARD_CONFIG"] = str(DEFAULT_CONFIG)
    env["SWITCHYARD_DATA_DIR"] = str(tmp / ".switchyard")
    port, fake_port = free_port(), free_port()
    proc = Process("dev", cli("dev", "--port", str(port), "--fake-port", str(fake_port)), env, tmp)
    try:

        def printed() -> re.Match[str] | None:
            assert proc.alive(), proc.log()[-4000:]
            return re.search(r"URL: (\S+).*?API key: (\S+)", proc.log(), re.S)

        match = wait_until(printed, timeout=90, what="switchyard dev to print its URL and key")
        yield match.group(1), match.group(2)
    finally:
        # A call still running gets the worker's shutdown grace (10 s) before it is handed back.
        proc.stop(timeout=40)
    data_dir = tmp / ".switchyard"
    assert (data_dir / "switchyard.db").exists()
    # The API's socket and the worker's health file go with their processes.
    # With the log's end: whether the worker closed (`worker_closed`) or `dev` had to kill it.
    assert not list((data_dir / "deltas").glob("*.sock")), proc.log()[-3000:]
    assert not list((data_dir / "health").glob("*.json")), proc.log()[-3000:]


def test_dev_mode_runs_chat_and_embed_tasks(dev: tuple[str, str]) -> None:
    url, key = dev
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        # The worker leads the periodic duties (a file lock on SQLite); until its first pass they are waited for.
        ready = wait_until(
            lambda: (r := client.get("/readyz")).json()["checks"].get("duties") == "ok" and r,
            timeout=60,
            what="the embedded worker to run the periodic duties",
        )
        assert ready.status_code == 200
        assert ready.json()["checks"] == {"database": "ok", "broker": "ok", "duties": "ok", "files": "ok"}
        assert ready.json()["duties"]["tasks"]["leader"].endswith(":worker")
        chat_id = client.post(
            "/v1/tasks", json={"type": "chat", "model": "chat-default", "input": chat("hello embedded")}
        ).json()["id"]
        embed_id = client.post(
            "/v1/tasks", json={"type": "embed", "model": "embed-default", "input": {"input": "vector"}}
        ).json()["id"]
        task = wait_task(client, chat_id, timeout=60)
        assert task["status"] == "succeeded", task
        assert task["result"]["content"] == "echo: hello embedded"
        assert task["cost_usd"] > 0
        assert wait_task(client, embed_id, timeout=60)["status"] == "succeeded"


def test_dev_mode_retries_and_cancels(dev: tuple[str, str]) -> None:
    url, key = dev
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        flaky = client.post(
            "/v1/tasks", json={"type": "chat", "model": "chat-default", "input": chat("embedded [[fail:503:1]]")}
        ).json()["id"]
        task = wait_task(client, flaky, timeout=60)
        assert [a["status"] for a in task["attempts"]] == ["failed", "succeeded"]
        assert client.get("/v1/tasks", params={"status": "succeeded"}).json()["data"]


def test_dev_mode_delivers_events_by_tailing_the_table(dev: tuple[str, str]) -> None:
    # No Redis: the relay numbers events by polling and the API's feeds tail the table.
    url, key = dev
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
        task_id = client.post(
            "/v1/tasks", json={"type": "chat", "model": "chat-default", "input": chat("embedded events")}
        ).json()["id"]
        with client.stream("GET", f"/v1/tasks/{task_id}/events") as response:
            assert response.status_code == 200
            records = [line for line in response.iter_lines() if line.startswith("event: ")]
        assert records == ["event: task.queued", "event: task.started", "event: task.succeeded"]

        async def over_websocket() -> list[str]:
            ws_url = url.replace("http://", "ws://") + f"/v1/ws?api_key={key}"
            async with connect(ws_url) as ws:
                await ws.send(json.dumps({"action": "subscribe", "all": True}))
                assert json.loads(await ws.recv())["type"] == "subscribed"
                body = {"type": "chat", "model": "chat-default", "input": chat("embedded ws")}
                other = (await asyncio.to_thread(client.post, "/v1/tasks", json=body)).json()["id"]
                types: list[str] = []
                while "task.succeeded" not in types:
                    frame = json.loads(await asyncio.wait_for(ws.recv(), 30))
                    assert frame["task_id"] == other
                    types.append(frame["type"])
                return types

        assert asyncio.run(over_websocket()) == ["task.queued", "task.started", "task.succeeded"]


def test_dev_mode_streams_chunks_to_websocket_subscribers(dev: tuple[str, str]) -> None:
    # No Redis: the worker sends the chunks to the API over a local socket.
    url, key = dev
    words = " ".join(f"word{i}" for i in range(40))
    text = f"stream {words} [[sleep:500]]"
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:

        async def scenario() -> tuple[str, list[dict[str, Any]]]:
            ws_url = url.replace("http://", "ws://") + f"/v1/ws?api_key={key}"
            async with connect(ws_url) as ws:
                await ws.send(json.dumps({"action": "subscribe", "all": True}))
                assert json.loads(await ws.recv())["type"] == "subscribed"
                body = {"type": "chat", "model": "chat-default", "input": chat(text), "options": {"stream": True}}
                task_id = (await asyncio.to_thread(client.post, "/v1/tasks", json=body)).json()["id"]
                # Chunks reach those following the task, not the tenant-wide subscription.
                await ws.send(json.dumps({"action": "subscribe", "task_id": task_id, "since": 0}))
                frames: list[dict[str, Any]] = []
                while not any(f.get("type") == "task.succeeded" and f.get("task_id") == task_id for f in frames):
                    frames.append(json.loads(await asyncio.wait_for(ws.recv(), 30)))
                return task_id, frames

        task_id, frames = asyncio.run(scenario())
    deltas = [f for f in frames if f.get("type") == "task.delta"]
    assert len(deltas) > 3, frames
    assert all(d["id"] is None and d["task_id"] == task_id for d in deltas)
    assert [d["data"]["index"] for d in deltas] == list(range(len(deltas)))
    final = next(f for f in frames if f.get("type") == "task.succeeded")
    assert frames.index(deltas[-1]) < frames.index(final)
    assert "".join(d["data"]["content"] for d in deltas) == final["data"]["result"]["content"] == f"echo: {text}"


def test_dev_mode_streams_openai_chat_completions_in_pieces(dev: tuple[str, str]) -> None:
    url, key = dev
    text = "stream " + " ".join(f"w{i}" for i in range(40))
    with openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60) as sdk:
        stream = sdk.chat.completions.create(
            model="chat-default", messages=[{"role": "user", "content": text}], stream=True
        )
        chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == f"echo: {text}"
    # Without chunks from the worker the route sends the whole text in one piece at the end.
    assert len(pieces) > 3, pieces
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]


def test_dev_mode_shows_provider_statistics(dev: tuple[str, str]) -> None:
    # The API makes no calls: what it shows comes from the worker's health file.
    url, key = dev
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:

        def deployment() -> dict[str, Any]:
            rows = client.get("/v1/providers").json()["data"]
            return next(row for row in rows if row["deployment"] == "fake/gpt-4o-mini")

        body = {"type": "chat", "model": "chat-default"}
        ids = [client.post("/v1/tasks", json={**body, "input": chat(f"stats {i}")}).json()["id"] for i in range(5)]
        slow = client.post("/v1/tasks", json={**body, "input": chat("stats slow [[sleep:3000]]")}).json()["id"]
        wait_until(lambda: deployment()["in_flight"] >= 1, timeout=30, what="the slow call to show in flight")
        for task_id in [*ids, slow]:
            assert wait_task(client, task_id, timeout=60)["status"] == "succeeded"
        row = wait_until(
            lambda: (r := deployment())["in_flight"] == 0 and r["latency_ms"]["samples"] >= 6 and r,
            timeout=10,
            what="the calls to show in the statistics",
        )
    assert row["breaker"]["state"] == "closed"
    assert row["breaker"]["ok"] >= 6
    assert row["success_rate"] > 0.5
    assert 0 < row["latency_ms"]["p50"] <= row["latency_ms"]["p95"]


def test_dev_mode_predicts_with_the_shipped_models(dev: tuple[str, str]) -> None:
    # No Redis here: the synchronous endpoint waits by watching the row.
    url, key = dev
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
        row = [0.9, 0.2, 68.4, 1.0, 2.0, 0.14, 0.05, 286.5]
        response = client.post("/v1/predict/risk-classifier", json={"inputs": {"features": [row, row]}})
        assert response.status_code == 200, response.text
        outputs = response.json()["outputs"]
        assert len(outputs["label"]) == 2
        assert len(outputs["probabilities"][0]) == 3


def test_dev_mode_runs_the_shipped_risk_analysis_workflow(dev: tuple[str, str]) -> None:
    # Packaged with Switchyard, loaded at start-up: predict steps on the shipped models, then LLM steps.
    url, key = dev
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
        body = {
            "input": {
                "portfolio_features": [1.4, 0.45, 30.0, 0.6, 5.0, 0.6, -0.2, 900.0],
                "transactions": [[3.0, 14.0, 2.0, 0.1, 3.0, 1.0], [5.5, 3.0, 0.0, 0.9, 40.0, 3.5]],
                "sectors": ["energy", "banking", "retail"],
            }
        }
        run_id = client.post("/v1/workflows/risk_analysis/runs", json=body).json()["id"]
        result = wait_status(client, f"/v1/runs/{run_id}", timeout=90)
        assert result["status"] == "succeeded", result
        assert result["output"]["risk_class"] in (0, 1, 2)
        assert len(result["output"]["scenarios"]) == 3
        assert result["steps"]["classify"]["output"]["outputs"]["probabilities"]
        assert result["cost_usd"] > 0
        # The worker and the sweep may advance a run at the same moment; SQLite has no row locks, yet each
        # step's transition happens once (the advance takes the database's write lock first).
        events = client.get("/v1/events", params={"run_id": run_id, "limit": 500}).json()["data"]
        transitions = [
            (e["type"], e.get("step_id") or e["data"].get("step_id"))
            for e in events
            if e["type"].startswith("run.") and e["type"] != "run.progress"  # progress is told many times
        ]
        assert len(transitions) == len(set(transitions)), transitions

        body = {
            "input": {
                "market": "EU retail",
                "assumptions": ["rates rise", "demand falls"],
                "scenario_features": [[120.0, 0.05, 0.1, 0.08, 0.04], [80.0, -0.02, 0.05, 0.15, 0.02]],
            }
        }
        run_id = client.post("/v1/workflows/scenario_generation/runs", json=body).json()["id"]
        result = wait_status(client, f"/v1/runs/{run_id}", timeout=90)
        assert result["status"] == "succeeded", result
        assert len(result["output"]["forecast_musd"]) == 2
        assert len(result["output"]["scenarios"]) == 2


def test_dev_mode_enforces_limits_and_budgets(dev: tuple[str, str], dev_tmp: Path) -> None:
    """No Redis: request windows count in the API process, budgets come from the database."""
    url, _ = dev
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD_")}
    env["SWITCHYARD_DATA_DIR"] = str(dev_tmp / ".switchyard")
    made = subprocess.run(
        cli("keys", "create", "--tenant", "embedded-limits", "--role", "member"),
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    key = made.stdout.strip().splitlines()[-1]
    with sqlite3.connect(dev_tmp / ".switchyard" / "switchyard.db") as db:
        db.execute(
            "UPDATE api_keys SET limits = ?, budget = ? WHERE prefix = ?",
            (json.dumps({"rpm": 3}), json.dumps({"max_per_call_usd": 0.0001, "daily_usd": 1.0}), key[:10]),
        )
    body = {"type": "chat", "model": "chat-default", "input": chat("hello limits", max_tokens=5)}
    left = 60 - time.time() % 60
    if left < 8:
        time.sleep(left + 0.2)
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        expensive = client.post("/v1/tasks", json={**body, "input": chat("x", max_tokens=100_000)})
        assert expensive.status_code == 429
        assert expensive.json()["error"]["type"] == "budget_exceeded"
        ids = []
        for _ in range(3):
            response = client.post("/v1/tasks", json=body)
            assert response.status_code == 202, response.text
            ids.append(response.json()["id"])
        assert response.headers["x-ratelimit-remaining-requests"] == "0"
        limited = client.post("/v1/tasks", json=body)
        assert limited.status_code == 429
        assert limited.json()["error"]["type"] == "rate_limit_error"
        cost = sum(wait_task(client, i, timeout=60)["cost_usd"] for i in ids)
        daily = client.get("/v1/budget").json()["key"]["windows"]["daily"]
        assert daily["spent_usd"] == pytest.approx(cost, abs=1e-9)
        assert daily["reserved_usd"] == 0


def test_readme_quickstart_is_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    quickstart = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"^\s*(make \S+)$", quickstart, re.M)
    assert commands == ["make dev", "make test"], commands
    assert Path(ROOT / "Makefile").exists()
