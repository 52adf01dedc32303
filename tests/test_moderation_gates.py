"""Moderation gates through the real stack: the API, a provider worker, the fake provider serving both the chat
and the moderation model (`[[flag]]` scores harassment 0.99, `[[flag:N]]` N/100), and a moderation model whose
provider is a port nobody listens on (the moderation model down)."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.support import Stack, chat, wait_status, wait_task, wait_until

# A chat model guarded by the config file (request and response), used by the workflow and batch tests; a
# moderate model on provider `fake-b`, whose server this stack never starts.
EXTRA_MODELS = """
  chat-guarded:
    type: chat
    deployments:
      - {provider: fake, model: gpt-4o-mini, price: {input: 0.15, output: 0.60}}
    guardrails:
      moderation: {model: moderate-default, thresholds: {harassment: 0.5}, on: [request, response]}
  moderate-down:
    type: moderate
    deployments:
      - {provider: fake-b, model: omni-moderation-latest}
"""

GATE = {"model": "moderate-default", "thresholds": {"harassment": 0.5}}
LONG_CLEAN = "This first sentence is harmless and long enough to be checked as a window of its own. "


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(
        tmp_path_factory.mktemp("moderation"),
        redis_db=13,
        ml=False,
        extra_models=EXTRA_MODELS,
        env={"SWITCHYARD_MODERATION_TIMEOUT_S": "2"},
    )
    yield s
    s.close()


@pytest.fixture(scope="module")
def key(stack: Stack) -> str:
    return stack.new_key("moderation-tenant", "admin")


@pytest.fixture
def client(stack: Stack, key: str) -> Iterator[httpx.Client]:
    with stack.client(key) as c:
        yield c


@pytest.fixture
def sdk(stack: Stack, key: str) -> Iterator[openai.OpenAI]:
    c = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=key, max_retries=0, timeout=30)
    yield c
    c.close()


def chat_calls(stack: Stack) -> int:
    """Chat requests the fake provider has received (every status)."""
    return sum(stack.fake_stats()["requests"].get("/v1/chat/completions", {}).values())


def submit(client: httpx.Client, text: str, moderation: dict[str, Any] | None, model: str = "chat-default") -> str:
    options = {"guardrails": {"moderation": moderation}} if moderation is not None else {}
    response = client.post("/v1/tasks", json={"type": "chat", "model": model, "input": chat(text), "options": options})
    assert response.status_code == 202, response.text
    task_id: str = response.json()["id"]
    return task_id


def events_of(client: httpx.Client, task_id: str) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = client.get("/v1/events", params={"task_id": task_id, "limit": 100}).json()["data"]
    return data


# --- the request gate -------------------------------------------------------------------------------------------


def test_request_over_threshold_is_blocked_before_the_provider_is_called(stack: Stack, client: httpx.Client) -> None:
    secret = f"do not keep me {secrets.token_hex(4)}"
    before = chat_calls(stack)
    task = wait_task(client, submit(client, f"{secret} [[flag]]", GATE))
    assert task["status"] == "failed"
    error = task["error"]
    assert error["type"] == "content_blocked"
    assert (error["category"], error["score"], error["direction"]) == ("harassment", 0.99, "request")
    assert "harassment" in error["message"]
    assert "0.990" in error["message"]
    assert task["attempts"] == []  # no provider call was made
    assert task["result"] is None
    assert chat_calls(stack) == before
    request = task["guardrails"]["moderation"]["request"]
    assert request["verdict"] == "blocked"
    assert request["source"] == "model"
    assert request["scores"]["harassment"] == 0.99
    assert len(request["scores"]) <= 3
    assert task["guardrails"]["moderation"]["calls"] == 1
    # Counted in events: a task.guardrail event, and the failure's event carries the category and score.
    wait_until(lambda: any(e["type"] == "task.failed" for e in events_of(client, task["id"])), timeout=10)
    events = events_of(client, task["id"])
    guardrail = [e["data"] for e in events if e["type"] == "task.guardrail"]
    assert guardrail == [
        {
            "id": task["id"],
            "kind": "moderation",
            "direction": "request",
            "verdict": "blocked",
            "source": "model",
            "category": "harassment",
            "score": 0.99,
            "threshold": 0.5,
        }
    ]
    failed = next(e["data"] for e in events if e["type"] == "task.failed")
    assert failed["error"]["category"] == "harassment"
    # Never the text: not in the record, not in the events.
    row = stack.sql("SELECT guardrails::text FROM tasks WHERE id = %s", task["id"])[0][0]
    assert secret not in row
    assert secret not in json.dumps([e["data"] for e in events if e["type"] != "task.failed"])


def test_request_below_threshold_passes_and_at_threshold_blocks(stack: Stack, client: httpx.Client) -> None:
    below = wait_task(client, submit(client, "mildly rude [[flag:49]]", GATE))
    assert below["status"] == "succeeded", below["error"]
    assert below["result"]["content"] == "echo: mildly rude [[flag:49]]"
    record = below["guardrails"]["moderation"]["request"]
    assert (record["verdict"], record["source"], record["scores"]["harassment"]) == ("allowed", "model", 0.49)
    at = wait_task(client, submit(client, "rude [[flag:50]]", GATE))
    assert at["error"]["type"] == "content_blocked"
    assert at["error"]["score"] == 0.5
    # No thresholds: the categories the moderation model flags block (0.49 is not flagged, 0.5 is).
    flagged_only = {"model": "moderate-default"}
    assert wait_task(client, submit(client, "meh [[flag:49]]", flagged_only))["status"] == "succeeded"
    assert wait_task(client, submit(client, "bad [[flag:50]]", flagged_only))["error"]["type"] == "content_blocked"
    # A task with no guardrail has no record.
    plain = wait_task(client, submit(client, "no guardrail [[flag]]", None))
    assert plain["status"] == "succeeded"
    assert plain["guardrails"] is None


def test_embedding_inputs_are_gated_too(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.embeddings.create(
            model="embed-default", input=["fine", "not fine [[flag]]"], extra_body={"guardrails": {"moderation": GATE}}
        )
    assert caught.value.status_code == 400
    assert caught.value.code == "content_blocked"
    ok = sdk.embeddings.create(model="embed-default", input=["fine"], extra_body={"guardrails": {"moderation": GATE}})
    assert len(ok.data) == 1


def test_openai_sdk_extra_body_guardrails_answer_a_policy_refusal(stack: Stack, sdk: openai.OpenAI) -> None:
    before = chat_calls(stack)
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(
            model="chat-default",
            messages=[{"role": "system", "content": "[[flag]]"}, {"role": "user", "content": "hello"}],
            extra_body={"guardrails": {"moderation": GATE}},
        )
    assert caught.value.status_code == 400
    assert caught.value.code == "content_blocked"
    assert "harassment" in caught.value.message
    assert chat_calls(stack) == before  # the system prompt is scored too; the provider never saw the call
    ok = sdk.chat.completions.create(
        model="chat-default",
        messages=[{"role": "user", "content": "hello there"}],
        extra_body={"guardrails": {"moderation": GATE}},
    )
    assert ok.choices[0].message.content == "echo: hello there"


# --- the response gate ------------------------------------------------------------------------------------------


def test_response_over_threshold_fails_the_task_and_keeps_no_result(stack: Stack, client: httpx.Client) -> None:
    before = chat_calls(stack)
    task = wait_task(client, submit(client, "repeat after me [[flag]]", {**GATE, "on": ["response"]}))
    assert chat_calls(stack) == before + 1  # the request was not gated: the provider answered
    assert task["status"] == "failed"
    assert task["result"] is None
    assert task["error"]["type"] == "content_blocked"
    assert task["error"]["direction"] == "response"
    (attempt,) = task["attempts"]  # the call was made and paid: recorded, failed by the gate
    assert attempt["error"]["type"] == "content_blocked"
    assert attempt["usage"]["output_tokens"] > 0
    assert task["cost_usd"] > 0
    moderation = task["guardrails"]["moderation"]
    assert "request" not in moderation
    assert moderation["response"]["verdict"] == "blocked"
    # A clean answer passes both gates and is recorded as such.
    clean = wait_task(client, submit(client, "all good", {**GATE, "on": ["request", "response"]}))
    assert clean["status"] == "succeeded"
    assert clean["guardrails"]["moderation"]["request"]["verdict"] == "allowed"
    assert clean["guardrails"]["moderation"]["response"]["verdict"] == "allowed"
    assert clean["guardrails"]["moderation"]["calls"] == 2


def _sse_lines(stack: Stack, key: str, body: dict[str, Any]) -> tuple[int, str | None, list[dict[str, Any] | str]]:
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            out: list[dict[str, Any] | str] = []
            for line in response.iter_lines():
                if line.startswith("data: "):
                    data = line.removeprefix("data: ")
                    out.append(data if data == "[DONE]" else json.loads(data))
            return response.status_code, response.headers.get("x-switchyard-task-id"), out


def test_streamed_response_is_cut_with_an_error_when_a_threshold_is_crossed(
    stack: Stack, client: httpx.Client, key: str
) -> None:
    text = LONG_CLEAN + "The second one is harmless too, then [[flag]] comes along. And this should never be sent."
    body = {
        "model": "chat-default",
        "messages": [{"role": "user", "content": text}],
        "stream": True,
        "guardrails": {"moderation": {**GATE, "on": ["response"]}},
    }
    status, task_id, events = _sse_lines(stack, key, body)
    assert status == 200
    assert events[-1] != "[DONE]"
    error = events[-1]
    assert isinstance(error, dict)
    assert error["error"]["code"] == "content_blocked"
    chunks = [e for e in events[:-1] if isinstance(e, dict)]
    sent = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    # The first window passed and was sent; nothing from the window holding the marker was.
    assert sent.startswith("echo: This first sentence is harmless")
    assert "[[flag]]" not in sent
    assert "never be sent" not in sent
    assert task_id is not None
    task = wait_task(client, task_id)
    assert task["status"] == "failed"
    assert task["error"]["type"] == "content_blocked"
    response = task["guardrails"]["moderation"]["response"]
    assert response["verdict"] == "blocked"
    assert response["checks"] >= 2


def test_streamed_clean_response_arrives_whole(stack: Stack, key: str, sdk: openai.OpenAI) -> None:
    text = LONG_CLEAN * 6 + "The end."
    stream = sdk.chat.completions.create(
        model="chat-default",
        messages=[{"role": "user", "content": text}],
        stream=True,
        extra_body={"guardrails": {"moderation": {**GATE, "on": ["request", "response"]}}},
    )
    got = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert got == f"echo: {text}"


def test_streamed_request_blocked_before_any_text_is_a_400(stack: Stack, key: str) -> None:
    body = {
        "model": "chat-default",
        "messages": [{"role": "user", "content": "[[flag]] hi"}],
        "stream": True,
        "guardrails": {"moderation": GATE},
    }
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
        response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "content_blocked"


# --- the moderation model down ----------------------------------------------------------------------------------


def test_model_down_block_fails_the_call_as_guardrail_unavailable(
    stack: Stack, client: httpx.Client, sdk: openai.OpenAI
) -> None:
    down = {"model": "moderate-down", "when_unavailable": "block"}
    before = chat_calls(stack)
    task = wait_task(client, submit(client, "hello", down))
    assert task["status"] == "failed"
    assert task["error"]["type"] == "guardrail_unavailable"
    assert "moderate-down" in task["error"]["message"]
    assert task["guardrails"]["moderation"]["request"]["verdict"] == "unavailable"
    assert chat_calls(stack) == before
    with pytest.raises(openai.APIStatusError) as caught:
        sdk.chat.completions.create(
            model="chat-default",
            messages=[{"role": "user", "content": "hi"}],
            extra_body={"guardrails": {"moderation": down}},
        )
    assert caught.value.status_code == 503
    assert caught.value.code == "guardrail_unavailable"


def test_model_down_allow_lets_the_call_through_unchecked(client: httpx.Client) -> None:
    task = wait_task(client, submit(client, "hello [[flag]]", {"model": "moderate-down", "when_unavailable": "allow"}))
    assert task["status"] == "succeeded"
    record = task["guardrails"]["moderation"]["request"]
    assert record["verdict"] == "unchecked"
    assert record["source"] is None
    assert "fake-b" in record["reason"] or "connection" in record["reason"]


def test_model_down_keywords_fall_back_to_the_shipped_list_or_the_guardrails_own(
    stack: Stack, client: httpx.Client
) -> None:
    shipped = {"model": "moderate-down", "when_unavailable": "keywords"}
    before = chat_calls(stack)
    blocked = wait_task(client, submit(client, "Listen: I WILL\nkill you tomorrow", shipped))
    assert blocked["error"]["type"] == "content_blocked"
    assert blocked["error"]["category"] == "harassment/threatening"
    assert blocked["guardrails"]["moderation"]["request"]["source"] == "keywords"
    assert chat_calls(stack) == before
    # Whole words only; a model's [[flag]] means nothing to the keyword list.
    fine = wait_task(client, submit(client, "the skill myselfish [[flag]]", shipped))
    assert fine["status"] == "succeeded"
    assert fine["guardrails"]["moderation"]["request"] == {
        "verdict": "allowed",
        "source": "keywords",
        "scores": {},
        "reason": fine["guardrails"]["moderation"]["request"]["reason"],
    }
    own = {**shipped, "keywords": ["pineapple pizza"]}
    assert wait_task(client, submit(client, "I like Pineapple  Pizza", own))["error"]["category"] == "keywords"
    assert wait_task(client, submit(client, "I will kill you", own))["status"] == "succeeded"  # list replaced


# --- per-request validation -------------------------------------------------------------------------------------


def test_a_bad_per_request_moderation_model_is_refused_naming_the_field(
    client: httpx.Client, sdk: openai.OpenAI
) -> None:
    for model, words in (("nope", "unknown model"), ("chat-default", "a chat model")):
        body = {
            "type": "chat",
            "model": "chat-default",
            "input": chat("hi"),
            "options": {"guardrails": {"moderation": {"model": model}}},
        }
        response = client.post("/v1/tasks", json=body)
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["param"] == "options.guardrails.moderation.model"
        assert words in error["message"]
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(
            model="chat-default",
            messages=[{"role": "user", "content": "hi"}],
            extra_body={"guardrails": {"moderation": {"model": "embed-default"}}},
        )
    assert caught.value.status_code == 400
    assert caught.value.param == "guardrails.moderation.model"


# --- workflow steps and batch lines -----------------------------------------------------------------------------


def test_a_workflow_step_goes_through_its_models_gate(client: httpx.Client) -> None:
    name = f"wf_{secrets.token_hex(4)}"

    def step(step_id: str, text: str) -> dict[str, Any]:
        return {"id": step_id, "type": "chat", "model": "chat-guarded", "input": {"messages": chat(text)["messages"]}}

    # In sequence: run side by side, the flagged step's failure could cancel the calm one before it ends.
    spec = {
        "name": name,
        "steps": [step("fine", "a calm step"), {**step("flagged", "a [[flag]] step"), "depends_on": ["fine"]}],
    }
    assert client.post("/v1/workflows", json=spec).status_code == 201
    run = client.post(f"/v1/workflows/{name}/runs", json={"input": {}})
    assert run.status_code == 202, run.text
    result = wait_status(client, f"/v1/runs/{run.json()['id']}", timeout=60)
    assert result["status"] == "failed"
    assert result["steps"]["fine"]["status"] == "succeeded"
    assert result["steps"]["flagged"]["status"] == "failed"
    assert result["steps"]["flagged"]["error"]["type"] == "content_blocked"
    (task_id,) = result["steps"]["flagged"]["task_ids"]
    assert client.get(f"/v1/tasks/{task_id}").json()["attempts"] == []


def test_batch_lines_go_through_the_gates(sdk: openai.OpenAI, client: httpx.Client) -> None:
    def line(custom_id: str, text: str, model: str, **extra: Any) -> dict[str, Any]:
        body = {"model": model, "messages": [{"role": "user", "content": text}], **extra}
        return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}

    lines = [
        line("clean", "a calm line", "chat-guarded"),
        line("model-gate", "a [[flag]] line", "chat-guarded"),
        line("own-gate", "a [[flag:70]] line", "chat-default", guardrails={"moderation": GATE}),
        line("no-gate", "a [[flag]] line", "chat-default"),
    ]
    content = b"".join(json.dumps(x).encode() + b"\n" for x in lines)
    file = sdk.files.create(file=("input.jsonl", content), purpose="batch")
    batch = sdk.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")

    def done() -> Any:
        b = sdk.batches.retrieve(batch.id)
        return b if b.status in ("completed", "failed", "expired", "cancelled") else None

    finished = wait_until(done, timeout=60, interval=0.2, what="batch done")
    assert finished.status == "completed"
    output = [json.loads(x) for x in sdk.files.content(finished.output_file_id).text.splitlines()]
    errors = [json.loads(x) for x in sdk.files.content(finished.error_file_id).text.splitlines()]
    assert sorted(o["custom_id"] for o in output) == ["clean", "no-gate"]
    assert sorted(e["custom_id"] for e in errors) == ["model-gate", "own-gate"]
    for e in errors:
        assert e["response"]["status_code"] == 400
        assert e["response"]["body"]["error"]["code"] == "content_blocked"
    own = next(e for e in errors if e["custom_id"] == "own-gate")
    task = client.get(f"/v1/tasks/{own['response']['request_id']}").json()
    assert task["error"]["score"] == 0.7
    assert task["attempts"] == []
