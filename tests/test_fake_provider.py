"""Tests of the fake model provider, run as a real server in a subprocess and driven by the official SDKs."""

from __future__ import annotations

import base64
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

from tests.processes import free_port

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "switchyard.fake_provider.app", "--port", str(port)],
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


@pytest.fixture
def control(base_url: str) -> Iterator[httpx.Client]:
    """HTTP client for /control; restores default settings and clears counters afterwards."""
    with httpx.Client(base_url=base_url, timeout=10) as client:
        client.post("/control/reset").raise_for_status()
        yield client
        defaults = {"latency_ms": 0, "fail_rate": 0.0, "fail_status": 500}
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
    assert resp.json() == {"latency_ms": 250, "fail_rate": 0.0, "fail_status": 500}
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
