"""Tests of the fake model provider, run as a real server in a subprocess and driven by the official SDKs."""

from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from botocore.eventstream import EventStreamBuffer

from tests.processes import free_port

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def _serve(*args: str) -> Iterator[str]:
    """Runs the fake provider CLI with these extra arguments in a subprocess; yields its URL once healthy."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "switchyard.fake_provider.app", "--port", str(port), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                out = proc.stdout.read().decode() if proc.stdout else ""
                pytest.fail(f"fake provider exited early ({proc.returncode}):\n{out}")
            try:
                if httpx.get(f"{url}/healthz", timeout=1).json() == {"ok": True}:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("fake provider did not become healthy")
            time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with _serve() as url:
        yield url


@pytest.fixture
def control(base_url: str) -> Iterator[httpx.Client]:
    """HTTP client for /control; restores default settings and clears counters afterwards."""
    with httpx.Client(base_url=base_url, timeout=10) as client:
        client.post("/control/reset").raise_for_status()
        yield client
        defaults = {"latency_ms": 0, "fail_rate": 0.0, "fail_status": 500, "context_windows": {}}
        client.post("/control", json=defaults).raise_for_status()
        client.post("/control/reset").raise_for_status()


@pytest.fixture
def oai(base_url: str) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="x", max_retries=0)
    yield client
    client.close()


@pytest.fixture
def ant(base_url: str) -> Iterator[anthropic.Anthropic]:
    client = anthropic.Anthropic(base_url=base_url, api_key="x", max_retries=0)
    yield client
    client.close()


AZURE_API_VERSION = "2024-10-21"
BEDROCK_MODEL = "anthropic.claude-3-5-haiku-20241022-v1:0"
VERTEX_MODEL = "claude-3-5-haiku@20241022"


@pytest.fixture
def azure(base_url: str) -> Iterator[openai.AzureOpenAI]:
    client = openai.AzureOpenAI(azure_endpoint=base_url, api_key="x", api_version=AZURE_API_VERSION, max_retries=0)
    yield client
    client.close()


@pytest.fixture
def bedrock(base_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[anthropic.AnthropicBedrock]:
    # A profile or bearer token in the environment would make the client ignore or reject the dummy keys.
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_BEARER_TOKEN_BEDROCK"):
        monkeypatch.delenv(name, raising=False)
    client = anthropic.AnthropicBedrock(
        base_url=base_url, aws_access_key="x", aws_secret_key="y", aws_region="us-east-1", max_retries=0
    )
    yield client
    client.close()


@pytest.fixture
def vertex(base_url: str) -> Iterator[anthropic.AnthropicVertex]:
    client = anthropic.AnthropicVertex(
        base_url=f"{base_url}/v1", region="us-east5", project_id="proj", access_token="fake", max_retries=0
    )
    yield client
    client.close()


def _tok(text: str) -> int:
    return math.ceil(len(text) / 4)


def _is_dropped_connection(exc: BaseException) -> bool:
    """True if the exception (or its cause chain) is a peer closing the connection mid-body."""
    current: BaseException | None = exc
    while current is not None:
        text = str(current).lower()
        if "incomplete chunked read" in text or "peer closed" in text:
            return True
        current = current.__cause__ or current.__context__
    return False


# -------------------------------------------------------------------------------------------------------
# OpenAI chat


def test_chat_echo_and_usage(oai: openai.OpenAI) -> None:
    system = "You are terse."
    first = "first question"
    user = "hello there, how are you?"
    resp = oai.chat.completions.create(
        model="fake-model",
        messages=[
            {"role": "system", "content": system},
            {"role": "user", "content": first},
            {"role": "assistant", "content": "ok"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "hello there, "},
                    {"type": "text", "text": "how are you?"},
                ],
            },
        ],
    )
    reply = "echo: " + user
    assert resp.object == "chat.completion"
    assert resp.id.startswith("chatcmpl-")
    assert resp.model == "fake-model"
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].message.content == reply
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None
    assert resp.usage.prompt_tokens == _tok(system + first + "ok" + user)
    assert resp.usage.completion_tokens == _tok(reply)
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    assert resp.usage.prompt_tokens_details is not None
    assert resp.usage.prompt_tokens_details.cached_tokens == 0


def test_chat_max_tokens_truncates(oai: openai.OpenAI) -> None:
    msgs: Any = [{"role": "user", "content": "a fairly long message to be cut short"}]
    resp = oai.chat.completions.create(model="m", messages=msgs, max_tokens=2)
    assert resp.choices[0].message.content == "echo: a "
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage is not None
    assert resp.usage.completion_tokens == 2


def test_chat_stream(oai: openai.OpenAI) -> None:
    text = "one two three four five six seven eight nine"
    stream = oai.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": text}],
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces: list[str] = []
    finish: list[str] = []
    usage: list[Any] = []
    roles: list[str] = []
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        if chunk.usage is not None:
            usage.append(chunk.usage)
        for choice in chunk.choices:
            if choice.delta.role:
                roles.append(choice.delta.role)
            if choice.delta.content:
                pieces.append(choice.delta.content)
            if choice.finish_reason:
                finish.append(choice.finish_reason)
    assert roles == ["assistant"]
    assert "".join(pieces) == "echo: " + text
    assert len(pieces) >= 2
    assert finish == ["stop"]
    assert len(usage) == 1
    assert usage[0].completion_tokens == _tok("echo: " + text)
    assert usage[0].prompt_tokens == _tok(text)


def test_chat_stream_raw_wire_format(base_url: str) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "a b"}], "stream": True}
    with httpx.Client(timeout=10) as client:
        resp = client.post(f"{base_url}/v1/chat/completions", json=body)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    lines = [line for line in resp.text.split("\n") if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"


def test_chat_tool_call(oai: openai.OpenAI) -> None:
    tools: Any = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    resp = oai.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "weather? [[tool]]"}], tools=tools
    )
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    call: Any = choice.message.tool_calls[0]
    assert call.id == "call_1"
    assert call.function.name == "get_weather"
    assert call.function.arguments == "{}"


def test_chat_bad_request(oai: openai.OpenAI, base_url: str) -> None:
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(model="m", messages=[])
    resp = httpx.post(f"{base_url}/v1/chat/completions", content=b"{not json", timeout=10)
    assert resp.status_code == 400
    assert set(resp.json()["error"]) == {"message", "type", "param", "code"}


# -------------------------------------------------------------------------------------------------------
# Markers


def test_fail_marker(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        oai.chat.completions.create(model="m", messages=[{"role": "user", "content": "boom [[fail:503]]"}])
    assert info.value.status_code == 503
    # plain [[fail:...]] fails every time
    msgs: Any = [{"role": "user", "content": "slow down [[fail:429]]"}]
    with pytest.raises(openai.RateLimitError):
        oai.chat.completions.create(model="m", messages=msgs)
    with pytest.raises(openai.RateLimitError):
        oai.chat.completions.create(model="m", messages=msgs)


def test_fail_marker_in_earlier_message(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError):
        oai.chat.completions.create(
            model="m",
            messages=[{"role": "system", "content": "[[fail:500]]"}, {"role": "user", "content": "hi"}],
        )


def test_fail_first_n(oai: openai.OpenAI, control: httpx.Client) -> None:
    msgs: Any = [{"role": "user", "content": "flaky once [[fail:503:1]]"}]
    with pytest.raises(openai.InternalServerError) as info:
        oai.chat.completions.create(model="m", messages=msgs)
    assert info.value.status_code == 503
    resp = oai.chat.completions.create(model="m", messages=msgs)
    assert resp.choices[0].message.content == "echo: flaky once [[fail:503:1]]"
    # a different text has its own counter
    with pytest.raises(openai.InternalServerError):
        oai.chat.completions.create(model="m", messages=[{"role": "user", "content": "other [[fail:503:1]]"}])
    # reset clears the counters
    control.post("/control/reset").raise_for_status()
    with pytest.raises(openai.InternalServerError):
        oai.chat.completions.create(model="m", messages=msgs)


def test_retry_after_header(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        oai.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x [[fail:429]] [[retry-after:2]]"}]
        )
    assert info.value.response.headers["retry-after"] == "2"
    ok = oai.chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "y [[retry-after:7]]"}]
    )
    assert ok.headers["retry-after"] == "7"


def test_sleep_marker(oai: openai.OpenAI) -> None:
    start = time.monotonic()
    oai.chat.completions.create(model="m", messages=[{"role": "user", "content": "zzz [[sleep:300]]"}])
    assert time.monotonic() - start >= 0.3


def test_cached_marker_openai(oai: openai.OpenAI) -> None:
    text = "a long shared prefix [[cached:8]]"
    resp = oai.chat.completions.create(model="m", messages=[{"role": "user", "content": text}])
    assert resp.usage is not None
    assert resp.usage.prompt_tokens_details is not None
    assert resp.usage.prompt_tokens_details.cached_tokens == 8
    assert resp.usage.prompt_tokens == _tok(text)


def test_break_marker_openai_stream(oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11 w12 [[break:2]]"}],
        stream=True,
    )
    pieces: list[str] = []

    def consume() -> None:
        for chunk in stream:
            for choice in chunk.choices:
                if choice.delta.content:
                    pieces.append(choice.delta.content)

    # openai wraps the transport error in APIConnectionError; the exact class is SDK/httpx specific
    with pytest.raises(Exception) as info:  # noqa: B017, PT011
        consume()
    assert _is_dropped_connection(info.value)
    assert len(pieces) == 2


# -------------------------------------------------------------------------------------------------------
# Embeddings / moderations


def test_embeddings_float_and_base64(oai: openai.OpenAI, base_url: str) -> None:
    as_float = oai.embeddings.create(model="emb", input=["hello", "world"], encoding_format="float")
    as_b64 = oai.embeddings.create(model="emb", input=["hello", "world"])  # SDK default: base64
    assert len(as_float.data) == 2
    for a, b in zip(as_float.data, as_b64.data, strict=True):
        assert len(a.embedding) == 64
        assert a.embedding == b.embedding
        assert math.isclose(math.sqrt(sum(x * x for x in a.embedding)), 1.0, abs_tol=1e-5)
    assert as_float.data[0].embedding != as_float.data[1].embedding
    assert as_float.usage.prompt_tokens == _tok("helloworld")
    # deterministic and dimension param
    again = oai.embeddings.create(model="emb", input="hello", encoding_format="float", dimensions=16)
    assert len(again.data[0].embedding) == 16
    assert (
        again.data[0].embedding
        == oai.embeddings.create(model="emb", input="hello", encoding_format="float", dimensions=16).data[0].embedding
    )
    # raw base64 is little-endian float32
    raw = httpx.post(
        f"{base_url}/v1/embeddings",
        json={"model": "emb", "input": "hello", "encoding_format": "base64"},
        timeout=10,
    ).json()
    decoded = list(struct.unpack("<64f", base64.b64decode(raw["data"][0]["embedding"])))
    assert decoded == as_float.data[0].embedding
    with pytest.raises(openai.BadRequestError):
        oai.embeddings.create(model="emb", input=[[1, 2, 3]])


def test_moderation_flag(oai: openai.OpenAI) -> None:
    resp = oai.moderations.create(input=["nice words", "mean words [[flag]]"])
    assert [r.flagged for r in resp.results] == [False, True]
    assert resp.results[1].categories.harassment is True
    assert resp.results[1].category_scores.harassment == pytest.approx(0.99)
    assert resp.results[0].categories.violence is False
    assert resp.results[0].category_scores.violence == pytest.approx(0.001)


# -------------------------------------------------------------------------------------------------------
# Anthropic


def test_anthropic_echo_and_usage(ant: anthropic.Anthropic) -> None:
    msg = ant.messages.create(
        model="claude-fake",
        max_tokens=100,
        system="be nice",
        messages=[{"role": "user", "content": "hi claude"}],
    )
    assert msg.type == "message"
    assert msg.id.startswith("msg_")
    assert msg.role == "assistant"
    assert msg.model == "claude-fake"
    block: Any = msg.content[0]
    assert block.type == "text"
    assert block.text == "echo: hi claude"
    assert msg.stop_reason == "end_turn"
    assert msg.usage.input_tokens == _tok("be nice" + "hi claude")
    assert msg.usage.output_tokens == _tok("echo: hi claude")
    assert msg.usage.cache_read_input_tokens == 0
    assert msg.usage.cache_creation_input_tokens == 0


def test_anthropic_max_tokens(ant: anthropic.Anthropic) -> None:
    msg = ant.messages.create(model="c", max_tokens=1, messages=[{"role": "user", "content": "too long to fit"}])
    block: Any = msg.content[0]
    assert block.text == "echo"
    assert msg.stop_reason == "max_tokens"


def test_anthropic_stream_create(ant: anthropic.Anthropic) -> None:
    text = "stream me please, one two three four five"
    events = list(
        ant.messages.create(model="c", max_tokens=100, messages=[{"role": "user", "content": text}], stream=True)
    )
    types = [e.type for e in events]
    assert types[0] == "message_start"
    assert types[1] == "content_block_start"
    assert types[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    deltas: list[str] = []
    for event in events:
        if event.type == "content_block_delta" and event.delta.type == "text_delta":
            deltas.append(event.delta.text)
    assert len(deltas) >= 2
    assert "".join(deltas) == "echo: " + text


def test_anthropic_stream_helper(ant: anthropic.Anthropic) -> None:
    text = "helper stream [[cached:3]] [[cache-write:2]]"
    msgs: Any = [{"role": "user", "content": text}]
    with ant.messages.stream(model="c", max_tokens=100, messages=msgs) as stream:
        collected = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert collected == "echo: " + text
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == _tok("echo: " + text)
    assert final.usage.input_tokens == _tok(text) - 3 - 2
    assert final.usage.cache_read_input_tokens == 3
    assert final.usage.cache_creation_input_tokens == 2


def test_anthropic_cached_marker(ant: anthropic.Anthropic) -> None:
    text = "a long shared prefix [[cached:8]]"
    msg = ant.messages.create(model="c", max_tokens=100, messages=[{"role": "user", "content": text}])
    assert msg.usage.cache_read_input_tokens == 8
    assert msg.usage.input_tokens == _tok(text) - 8


def test_anthropic_tool_use(ant: anthropic.Anthropic) -> None:
    tools: Any = [{"name": "lookup", "description": "d", "input_schema": {"type": "object"}}]
    msg = ant.messages.create(
        model="c", max_tokens=100, tools=tools, messages=[{"role": "user", "content": "[[tool]] go"}]
    )
    block: Any = msg.content[0]
    assert block.type == "tool_use"
    assert block.id == "toolu_1"
    assert block.name == "lookup"
    assert block.input == {}
    assert msg.stop_reason == "tool_use"
    with ant.messages.stream(
        model="c", max_tokens=100, tools=tools, messages=[{"role": "user", "content": "[[tool]] go"}]
    ) as stream:
        final = stream.get_final_message()
    streamed: Any = final.content[0]
    assert streamed.type == "tool_use"
    assert streamed.name == "lookup"
    assert streamed.input == {}


def test_anthropic_errors(ant: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.InternalServerError) as info:
        ant.messages.create(
            model="c", max_tokens=10, messages=[{"role": "user", "content": "[[fail:529]] [[retry-after:4]]"}]
        )
    assert info.value.status_code == 529
    assert info.value.response.headers["retry-after"] == "4"
    body: Any = info.value.body
    assert body["type"] == "error"
    assert body["error"]["type"] == "overloaded_error"
    with pytest.raises(anthropic.RateLimitError) as rl:
        ant.messages.create(model="c", max_tokens=10, messages=[{"role": "user", "content": "[[fail:429]]"}])
    rl_body: Any = rl.value.body
    assert rl_body["error"]["type"] == "rate_limit_error"
    with pytest.raises(anthropic.BadRequestError):
        ant.messages.create(model="c", max_tokens=10, messages=[])


def test_break_marker_anthropic_stream(ant: anthropic.Anthropic) -> None:
    text = "w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11 w12 [[break:2]]"
    msgs: Any = [{"role": "user", "content": text}]
    deltas: list[str] = []

    def consume() -> None:
        for event in ant.messages.create(model="c", max_tokens=100, messages=msgs, stream=True):
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                deltas.append(event.delta.text)

    with pytest.raises(Exception) as info:  # noqa: B017, PT011 - the transport error class is httpx specific
        consume()
    assert _is_dropped_connection(info.value)
    assert len(deltas) == 2
    with (
        pytest.raises(Exception) as info2,  # noqa: B017, PT011
        ant.messages.stream(model="c", max_tokens=100, messages=msgs) as stream,
    ):
        stream.get_final_message()
    assert _is_dropped_connection(info2.value)


# -------------------------------------------------------------------------------------------------------
# Control plane


def test_control_latency(oai: openai.OpenAI, control: httpx.Client) -> None:
    resp = control.post("/control", json={"latency_ms": 250})
    assert resp.json() == {"latency_ms": 250, "fail_rate": 0.0, "fail_status": 500, "context_windows": {}}
    start = time.monotonic()
    oai.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert time.monotonic() - start >= 0.25
    control.post("/control", json={"latency_ms": 0}).raise_for_status()
    start = time.monotonic()
    oai.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert time.monotonic() - start < 0.25
    assert control.post("/control", json={"fail_rate": 2}).status_code == 400
    assert control.get("/control").json()["latency_ms"] == 0


def test_control_fail_rate(oai: openai.OpenAI, control: httpx.Client) -> None:
    control.post("/control", json={"fail_rate": 1.0, "fail_status": 502}).raise_for_status()
    with pytest.raises(openai.InternalServerError) as info:
        oai.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 502
    # deterministic: with F = 0.5, request n fails iff n is even
    control.post("/control/reset").raise_for_status()
    control.post("/control", json={"fail_rate": 0.5, "fail_status": 503}).raise_for_status()
    outcomes: list[int] = []
    for _ in range(6):
        try:
            oai.embeddings.create(model="e", input="x", encoding_format="float")
            outcomes.append(200)
        except openai.APIStatusError as err:
            outcomes.append(err.status_code)
    assert outcomes == [200, 503, 200, 503, 200, 503]
    control.post("/control", json={"fail_rate": 0.0}).raise_for_status()
    oai.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])


def test_control_tags_count_every_tagged_request(
    oai: openai.OpenAI, ant: anthropic.Anthropic, control: httpx.Client
) -> None:
    # A drill compares these counts with the attempts it recorded: failed calls count too, untagged ones never.
    assert control.get("/control/tags").json() == {"tags": {}, "total": 0}
    oai.chat.completions.create(model="m", messages=[{"role": "user", "content": "a [[tag:7]]"}])
    with pytest.raises(openai.InternalServerError):
        oai.chat.completions.create(model="m", messages=[{"role": "user", "content": "b [[tag:8]] [[fail:503]]"}])
    list(oai.chat.completions.create(model="m", stream=True, messages=[{"role": "user", "content": "a [[tag:7]]"}]))
    oai.embeddings.create(model="e", input=["x [[tag:9]]", "y"])
    ant.messages.create(model="c", max_tokens=10, messages=[{"role": "user", "content": "c [[tag:9]]"}])
    oai.chat.completions.create(model="m", messages=[{"role": "user", "content": "untagged"}])
    assert control.get("/control/tags").json() == {"tags": {"7": 2, "8": 1, "9": 2}, "total": 5}
    control.post("/control/reset").raise_for_status()
    assert control.get("/control/tags").json() == {"tags": {}, "total": 0}


def test_control_stats(oai: openai.OpenAI, ant: anthropic.Anthropic, control: httpx.Client) -> None:
    assert control.get("/control/stats").json() == {"requests": {}, "total": 0}
    for _ in range(3):
        oai.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.InternalServerError):
        oai.chat.completions.create(model="m", messages=[{"role": "user", "content": "[[fail:503]]"}])
    ant.messages.create(model="c", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    oai.moderations.create(input="hi")
    control.get("/healthz").raise_for_status()
    stats = control.get("/control/stats").json()
    assert stats == {
        "requests": {
            "/v1/chat/completions": {"200": 3, "503": 1},
            "/v1/messages": {"200": 1},
            "/v1/moderations": {"200": 1},
        },
        "total": 6,
    }


# -------------------------------------------------------------------------------------------------------
# Model-qualified markers


def _user(text: str) -> Any:
    return [{"role": "user", "content": text}]


def test_qualified_fail_marker(oai: openai.OpenAI, azure: openai.AzureOpenAI) -> None:
    text = "same text for both [[fail:503@gpt-a]]"
    with pytest.raises(openai.InternalServerError) as info:
        oai.chat.completions.create(model="gpt-a", messages=_user(text))
    assert info.value.status_code == 503
    resp = oai.chat.completions.create(model="gpt-b", messages=_user(text))
    assert resp.choices[0].message.content == "echo: " + text
    # two Azure deployments of one logical model: the deployment name is the model the marker names
    with pytest.raises(openai.InternalServerError):
        azure.chat.completions.create(model="eastus-gpt", messages=_user("deploy [[fail:503@eastus-gpt]]"))
    ok = azure.chat.completions.create(model="westus-gpt", messages=_user("deploy [[fail:503@eastus-gpt]]"))
    assert ok.model == "westus-gpt"


def test_qualified_marker_first_applicable_wins(oai: openai.OpenAI) -> None:
    text = "[[fail:429@gpt-a]] [[fail:502]] [[fail:500@gpt-b]]"
    with pytest.raises(openai.RateLimitError):
        oai.chat.completions.create(model="gpt-a", messages=_user(text))
    for model in ("gpt-b", "gpt-c"):  # the unqualified 502 comes first for every other model
        with pytest.raises(openai.InternalServerError) as info:
            oai.chat.completions.create(model=model, messages=_user(text))
        assert info.value.status_code == 502


def test_qualified_fail_first_n_counts_per_model(oai: openai.OpenAI, control: httpx.Client) -> None:
    text = "flaky [[fail:503:1@gpt-a]] [[fail:500:1@gpt-b]]"
    with pytest.raises(openai.InternalServerError) as first_a:
        oai.chat.completions.create(model="gpt-a", messages=_user(text))
    assert first_a.value.status_code == 503
    # gpt-b's counter is its own: its first request fails although gpt-a's text was seen already
    with pytest.raises(openai.InternalServerError) as first_b:
        oai.chat.completions.create(model="gpt-b", messages=_user(text))
    assert first_b.value.status_code == 500
    oai.chat.completions.create(model="gpt-a", messages=_user(text))
    oai.chat.completions.create(model="gpt-b", messages=_user(text))
    oai.chat.completions.create(model="gpt-c", messages=_user(text))


def test_qualified_sleep_and_flag(oai: openai.OpenAI) -> None:
    text = "zzz [[sleep:600@slow-model]]"
    start = time.monotonic()
    oai.chat.completions.create(model="fast-model", messages=_user(text))
    assert time.monotonic() - start < 0.5
    start = time.monotonic()
    oai.chat.completions.create(model="slow-model", messages=_user(text))
    assert time.monotonic() - start >= 0.6
    flagged = oai.moderations.create(model="mod-a", input=["x [[flag@mod-a]]"])
    assert flagged.results[0].flagged is True
    not_flagged = oai.moderations.create(model="mod-b", input=["x [[flag@mod-a]]"])
    assert not_flagged.results[0].flagged is False


def test_qualified_marker_on_bedrock_and_vertex(
    bedrock: anthropic.AnthropicBedrock, vertex: anthropic.AnthropicVertex
) -> None:
    # the model id from the URL, with its ":" (Bedrock) or "@" (Vertex), is what the marker names
    text = f"[[fail:529@{BEDROCK_MODEL}]] [[fail:503@{VERTEX_MODEL}]]"
    with pytest.raises(anthropic.InternalServerError) as on_bedrock:
        bedrock.messages.create(model=BEDROCK_MODEL, max_tokens=50, messages=_user(text))
    assert on_bedrock.value.status_code == 529
    bedrock.messages.create(model="anthropic.claude-other-v1:0", max_tokens=50, messages=_user(text))
    with pytest.raises(anthropic.InternalServerError) as on_vertex:
        vertex.messages.create(model=VERTEX_MODEL, max_tokens=50, messages=_user(text))
    assert on_vertex.value.status_code == 503
    vertex.messages.create(model="claude-other@1", max_tokens=50, messages=_user(text))


# -------------------------------------------------------------------------------------------------------
# Context-length and content-policy errors


def _openai_context_message(window: int, prompt: int) -> str:
    return (
        f"This model's maximum context length is {window} tokens. However, your messages resulted in {prompt} "
        "tokens. Please reduce the length of the messages."
    )


def test_context_marker_openai(oai: openai.OpenAI) -> None:
    text = "a prompt that is deemed too long [[context]]"
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(model="m", messages=_user(text))
    err = info.value
    assert err.status_code == 400
    assert err.code == "context_length_exceeded"
    assert err.param == "messages"
    assert err.type == "invalid_request_error"
    body: Any = err.body
    assert body["message"] == _openai_context_message(_tok(text) - 1, _tok(text))
    # qualified: only the named model
    oai.chat.completions.create(model="big", messages=_user("fits [[context@small]]"))
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(model="small", messages=_user("fits [[context@small]]"))


def test_context_marker_anthropic(
    ant: anthropic.Anthropic, bedrock: anthropic.AnthropicBedrock, vertex: anthropic.AnthropicVertex
) -> None:
    text = "a prompt that is deemed too long [[context]]"
    system = "sys"
    n = _tok(system + text)
    for client, model in ((ant, "c"), (bedrock, BEDROCK_MODEL), (vertex, VERTEX_MODEL)):
        with pytest.raises(anthropic.BadRequestError) as info:
            client.messages.create(model=model, max_tokens=10, system=system, messages=_user(text))
        body: Any = info.value.body
        assert body == {
            "type": "error",
            "error": {"type": "invalid_request_error", "message": f"prompt is too long: {n} tokens > {n - 1} maximum"},
        }


def test_policy_marker_openai(oai: openai.OpenAI, azure: openai.AzureOpenAI) -> None:
    for client in (oai, azure):
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model="m", messages=_user("something bad [[policy]]"))
        assert info.value.code == "content_policy_violation"
        assert info.value.type == "invalid_request_error"
        body: Any = info.value.body
        assert body["message"] == (
            "Your request was rejected as a result of our safety system. Your prompt may contain text that is not "
            "allowed by our content policy."
        )


def test_policy_marker_anthropic(
    ant: anthropic.Anthropic, bedrock: anthropic.AnthropicBedrock, vertex: anthropic.AnthropicVertex
) -> None:
    for client, model in ((ant, "c"), (bedrock, BEDROCK_MODEL), (vertex, VERTEX_MODEL)):
        with pytest.raises(anthropic.BadRequestError) as info:
            client.messages.create(model=model, max_tokens=10, messages=_user("something bad [[policy]]"))
        body: Any = info.value.body
        assert body["error"] == {
            "type": "invalid_request_error",
            "message": "Output blocked by content filtering policy",
        }


def test_injected_failure_wins_over_context_and_policy(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError):
        oai.chat.completions.create(model="m", messages=_user("[[context]] [[policy]] [[fail:503]]"))
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(model="m", messages=_user("[[policy]] [[context]]"))
    assert info.value.code == "context_length_exceeded"


def test_context_windows_via_control(oai: openai.OpenAI, ant: anthropic.Anthropic, control: httpx.Client) -> None:
    resp = control.post("/control", json={"context_windows": {"small": 10, "other": 1000}})
    assert resp.json()["context_windows"] == {"small": 10, "other": 1000}
    assert control.get("/control").json()["context_windows"] == {"small": 10, "other": 1000}
    fits = "x" * 40  # 10 tokens: exactly the window
    over = "x" * 41  # 11 tokens
    under = oai.chat.completions.create(model="small", messages=_user(fits))
    assert under.usage is not None
    assert under.usage.prompt_tokens == 10
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(model="small", messages=_user(over))
    assert info.value.code == "context_length_exceeded"
    body: Any = info.value.body
    assert body["message"] == _openai_context_message(10, 11)
    with pytest.raises(anthropic.BadRequestError) as ant_info:
        ant.messages.create(model="small", max_tokens=10, messages=_user(over))
    ant_body: Any = ant_info.value.body
    assert ant_body["error"]["message"] == "prompt is too long: 11 tokens > 10 maximum"
    ant.messages.create(model="small", max_tokens=10, messages=_user(fits))
    # other models, and embeddings / moderations of the same model, are not limited
    oai.chat.completions.create(model="unlimited", messages=_user(over * 10))
    oai.embeddings.create(model="small", input=over * 10)
    oai.moderations.create(model="small", input=over * 10)
    # [[context]] on a model with a window reports that window
    with pytest.raises(openai.BadRequestError) as forced:
        oai.chat.completions.create(model="other", messages=_user("[[context]]"))
    forced_body: Any = forced.value.body
    assert forced_body["message"] == _openai_context_message(1000, _tok("[[context]]"))
    # reset keeps the windows (they are settings); {} clears them; bad values are refused
    control.post("/control/reset").raise_for_status()
    assert control.get("/control").json()["context_windows"] == {"small": 10, "other": 1000}
    assert control.post("/control", json={"context_windows": {"small": 0}}).status_code == 400
    assert control.post("/control", json={"context_windows": {"small": True}}).status_code == 400
    assert control.post("/control", json={"context_windows": ["small"]}).status_code == 400
    assert control.get("/control").json()["context_windows"] == {"small": 10, "other": 1000}
    assert control.post("/control", json={"context_windows": {}}).json()["context_windows"] == {}
    oai.chat.completions.create(model="small", messages=_user(over))


def test_context_window_cli_option() -> None:
    with _serve("--context-window", "tiny=3", "--context-window", "name=with=equals=5") as url:
        assert httpx.get(f"{url}/control", timeout=10).json()["context_windows"] == {
            "tiny": 3,
            "name=with=equals": 5,
        }
        with openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0) as client:
            client.chat.completions.create(model="tiny", messages=_user("123456789012"))
            with pytest.raises(openai.BadRequestError) as info:
                client.chat.completions.create(model="tiny", messages=_user("1234567890123"))
    body: Any = info.value.body
    assert body["message"] == _openai_context_message(3, 4)


def test_context_window_cli_option_rejects_bad_values() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "switchyard.fake_provider.app", "--context-window", "tiny=zero"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 2
    assert "MODEL=N" in out.stderr


# -------------------------------------------------------------------------------------------------------
# Azure OpenAI


def test_azure_chat(azure: openai.AzureOpenAI, base_url: str) -> None:
    resp = azure.chat.completions.create(model="my-deployment", messages=_user("hello azure"))
    assert resp.model == "my-deployment"
    assert resp.choices[0].message.content == "echo: hello azure"
    assert resp.usage is not None
    assert resp.usage.prompt_tokens == _tok("hello azure")
    # the deployment in the URL is the model, whatever the body says
    with openai.AzureOpenAI(
        azure_endpoint=base_url,
        azure_deployment="dep-east",
        api_key="x",
        api_version=AZURE_API_VERSION,
        max_retries=0,
    ) as pinned:
        assert pinned.chat.completions.create(model="gpt-4o", messages=_user("hi")).model == "dep-east"


def test_azure_chat_stream(azure: openai.AzureOpenAI) -> None:
    text = "one two three four five six seven eight"
    stream = azure.chat.completions.create(
        model="my-deployment", messages=_user(text), stream=True, stream_options={"include_usage": True}
    )
    pieces: list[str] = []
    usage: list[Any] = []
    for chunk in stream:
        assert chunk.model == "my-deployment"
        if chunk.usage is not None:
            usage.append(chunk.usage)
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
    assert "".join(pieces) == "echo: " + text
    assert len(pieces) >= 2
    assert [u.completion_tokens for u in usage] == [_tok("echo: " + text)]


def test_azure_break_marker_stream(azure: openai.AzureOpenAI) -> None:
    stream = azure.chat.completions.create(
        model="d", messages=_user("w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11 w12 [[break:2]]"), stream=True
    )
    pieces: list[str] = []

    def consume() -> None:
        for chunk in stream:
            for choice in chunk.choices:
                if choice.delta.content:
                    pieces.append(choice.delta.content)

    with pytest.raises(Exception) as info:  # noqa: B017, PT011 - the transport error class is httpx specific
        consume()
    assert _is_dropped_connection(info.value)
    assert len(pieces) == 2


def test_azure_embeddings_and_moderations(azure: openai.AzureOpenAI, oai: openai.OpenAI) -> None:
    emb = azure.embeddings.create(model="emb-deployment", input=["hello", "world"], encoding_format="float")
    assert emb.model == "emb-deployment"
    assert len(emb.data) == 2
    assert (
        emb.data[0].embedding
        == oai.embeddings.create(model="e", input="hello", encoding_format="float").data[0].embedding
    )
    assert emb.usage.prompt_tokens == _tok("helloworld")
    base64_default = azure.embeddings.create(model="emb-deployment", input="hello")
    assert base64_default.data[0].embedding == emb.data[0].embedding
    mod = azure.moderations.create(input=["fine", "rude [[flag]]"])
    assert [r.flagged for r in mod.results] == [False, True]
    with pytest.raises(openai.InternalServerError):
        azure.embeddings.create(model="emb-deployment", input="x [[fail:503@emb-deployment]]")


def test_azure_requires_api_version(base_url: str) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    for path in ("/openai/deployments/d/chat/completions", "/openai/deployments/d/embeddings", "/openai/moderations"):
        resp = httpx.post(f"{base_url}{path}", json={**body, "input": "x"}, headers={"api-key": "x"}, timeout=10)
        assert resp.status_code == 400
        assert resp.json()["error"]["param"] == "api-version"
        assert resp.json()["error"]["type"] == "invalid_request_error"
    ok = httpx.post(
        f"{base_url}/openai/deployments/d/chat/completions",
        params={"api-version": AZURE_API_VERSION},
        json=body,
        timeout=10,
    )
    assert ok.status_code == 200


def test_azure_stats_paths(azure: openai.AzureOpenAI, control: httpx.Client) -> None:
    azure.chat.completions.create(model="dep-a", messages=_user("hi"))
    azure.chat.completions.create(model="dep-b", messages=_user("hi"))
    with pytest.raises(openai.RateLimitError):
        azure.chat.completions.create(model="dep-a", messages=_user("[[fail:429]]"))
    azure.embeddings.create(model="emb", input="x")
    azure.moderations.create(input="x")
    assert control.get("/control/stats").json() == {
        "requests": {
            "/openai/deployments/dep-a/chat/completions": {"200": 1, "429": 1},
            "/openai/deployments/dep-b/chat/completions": {"200": 1},
            "/openai/deployments/emb/embeddings": {"200": 1},
            "/openai/moderations": {"200": 1},
        },
        "total": 5,
    }


# -------------------------------------------------------------------------------------------------------
# Anthropic on Bedrock


def test_bedrock_invoke(bedrock: anthropic.AnthropicBedrock) -> None:
    text = "hi bedrock [[cached:2]]"
    msg = bedrock.messages.create(model=BEDROCK_MODEL, max_tokens=100, system="sys", messages=_user(text))
    assert msg.id.startswith("msg_")
    assert msg.model == BEDROCK_MODEL
    block: Any = msg.content[0]
    assert block.text == "echo: " + text
    assert msg.stop_reason == "end_turn"
    assert msg.usage.input_tokens == _tok("sys" + text) - 2
    assert msg.usage.cache_read_input_tokens == 2
    assert msg.usage.output_tokens == _tok("echo: " + text)
    short = bedrock.messages.create(model=BEDROCK_MODEL, max_tokens=1, messages=_user("too long to fit"))
    assert short.stop_reason == "max_tokens"


def test_bedrock_stream(bedrock: anthropic.AnthropicBedrock) -> None:
    text = "stream me on bedrock one two three four five"
    events = list(bedrock.messages.create(model=BEDROCK_MODEL, max_tokens=100, messages=_user(text), stream=True))
    types = [e.type for e in events]
    assert types[:2] == ["message_start", "content_block_start"]
    assert types[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    deltas = [e.delta.text for e in events if e.type == "content_block_delta" and e.delta.type == "text_delta"]
    assert len(deltas) >= 2
    assert "".join(deltas) == "echo: " + text
    with bedrock.messages.stream(model=BEDROCK_MODEL, max_tokens=100, messages=_user(text)) as stream:
        collected = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert collected == "echo: " + text
    assert final.model == BEDROCK_MODEL
    assert final.usage.output_tokens == _tok("echo: " + text)


def test_bedrock_stream_wire_format(base_url: str) -> None:
    body = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 50, "messages": _user("a b c")}
    # URL-encoded model id, as other AWS clients send it; the reply names it decoded
    resp = httpx.post(
        f"{base_url}/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/invoke-with-response-stream",
        json=body,
        timeout=10,
    )
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/vnd.amazon.eventstream"
    buffer = EventStreamBuffer()
    buffer.add_data(resp.content)  # botocore checks both CRCs of every message while decoding
    events: list[dict[str, Any]] = []
    for message in buffer:
        assert message.headers == {
            ":event-type": "chunk",
            ":content-type": "application/json",
            ":message-type": "event",
        }
        events.append(json.loads(base64.b64decode(json.loads(message.payload)["bytes"])))
    assert events[0]["type"] == "message_start"
    assert events[0]["message"]["model"] == BEDROCK_MODEL
    assert events[-1] == {"type": "message_stop"}
    invoke = httpx.post(f"{base_url}/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/invoke", json=body, timeout=10)
    assert invoke.json()["model"] == BEDROCK_MODEL
    # Bedrock's body carries anthropic_version instead of a header
    missing = httpx.post(f"{base_url}/model/m/invoke", json={"max_tokens": 5, "messages": _user("x")}, timeout=10)
    assert missing.status_code == 400
    assert missing.json()["type"] == "error"


def test_bedrock_break_marker(bedrock: anthropic.AnthropicBedrock) -> None:
    msgs = _user("w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11 w12 [[break:2]]")
    deltas: list[str] = []

    def consume() -> None:
        for event in bedrock.messages.create(model=BEDROCK_MODEL, max_tokens=100, messages=msgs, stream=True):
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                deltas.append(event.delta.text)

    with pytest.raises(Exception) as info:  # noqa: B017, PT011 - the transport error class is httpx specific
        consume()
    assert _is_dropped_connection(info.value)
    assert len(deltas) == 2


def test_bedrock_errors(bedrock: anthropic.AnthropicBedrock) -> None:
    with pytest.raises(anthropic.RateLimitError) as info:
        bedrock.messages.create(
            model=BEDROCK_MODEL, max_tokens=10, messages=_user("[[fail:429]] [[retry-after:3]]"), stream=True
        )
    assert info.value.response.headers["retry-after"] == "3"
    body: Any = info.value.body
    assert body["error"]["type"] == "rate_limit_error"


# -------------------------------------------------------------------------------------------------------
# Anthropic on Vertex AI


def test_vertex_raw_predict(vertex: anthropic.AnthropicVertex) -> None:
    text = "hi vertex [[cache-write:1]]"
    msg = vertex.messages.create(model=VERTEX_MODEL, max_tokens=100, messages=_user(text))
    assert msg.model == VERTEX_MODEL
    block: Any = msg.content[0]
    assert block.text == "echo: " + text
    assert msg.usage.input_tokens == _tok(text) - 1
    assert msg.usage.cache_creation_input_tokens == 1


def test_vertex_stream(vertex: anthropic.AnthropicVertex) -> None:
    text = "stream me on vertex one two three four five"
    events = list(vertex.messages.create(model=VERTEX_MODEL, max_tokens=100, messages=_user(text), stream=True))
    assert [e.type for e in events][-3:] == ["content_block_stop", "message_delta", "message_stop"]
    with vertex.messages.stream(model=VERTEX_MODEL, max_tokens=100, messages=_user(text)) as stream:
        collected = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert collected == "echo: " + text
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == _tok("echo: " + text)


def test_vertex_break_marker(vertex: anthropic.AnthropicVertex) -> None:
    msgs = _user("w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11 w12 [[break:2]]")
    deltas: list[str] = []

    def consume() -> None:
        for event in vertex.messages.create(model=VERTEX_MODEL, max_tokens=100, messages=msgs, stream=True):
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                deltas.append(event.delta.text)

    with pytest.raises(Exception) as info:  # noqa: B017, PT011 - the transport error class is httpx specific
        consume()
    assert _is_dropped_connection(info.value)
    assert len(deltas) == 2


def test_vertex_paths(base_url: str) -> None:
    body = {"anthropic_version": "vertex-2023-10-16", "max_tokens": 50, "messages": _user("hi")}
    models = "projects/p/locations/us-east5/publishers/anthropic/models"
    for prefix in ("/v1/", "/"):
        resp = httpx.post(f"{base_url}{prefix}{models}/{VERTEX_MODEL}:rawPredict", json=body, timeout=10)
        assert resp.status_code == 200
        assert resp.json()["model"] == VERTEX_MODEL
    streamed = httpx.post(f"{base_url}/v1/{models}/{VERTEX_MODEL}:streamRawPredict", json=body, timeout=10)
    assert streamed.headers["content-type"].startswith("text/event-stream")
    assert streamed.text.rstrip().endswith('data: {"type":"message_stop"}')
    unknown = httpx.post(f"{base_url}/v1/{models}/{VERTEX_MODEL}:predict", json=body, timeout=10)
    assert unknown.status_code == 404
    assert unknown.json()["error"]["type"] == "not_found_error"


def test_platform_stats_paths(
    bedrock: anthropic.AnthropicBedrock, vertex: anthropic.AnthropicVertex, control: httpx.Client
) -> None:
    bedrock.messages.create(model=BEDROCK_MODEL, max_tokens=10, messages=_user("hi"))
    list(bedrock.messages.create(model=BEDROCK_MODEL, max_tokens=10, messages=_user("hi"), stream=True))
    vertex.messages.create(model=VERTEX_MODEL, max_tokens=10, messages=_user("hi"))
    with pytest.raises(anthropic.BadRequestError):
        vertex.messages.create(
            model=VERTEX_MODEL, max_tokens=10, messages=_user("hi"), stream=True, system="[[policy]]"
        )
    vertex_models = "/v1/projects/proj/locations/us-east5/publishers/anthropic/models"
    assert control.get("/control/stats").json() == {
        "requests": {
            f"/model/{BEDROCK_MODEL}/invoke": {"200": 1},
            f"/model/{BEDROCK_MODEL}/invoke-with-response-stream": {"200": 1},
            f"{vertex_models}/{VERTEX_MODEL}:rawPredict": {"200": 1},
            f"{vertex_models}/{VERTEX_MODEL}:streamRawPredict": {"400": 1},
        },
        "total": 4,
    }
