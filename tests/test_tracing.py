"""Traces through the real stack, exported by the SDK's OTLP/HTTP exporter to a receiver the test runs: one trace
from the caller's `traceparent` through the API, the broker and the worker to the provider call (with the GenAI
attributes), the task's `trace_id`, and the spans of workflow advances linked back to the run's request."""

from __future__ import annotations

import secrets

from switchyard.observability import tracing
from switchyard.settings import Settings
from tests.otel_support import Receiver, Span
from tests.support import Stack, chat, wait_status, wait_task


def _traceparent() -> tuple[str, str]:
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, f"00-{trace_id}-{parent}-01"


def test_one_trace_from_the_callers_traceparent_to_the_provider_call(
    otel_stack: Stack, otel_key: str, otel: Receiver
) -> None:
    trace_id, traceparent = _traceparent()
    with otel_stack.client(otel_key) as client:
        created = client.post(
            "/v1/tasks",
            json={"type": "chat", "model": "chat-default", "input": chat("hello traces")},
            headers={"traceparent": traceparent},
        )
        assert created.status_code == 202, created.text
        task = wait_task(client, created.json()["id"])
    assert task["status"] == "succeeded"
    assert task["trace_id"] == trace_id

    def complete(spans: list[Span]) -> list[Span]:
        mine = [s for s in spans if s.trace_id == trace_id]
        names = {s.name for s in mine}
        # Each process exports its spans in batches of its own: wait for the API's as well as the worker's.
        from_api = any(s.service == "switchyard-api" for s in mine)
        return mine if from_api and "task.execute" in names and any(s.name.startswith("chat ") for s in mine) else []

    spans = otel.wait_for("the task's trace", complete)
    services = {s.service for s in spans}
    assert {"switchyard-api", "switchyard-worker"} <= services, services
    # The API's request span continues the caller's span.
    server = [s for s in spans if s.service == "switchyard-api" and s.parent_id == traceparent.split("-")[2]]
    assert server, [(s.name, s.parent_id) for s in spans]
    execute = next(s for s in spans if s.name == "task.execute")
    assert execute.attributes["switchyard.task_id"] == task["id"]
    provider = next(s for s in spans if s.name.startswith("chat "))
    assert provider.parent_id == execute.span_id
    attrs = provider.attributes
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.system"] == "openai"
    assert attrs["gen_ai.request.model"]
    assert attrs["gen_ai.response.model"]
    assert attrs["gen_ai.usage.input_tokens"] == task["usage"]["input_tokens"]
    assert attrs["gen_ai.usage.output_tokens"] == task["usage"]["output_tokens"]
    # Nothing of the prompt or the answer in any span.
    for s in otel.of_trace(trace_id):
        assert not any("hello traces" in str(v) for v in s.attributes.values()), s


def test_sync_chat_completion_is_one_trace(otel_stack: Stack, otel_key: str, otel: Receiver) -> None:
    trace_id, traceparent = _traceparent()
    with otel_stack.client(otel_key) as client:
        response = client.post(
            "/v1/chat/completions",
            json={"model": "chat-default", "messages": [{"role": "user", "content": "sync"}]},
            headers={"traceparent": traceparent},
        )
        assert response.status_code == 200, response.text
        task = client.get(f"/v1/tasks/{response.headers['x-switchyard-task-id']}").json()
    assert task["trace_id"] == trace_id
    otel.wait_for(
        "the sync call's provider span",
        lambda spans: [s for s in spans if s.trace_id == trace_id and s.name.startswith("chat ")],
    )


def test_a_workflow_advance_links_to_the_runs_request(otel_stack: Stack, otel_key: str, otel: Receiver) -> None:
    trace_id, traceparent = _traceparent()
    with otel_stack.client(otel_key) as client:
        wf = f"wf_{secrets.token_hex(4)}"
        step = {"type": "chat", "model": "chat-default", "input": {"messages": [{"role": "user", "content": "x"}]}}
        spec = {"name": wf, "steps": [{"id": "a", **step}, {"id": "b", "depends_on": ["a"], **step}]}
        assert client.post("/v1/workflows", json=spec).status_code == 201
        run = client.post(f"/v1/workflows/{wf}/runs", json={"input": {}}, headers={"traceparent": traceparent})
        assert run.status_code == 202, run.text
        assert wait_status(client, f"/v1/runs/{run.json()['id']}", timeout=60)["status"] == "succeeded"
    advances = otel.wait_for(
        "a linked workflow advance",
        lambda spans: [s for s in spans if s.name == "workflow.advance" and any(t == trace_id for t, _ in s.links)],
    )
    assert advances[0].attributes["switchyard.run_id"] == run.json()["id"]


def test_tracing_is_off_unless_asked_for() -> None:
    settings = Settings()
    assert not tracing.wanted(settings, {})
    assert tracing.wanted(settings, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert tracing.wanted(settings, {"OTEL_TRACES_EXPORTER": "console"})
    assert not tracing.wanted(settings, {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"})
    assert not tracing.wanted(settings, {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"})
    assert tracing.wanted(Settings(tracing=True), {})
    assert not tracing.wanted(Settings(tracing=False), {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    # And when off, nothing is made: no trace id to show.
    assert tracing.current_traceparent() is None
    assert tracing.trace_id_of(None) is None
    assert tracing.trace_id_of("00-" + "0" * 32 + "-" + "1" * 16 + "-01") is None
