"""GET /v1/usage through the real stack: one tenant's tokens, requests, errors and cost, by model, provider
and day, over a span of time."""

from __future__ import annotations

import math
import secrets
from datetime import UTC, datetime, timedelta

import pytest

from tests.support import Stack, chat, wait_task


def test_usage_groups_a_tenants_calls(stack: Stack) -> None:
    with stack.client(stack.new_key(f"usage-{secrets.token_hex(3)}", "member")) as api:
        ok = api.post("/v1/tasks", json={"type": "chat", "model": "chat-default", "input": chat("four")}).json()
        retried = api.post(
            "/v1/tasks",
            json={"type": "chat", "model": "chat-default", "input": chat(f"x {secrets.token_hex(2)} [[fail:503:1]]")},
        ).json()
        embedded = api.post(
            "/v1/tasks", json={"type": "embed", "model": "embed-default", "input": {"input": "abcd"}}
        ).json()
        tasks = [wait_task(api, t["id"]) for t in (ok, retried, embedded)]
        assert [t["status"] for t in tasks] == ["succeeded"] * 3

        by_model = {row["model"]: row for row in api.get("/v1/usage", params={"group_by": "model"}).json()["data"]}
        assert set(by_model) == {"chat-default", "embed-default"}
        chat_row = by_model["chat-default"]
        assert chat_row["requests"] == 3  # two calls of the retried task, one of the other
        assert chat_row["errors"] == 1
        assert chat_row["tasks"] == 2
        assert chat_row["input_tokens"] == sum(a["usage"]["input_tokens"] for t in tasks[:2] for a in t["attempts"])
        assert chat_row["cost_usd"] == pytest.approx(tasks[0]["cost_usd"] + tasks[1]["cost_usd"])
        assert by_model["embed-default"]["input_tokens"] == math.ceil(len("abcd") / 4)

        body = api.get("/v1/usage", params={"group_by": "provider"}).json()
        assert [row["provider"] for row in body["data"]] == ["fake"]
        assert body["total"]["requests"] == 4
        assert body["total"]["cost_usd"] == pytest.approx(sum(t["cost_usd"] for t in tasks))

        today = datetime.now(UTC).date().isoformat()
        by_day = api.get("/v1/usage", params={"group_by": "day"}).json()["data"]
        assert [(row["day"], row["requests"]) for row in by_day] == [(today, 4)]

        # A span that ended before these calls has none of them.
        earlier = (datetime.now(UTC) - timedelta(days=2)).isoformat()
        assert api.get("/v1/usage", params={"to": earlier}).json()["data"] == []
        bad = api.get("/v1/usage", params={"from": "yesterday"})
        assert bad.status_code == 422
        assert bad.json()["error"]["param"] == "from"
        assert api.get("/v1/usage", params={"group_by": "colour"}).status_code == 422
