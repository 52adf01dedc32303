"""Workflow DAGs through the real stack: registration and validation, dependency order and parallel branches,
for_each with max_parallel, when, failure policies, cancel, retry, typed templates, predict steps."""

from __future__ import annotations

import secrets
import time
from datetime import datetime
from typing import Any

import httpx
import pytest

from switchyard.defaults import DEFAULT_CONFIG, DEFAULT_WORKFLOWS
from tests.support import FINISHED, Stack, wait_status, wait_until

FEATURES = [0.9, 0.2, 68.4, 1.0, 2.0, 0.14, 0.05, 286.5]


def chat_step(step_id: str, text: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": step_id,
        "type": "chat",
        "model": "chat-default",
        "input": {"messages": [{"role": "user", "content": text}]},
        **extra,
    }


def register(client: httpx.Client, spec: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/v1/workflows", json=spec)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def run(client: httpx.Client, name: str, input: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    response = client.post(f"/v1/workflows/{name}/runs", json={"input": input or {}, **kw})
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


def wait_run(
    client: httpx.Client, run_id: str, statuses: tuple[str, ...] = FINISHED, timeout: float = 60
) -> dict[str, Any]:
    return wait_status(client, f"/v1/runs/{run_id}", statuses, timeout)


def task_times(client: httpx.Client, task_ids: list[str]) -> list[tuple[datetime, datetime]]:
    spans = []
    for task_id in task_ids:
        task = client.get(f"/v1/tasks/{task_id}").json()
        spans.append((datetime.fromisoformat(task["started_at"]), datetime.fromisoformat(task["finished_at"])))
    return spans


def name() -> str:
    return f"wf_{secrets.token_hex(4)}"


def test_diamond_runs_in_dependency_order_with_parallel_branches(stack: Stack, client: httpx.Client) -> None:
    wf = name()
    register(
        client,
        {
            "name": wf,
            "steps": [
                chat_step("a", "start"),
                chat_step("b", "left {{ steps.a.output.content }} [[sleep:1200]]"),
                chat_step("c", "right {{ steps.a.output.content }} [[sleep:1200]]"),
                chat_step("d", "join {{ steps.b.output.content }} | {{ steps.c.output.content }}"),
            ],
            "output": {"final": "{{ steps.d.output.content }}"},
        },
    )
    result = wait_run(client, run(client, wf)["id"])
    assert result["status"] == "succeeded", result
    steps = result["steps"]
    assert all(s["status"] == "succeeded" for s in steps.values())
    (a,), (b,), (c,), (d,) = (task_times(client, steps[k]["task_ids"]) for k in "abcd")
    assert a[1] <= b[0]
    assert a[1] <= c[0]
    # The two branches ran at the same time.
    assert b[0] < c[1]
    assert c[0] < b[1]
    assert d[0] >= max(b[1], c[1])
    assert result["output"]["final"].startswith("echo: join echo: left echo: start")
    assert result["progress"] == {"done": 4, "total": 4}
    assert result["cost_usd"] == pytest.approx(sum(s["cost_usd"] for s in steps.values()))
    events = [
        r[0]
        for r in stack.sql("SELECT type FROM events WHERE run_id = %s AND task_id IS NULL ORDER BY id", result["id"])
    ]
    assert events[:3] == ["run.queued", "run.started", "run.step.started"]
    assert events.count("run.step.started") == 4
    assert events.count("run.step.succeeded") == 4
    assert "run.progress" in events
    assert events[-1] == "run.succeeded"
    final = stack.sql("SELECT data FROM events WHERE run_id = %s AND type = 'run.succeeded'", result["id"])[0][0]
    assert final["output"] == result["output"]


def test_for_each_over_50_items_respects_max_parallel(client: httpx.Client) -> None:
    wf = name()
    register(
        client,
        {
            "name": wf,
            "steps": [
                chat_step("fan", "item {{ item }} [[sleep:150]]", for_each="{{ input.numbers }}", max_parallel=5),
            ],
            "output": {"n": "{{ steps.fan.output | length }}", "first": "{{ steps.fan.output[0].content }}"},
        },
    )
    items = list(range(50))
    result = wait_run(client, run(client, wf, {"numbers": items})["id"], timeout=120)
    assert result["status"] == "succeeded", result
    assert result["output"] == {"n": 50, "first": "echo: item 0 [[sleep:150]]"}  # typed: a number stays a number
    outputs = result["steps"]["fan"]["output"]
    assert [o["content"] for o in outputs] == [f"echo: item {i} [[sleep:150]]" for i in items]
    spans = task_times(client, result["steps"]["fan"]["task_ids"])
    peak = max(sum(1 for s in spans if s[0] <= t < s[1]) for t, _ in spans)
    assert 1 < peak <= 5, peak


def test_when_false_skips_and_dependents_of_skipped_steps_are_skipped(client: httpx.Client) -> None:
    wf = name()
    register(
        client,
        {
            "name": wf,
            "steps": [
                chat_step("gate", "x", when="{{ input.go }}"),
                chat_step("after", "{{ steps.gate.output.content }}", depends_on=["gate"]),
                chat_step("always", "independent"),
            ],
        },
    )
    result = wait_run(client, run(client, wf, {"go": False})["id"])
    assert result["status"] == "succeeded", result
    assert {k: v["status"] for k, v in result["steps"].items()} == {
        "gate": "skipped",
        "after": "skipped",
        "always": "succeeded",
    }
    taken = wait_run(client, run(client, wf, {"go": True})["id"])
    assert taken["steps"]["after"]["status"] == "succeeded"


def test_failing_step_fails_the_run_and_cancels_pending_steps(client: httpx.Client) -> None:
    wf = name()
    register(
        client,
        {
            "name": wf,
            "steps": [
                chat_step("boom", "x [[fail:400]]"),
                chat_step("next", "{{ steps.boom.output.content }}"),
                chat_step("slow", "y [[sleep:3000]]"),
            ],
        },
    )
    result = wait_run(client, run(client, wf)["id"])
    assert result["status"] == "failed"
    assert result["error"]["step_id"] == "boom"
    assert result["steps"]["boom"]["status"] == "failed"
    assert result["steps"]["next"]["status"] == "canceled"
    assert result["steps"]["next"]["task_ids"] == []
    assert result["steps"]["slow"]["status"] == "canceled"


def test_on_failure_continue_lets_dependents_see_the_failure(client: httpx.Client) -> None:
    wf = name()
    register(
        client,
        {
            "name": wf,
            "steps": [
                chat_step("flaky", "x [[fail:400]]", on_failure="continue"),
                chat_step("next", "saw {{ steps.flaky.status }}: {{ steps.flaky.error.type }}", depends_on=["flaky"]),
            ],
        },
    )
    result = wait_run(client, run(client, wf)["id"])
    assert result["status"] == "succeeded", result
    assert result["steps"]["flaky"]["status"] == "failed"
    assert result["steps"]["next"]["output"]["content"] == "echo: saw failed: invalid_request"


def test_cancel_mid_run(client: httpx.Client) -> None:
    wf = name()
    register(
        client,
        {
            "name": wf,
            "steps": [
                chat_step("long", "x [[sleep:2000]]"),
                chat_step("later", "{{ steps.long.output.content }}"),
            ],
        },
    )
    run_id = run(client, wf)["id"]
    wait_until(lambda: client.get(f"/v1/runs/{run_id}").json()["steps"]["long"]["status"] == "running", timeout=20)
    canceled = client.post(f"/v1/runs/{run_id}/cancel")
    assert canceled.status_code == 200, canceled.text
    assert canceled.json()["status"] == "canceled"
    time.sleep(3)
    result = client.get(f"/v1/runs/{run_id}").json()
    assert result["status"] == "canceled"
    assert result["steps"]["later"]["task_ids"] == []
    long_task = client.get(f"/v1/tasks/{result['steps']['long']['task_ids'][0]}").json()
    assert long_task["status"] == "canceled"
    assert client.post(f"/v1/runs/{run_id}/cancel").status_code == 409


def test_retry_reruns_failed_steps_and_keeps_succeeded_outputs(client: httpx.Client) -> None:
    wf = name()
    nonce = secrets.token_hex(4)
    register(
        client,
        {
            "name": wf,
            "steps": [
                chat_step("ok", "fine"),
                chat_step("flaky", f"{nonce} [[fail:503:1]]", depends_on=["ok"]),  # retries 0: the run fails once
            ],
        },
    )
    first = wait_run(client, run(client, wf)["id"])
    assert first["status"] == "failed"
    kept = first["steps"]["ok"]["task_ids"]
    retried = client.post(f"/v1/runs/{first['id']}/retry")
    assert retried.status_code == 200, retried.text
    result = wait_run(client, first["id"])
    assert result["status"] == "succeeded", result
    assert result["steps"]["ok"]["task_ids"] == kept
    assert result["steps"]["flaky"]["task_ids"] != first["steps"]["flaky"]["task_ids"]


def test_predict_step_and_typed_templates(client: httpx.Client) -> None:
    wf = name()
    register(
        client,
        {
            "name": wf,
            "steps": [
                {
                    "id": "classify",
                    "type": "predict",
                    "model": "risk-classifier",
                    "input": {"inputs": {"features": "{{ input.rows }}"}},
                },
                chat_step("explain", "label {{ steps.classify.output.outputs.label[0] }}"),
            ],
            "output": {
                "labels": "{{ steps.classify.output.outputs.label }}",
                "text": "{{ steps.explain.output.content }}",
            },
        },
    )
    result = wait_run(client, run(client, wf, {"rows": [FEATURES, FEATURES]})["id"])
    assert result["status"] == "succeeded", result
    labels = result["output"]["labels"]
    assert isinstance(labels, list)
    assert len(labels) == 2
    assert result["output"]["text"] == f"echo: label {labels[0]}"


def test_for_each_that_is_not_a_list_fails_the_step(client: httpx.Client) -> None:
    wf = name()
    register(client, {"name": wf, "steps": [chat_step("fan", "{{ item }}", for_each="{{ input.numbers }}")]})
    result = wait_run(client, run(client, wf, {"numbers": "not a list"})["id"])
    assert result["status"] == "failed"
    assert "list" in result["steps"]["fan"]["error"]["message"]


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        ([chat_step("a", "{{ steps.b.output }}"), chat_step("b", "{{ steps.a.output }}")], "cycle"),
        ([chat_step("a", "x", depends_on=["ghost"])], "ghost"),
        ([chat_step("a", "{{ steps.ghost.output }}")], "ghost"),
        ([{**chat_step("a", "x"), "model": "no-such-model"}], "no-such-model"),
        ([chat_step("a", "{{ unclosed ")], "steps[0].input"),
    ],
)
def test_invalid_definitions_are_422_naming_the_problem(
    client: httpx.Client, steps: list[dict[str, Any]], expected: str
) -> None:
    response = client.post("/v1/workflows", json={"name": name(), "steps": steps})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert expected in error["message"] + (error["param"] or ""), error


def test_yaml_registration_makes_versions(client: httpx.Client) -> None:
    wf = name()
    text = (
        f"name: {wf}\nsteps:\n  - id: only\n    type: chat\n    model: chat-default\n"
        "    input: {messages: [{role: user, content: v}]}\n"
    )
    for version in (1, 2):
        response = client.post("/v1/workflows", content=text, headers={"Content-Type": "application/yaml"})
        assert response.status_code == 201, response.text
        assert response.json()["version"] == version
    assert client.get(f"/v1/workflows/{wf}", params={"version": 1}).json()["version"] == 1
    assert client.get(f"/v1/workflows/{wf}").json()["version"] == 2
    assert wf in [w["name"] for w in client.get("/v1/workflows").json()["data"]]
    result = wait_run(client, run(client, wf, version=1)["id"])
    assert result["version"] == 1
    assert result["status"] == "succeeded"


def test_other_tenants_runs_are_404(stack: Stack, client: httpx.Client) -> None:
    wf = name()
    register(client, {"name": wf, "steps": [chat_step("a", "x")]})
    run_id = run(client, wf)["id"]
    with stack.client(stack.new_key(f"other-{secrets.token_hex(3)}", "admin")) as other:
        assert other.get(f"/v1/runs/{run_id}").status_code == 404
        assert other.post(f"/v1/workflows/{wf}/runs", json={"input": {}}).status_code == 404


def test_shipped_example_workflows_are_valid() -> None:
    import yaml

    from switchyard.core.config import load_config
    from switchyard.workflows.service import parse_spec

    config = load_config(DEFAULT_CONFIG)
    for path in sorted(DEFAULT_WORKFLOWS.glob("*.yaml")):
        parse_spec(yaml.safe_load(path.read_text()), config)
