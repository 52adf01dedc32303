"""The OpenAI-compatible endpoints, driven by the official `openai` SDK as a client of the real stack: chat
completions (plain and streamed, with usage), embeddings in both encodings, moderations, the model list,
errors in the SDK's shapes, failover before the first chunk, a stream broken mid-way, tools and JSON mode
mapped to the Anthropic API."""

from __future__ import annotations

import asyncio
import json
import math
import secrets
from collections.abc import AsyncIterator, Iterator
from typing import Any, cast

import httpx
import openai
import pytest

from switchyard.events.bus import delta_event
from switchyard.events.feed import FeedEvent
from switchyard.gateway_api.routes.openai import _chunks
from tests.support import Stack, wait_task


@pytest.fixture(scope="module")
def sdk(stack: Stack, admin_key: str) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=admin_key, max_retries=0, timeout=30)
    yield client
    client.close()


def test_chat_completion(sdk: openai.OpenAI, client: httpx.Client) -> None:
    text = f"Hello SDK {secrets.token_hex(3)}"
    raw = sdk.chat.completions.with_raw_response.create(
        model="chat-default", messages=[{"role": "user", "content": text}], max_tokens=50
    )
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.model == "chat-default"
    assert completion.choices[0].message.content == f"echo: {text}"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == math.ceil(len(text) / 4)
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    task_id = raw.headers["x-switchyard-task-id"]
    assert completion.id == f"chatcmpl-{task_id}"
    assert float(raw.headers["x-switchyard-cost-usd"]) > 0
    # It ran as a task like any other: recorded, with its attempt.
    task = client.get(f"/v1/tasks/{task_id}").json()
    assert task["status"] == "succeeded"
    assert task["cost_usd"] == pytest.approx(float(raw.headers["x-switchyard-cost-usd"]), rel=1e-6)
    assert [a["status"] for a in task["attempts"]] == ["succeeded"]


def test_streamed_chat_completion_with_usage(sdk: openai.OpenAI) -> None:
    text = "stream " + " ".join(f"w{i}" for i in range(24))
    stream = sdk.chat.completions.create(
        model="chat-default",
        messages=[{"role": "user", "content": text}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == f"echo: {text}"
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 3  # it came in pieces
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == math.ceil(len(text) / 4)
    assert {c.id for c in chunks} == {chunks[0].id}


def test_stream_fails_over_before_the_first_chunk(sdk: openai.OpenAI, client: httpx.Client) -> None:
    text = f"failover stream {secrets.token_hex(3)} [[fail:500:1]]"
    raw = sdk.chat.completions.with_raw_response.create(
        model="chat-failover", messages=[{"role": "user", "content": text}], stream=True
    )
    content = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert content == f"echo: {text}"
    task = wait_task(client, raw.headers["x-switchyard-task-id"])
    assert [(a["provider"], a["status"]) for a in task["attempts"]] == [
        ("fake", "failed"),
        ("fake-anthropic", "succeeded"),
    ]


def test_stream_broken_mid_way_is_an_error_not_done(sdk: openai.OpenAI) -> None:
    text = " ".join(f"w{i}" for i in range(20)) + " [[break:3]]"
    stream = sdk.chat.completions.create(
        model="chat-default", messages=[{"role": "user", "content": text}], stream=True
    )
    received: list[str] = []

    def read_all() -> None:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                received.append(chunk.choices[0].delta.content)

    with pytest.raises(openai.APIError) as info:
        read_all()
    assert received, "some text came before the break"
    assert "stream broke" in str(info.value)


def test_a_stream_that_fails_before_any_text_answers_with_the_status(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        sdk.chat.completions.create(
            model="chat-default", messages=[{"role": "user", "content": "nope [[fail:400]]"}], stream=True
        )
    assert info.value.code == "invalid_request"


def test_embeddings_in_both_encodings(sdk: openai.OpenAI, stack: Stack, admin_key: str) -> None:
    floats = sdk.embeddings.create(model="embed-default", input=["alpha", "beta"], encoding_format="float")
    assert [d.index for d in floats.data] == [0, 1]
    assert len(floats.data[0].embedding) == 64
    assert sum(v * v for v in floats.data[0].embedding) == pytest.approx(1.0, abs=1e-4)
    # Without an encoding the SDK asks for base64 and decodes it: the same vectors must come out.
    decoded = sdk.embeddings.create(model="embed-default", input=["alpha", "beta"])
    assert decoded.data[1].embedding == pytest.approx(floats.data[1].embedding, abs=1e-6)
    assert decoded.usage.prompt_tokens == math.ceil(len("alphabeta") / 4)
    raw = httpx.post(
        f"{stack.url}/v1/embeddings",
        json={"model": "embed-default", "input": "alpha", "encoding_format": "base64"},
        headers={"Authorization": f"Bearer {admin_key}"},
    ).json()
    assert isinstance(raw["data"][0]["embedding"], str)


def test_moderations(sdk: openai.OpenAI) -> None:
    flagged = sdk.moderations.create(model="moderate-default", input="you are awful [[flag]]")
    assert flagged.results[0].flagged is True
    assert flagged.id.startswith("modr-")
    clean = sdk.moderations.create(input="a kind word")  # no model: the configured moderation model
    assert clean.results[0].flagged is False


def test_models_list(sdk: openai.OpenAI) -> None:
    ids = {m.id for m in sdk.models.list()}
    assert {"chat-default", "embed-default", "moderate-default", "risk-classifier"} <= ids


def test_errors_arrive_in_the_sdks_shapes(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.chat.completions.create(model="chat-default", messages=[{"role": "robot", "content": "x"}])  # type: ignore[misc, list-item]
    assert bad.value.param == "messages[0].role"
    with pytest.raises(openai.NotFoundError) as unknown:
        sdk.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert unknown.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as extra:
        sdk.chat.completions.create(
            model="chat-default", messages=[{"role": "user", "content": "x"}], extra_body={"frobnicate": 1}
        )
    assert extra.value.param == "frobnicate"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=str(sdk.base_url), api_key="sy_wrong", max_retries=0).models.list()
    with pytest.raises(openai.InternalServerError) as upstream:  # the provider failed every attempt
        sdk.chat.completions.create(model="chat-default", messages=[{"role": "user", "content": "x [[fail:502]]"}])
    assert upstream.value.status_code == 502


def test_tool_calls_and_json_mode_through_the_anthropic_api(sdk: openai.OpenAI) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather of a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    called = sdk.chat.completions.create(
        model="claude",
        messages=[{"role": "user", "content": "weather in Oslo? [[tool]]"}],
        tools=tools,  # type: ignore[arg-type]
    )
    choice = called.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    assert choice.message.tool_calls[0].function.name == "get_weather"
    assert json.loads(choice.message.tool_calls[0].function.arguments) == {}

    schema = {"type": "object", "properties": {"label": {"type": "string"}}}
    answered = sdk.chat.completions.create(
        model="claude",
        messages=[{"role": "user", "content": "classify this [[tool]]"}],
        response_format={"type": "json_schema", "json_schema": {"name": "label", "schema": schema}},
    )
    # The schema went as a forced tool; its input comes back as the JSON content.
    assert answered.choices[0].message.content == "{}"
    assert answered.choices[0].message.tool_calls is None
    assert answered.choices[0].finish_reason == "stop"


def test_a_stream_that_lost_a_chunk_sends_the_rest_once() -> None:
    # Chunks are best effort (a listener far behind loses some): after a gap, the rest comes from the result.
    pieces = ["echo:", " one", " two", " three"]
    task_id = "task_01gap"
    final = {"status": "succeeded", "result": {"content": "".join(pieces), "finish_reason": "stop"}}
    delivered = [0, 1, 3]  # the third chunk was lost

    async def events() -> AsyncIterator[FeedEvent]:
        for i in delivered:
            view = delta_event(task_id=task_id, run_id=None, step_id=None, index=i, content=pieces[i])
            yield FeedEvent(None, view, json.dumps(view))
        yield FeedEvent.of({"id": 9, "type": "task.succeeded", "task_id": task_id, "data": final})

    async def collect() -> list[bytes]:
        return [c async for c in _chunks(cast(Any, None), cast(Any, None), task_id, "m", False, events())]

    frames = [json.loads(raw[len(b"data: ") :]) for raw in asyncio.run(collect()) if raw != b"data: [DONE]\n\n"]
    text = "".join(f["choices"][0]["delta"].get("content") or "" for f in frames)
    assert text == "echo: one two three"
