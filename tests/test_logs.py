"""JSON logs through the real stack: one object a line, with the request's id (an incoming `X-Request-ID` kept
and echoed), the task's id and the trace's id where the work happens, and no message content."""

from __future__ import annotations

import secrets
from typing import Any

import orjson

from tests.support import Stack, chat, wait_task, wait_until


def _json_lines(text: str) -> list[dict[str, Any]]:
    """Every line a logger wrote (the Celery banner, printed before logging starts, is not one)."""
    lines = []
    for line in text.splitlines():
        if line.startswith("{"):
            lines.append(orjson.loads(line))
    return lines


def test_request_id_is_kept_and_echoed_or_made(otel_stack: Stack, otel_key: str) -> None:
    with otel_stack.client(otel_key) as client:
        mine = f"req-{secrets.token_hex(6)}"
        assert client.get("/v1/models", headers={"X-Request-ID": mine}).headers["x-request-id"] == mine
        made = client.get("/v1/models").headers["x-request-id"]
        assert len(made) == 32
        assert made != mine
        # A value that could not be echoed safely is replaced.
        odd = client.get("/v1/models", headers={"X-Request-ID": "x" * 500}).headers["x-request-id"]
        assert odd != "x" * 500
        # Errors carry it too.
        assert client.get("/v1/tasks/task_nope", headers={"X-Request-ID": mine}).headers["x-request-id"] == mine


def test_json_lines_carry_request_task_and_trace_ids_and_no_content(otel_stack: Stack, otel_key: str) -> None:
    secret_text = f"confidential prompt {secrets.token_hex(8)}"
    request_id = f"req-{secrets.token_hex(6)}"
    trace_id = secrets.token_hex(16)
    with otel_stack.client(otel_key) as client:
        created = client.post(
            "/v1/tasks",
            json={"type": "chat", "model": "chat-default", "input": chat(secret_text)},
            headers={"X-Request-ID": request_id, "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"},
        )
        assert created.status_code == 202, created.text
        assert created.headers["x-request-id"] == request_id
        task = wait_task(client, created.json()["id"])
    assert task["status"] == "succeeded"

    def api_line() -> dict[str, Any] | None:
        for line in _json_lines(otel_stack.api.log()):
            if line.get("request_id") == request_id:
                return line
        return None

    line = wait_until(api_line, timeout=10, what="the API's line for the request")
    assert line["trace_id"] == trace_id
    assert {"event", "level", "logger", "timestamp"} <= line.keys()

    assert otel_stack.provider is not None
    provider = otel_stack.provider

    def worker_line() -> dict[str, Any] | None:
        for line in _json_lines(provider.log()):
            if line.get("task_id") == task["id"] and line.get("event") == "execution_ended":
                return line
        return None

    line = wait_until(worker_line, timeout=10, what="the worker's line for the task")
    assert line["trace_id"] == trace_id
    # Every line a logger wrote parses, the libraries' included; none has the prompt or the answer.
    for proc in otel_stack.processes:
        text = proc.log()
        assert secret_text not in text, proc.name
        for raw in text.splitlines():
            if raw.startswith("{"):
                orjson.loads(raw)
