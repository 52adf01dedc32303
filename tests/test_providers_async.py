"""The adapters' async methods against the fake provider served over HTTP, each test on an event loop of its
own (asyncio.run), as the worker's loop will call them; the sync methods are tested in test_providers.py."""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import openai
import pytest

from switchyard.core.config import ProviderConfig
from switchyard.core.errors import ProviderError
from switchyard.defaults import MODELS_DIR
from switchyard.providers.anthropic_adapter import AnthropicAdapter
from switchyard.providers.base import ProviderAdapter
from switchyard.providers.loop_clients import LoopClients
from switchyard.providers.model_servers import KServeAdapter, TFServingAdapter
from switchyard.providers.onnx_adapter import OnnxAdapter
from switchyard.providers.openai_adapter import OpenAIAdapter
from tests.support import Stack


@pytest.fixture(scope="module")
def openai_adapter(stack: Stack) -> Iterator[OpenAIAdapter]:
    adapter = OpenAIAdapter(ProviderConfig(kind="openai", base_url=f"{stack.fake_url}/v1", api_key="x"))
    yield adapter
    adapter.close()


@pytest.fixture(scope="module")
def anthropic_adapter(stack: Stack) -> Iterator[AnthropicAdapter]:
    adapter = AnthropicAdapter(ProviderConfig(kind="anthropic", base_url=stack.fake_url, api_key="x"))
    yield adapter
    adapter.close()


T = TypeVar("T")
CHAT_ERRORS = {
    "[[fail:503]]": ("provider_error", True),
    "[[fail:429]]": ("rate_limited", True),
    "[[fail:400]]": ("invalid_request", False),
    "[[fail:401]]": ("provider_error", False),
    "[[fail:408]]": ("timeout", True),
    "[[context]]": ("context_length_exceeded", False),
    "[[policy]]": ("content_blocked", False),
}


def on_loop(adapter: ProviderAdapter, body: Callable[[], Awaitable[T]]) -> T:
    """Run `body` on a new event loop, closing the adapter's client of that loop before the loop ends."""

    async def main() -> T:
        try:
            return await body()
        finally:
            await adapter.aclose()

    return asyncio.run(main())


def user(text: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}]}


async def achat_error(adapter: ProviderAdapter, text: str, timeout_s: float = 5) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        await adapter.achat("m", user(text), timeout_s)
    return info.value


def test_openai_achat(openai_adapter: OpenAIAdapter) -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]

    async def body() -> None:
        result = await openai_adapter.achat("gpt-4o-mini", user("hi [[cached:1]]"), 5)
        assert result == openai_adapter.chat("gpt-4o-mini", user("hi [[cached:1]]"), 5)
        assert result.output == {"content": "echo: hi [[cached:1]]", "finish_reason": "stop"}
        assert result.usage.cached_input_tokens == 1
        called = await openai_adapter.achat("m", {**user("[[tool]]"), "tools": tools}, 5)
        assert called.output["tool_calls"][0]["function"]["name"] == "lookup"
        cut = await openai_adapter.achat("m", {**user("a long reply " * 10), "max_tokens": 2}, 5)
        assert cut.output["finish_reason"] == "length"

    on_loop(openai_adapter, body)


def test_openai_achat_streams_to_on_delta(openai_adapter: OpenAIAdapter) -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]

    async def body() -> None:
        chunks: list[str] = []
        result = await openai_adapter.achat("m", user("a b c d e f [[cached:2]]"), 5, chunks.append)
        assert "".join(chunks) == result.output["content"] == "echo: a b c d e f [[cached:2]]"
        assert len(chunks) > 1
        assert result.output["finish_reason"] == "stop"
        assert result.usage == openai_adapter.chat("m", user("a b c d e f [[cached:2]]"), 5).usage
        called = await openai_adapter.achat("m", {**user("[[tool]]"), "tools": tools}, 5, chunks.append)
        assert called.output["tool_calls"][0]["function"]["name"] == "lookup"
        assert called.output["finish_reason"] == "tool_calls"
        broken = await achat_error_streamed(openai_adapter, "x y z w v u t s [[break:2]]")
        assert (broken.error_type, broken.retryable) == ("provider_error", True)

    on_loop(openai_adapter, body)


async def achat_error_streamed(adapter: ProviderAdapter, text: str) -> ProviderError:
    chunks: list[str] = []
    with pytest.raises(ProviderError) as info:
        await adapter.achat("m", user(text), 5, chunks.append)
    assert len(chunks) == 2, chunks  # what came before the break was passed on
    return info.value


def test_openai_aembed_decodes_base64_as_the_floats(stack: Stack, openai_adapter: OpenAIAdapter) -> None:
    with openai.OpenAI(base_url=f"{stack.fake_url}/v1", api_key="x", max_retries=0) as sdk:
        floats = sdk.embeddings.create(model="e", input=["x", "y"], dimensions=16, encoding_format="float")

    async def body() -> None:
        result = await openai_adapter.aembed("e", {"input": ["x", "y"], "dimensions": 16}, 5)
        vectors = result.output["embeddings"]
        assert [len(v) for v in vectors] == [16, 16]
        for got, expected in zip(vectors, floats.data, strict=True):
            assert got == pytest.approx(expected.embedding, abs=1e-6)
        assert result.usage.input_tokens == (floats.usage.prompt_tokens if floats.usage else 0)

    on_loop(openai_adapter, body)


def test_openai_amoderate(openai_adapter: OpenAIAdapter) -> None:
    async def body() -> None:
        flagged = await openai_adapter.amoderate("omni-moderation-latest", {"input": ["fine", "bad [[flag]]"]}, 5)
        assert flagged.output["flagged"]
        assert [r["flagged"] for r in flagged.output["results"]] == [False, True]
        assert flagged.output["results"][1]["category_scores"]["harassment"] == pytest.approx(0.99)
        fine = await openai_adapter.amoderate("omni-moderation-latest", {"input": "fine"}, 5)
        assert not fine.output["flagged"]

    on_loop(openai_adapter, body)


def test_openai_async_errors_are_classified(openai_adapter: OpenAIAdapter) -> None:
    async def body() -> None:
        for marker, expected in CHAT_ERRORS.items():
            error = await achat_error(openai_adapter, marker)
            assert (error.error_type, error.retryable) == expected, marker
        limited = await achat_error(openai_adapter, "[[fail:429]] [[retry-after:3]]")
        assert (limited.status_code, limited.retry_after_s) == (429, 3)
        slow = await achat_error(openai_adapter, "[[sleep:1500]]", timeout_s=0.3)
        assert (slow.error_type, slow.retryable) == ("timeout", True)
        with pytest.raises(ProviderError) as info:
            await openai_adapter.aembed("e", {"input": ["[[fail:503]]"]}, 5)
        assert (info.value.status_code, info.value.retryable) == (503, True)
        with pytest.raises(ProviderError) as info:
            await openai_adapter.apredict("m", {"inputs": {}}, 5)
        assert info.value.error_type == "invalid_request"

    on_loop(openai_adapter, body)
    dead = OpenAIAdapter(ProviderConfig(kind="openai", base_url="http://127.0.0.1:9/v1", api_key="x"))
    refused = on_loop(dead, lambda: achat_error(dead, "x", timeout_s=2))
    assert (refused.error_type, refused.retryable) == ("provider_error", True)


def test_anthropic_achat(anthropic_adapter: AnthropicAdapter) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    request = {
        "messages": [{"role": "system", "content": "Sys."}, {"role": "user", "content": "hello [[cached:3]]"}],
        "max_tokens": 100,
    }

    async def body() -> None:
        result = await anthropic_adapter.achat("claude-haiku-4-5", request, 5)
        assert result == anthropic_adapter.chat("claude-haiku-4-5", request, 5)
        assert result.output == {"content": "echo: hello [[cached:3]]", "finish_reason": "stop"}
        assert (result.usage.input_tokens, result.usage.cached_input_tokens) == (math.ceil(22 / 4), 3)
        called = await anthropic_adapter.achat("c", {**user("[[tool]]"), "tools": tools}, 5)
        assert called.output["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": "{}"}
        assert called.output["finish_reason"] == "tool_calls"
        cut = await anthropic_adapter.achat("c", {**user("words " * 20), "max_tokens": 2}, 5)
        assert cut.output["finish_reason"] == "length"

    on_loop(anthropic_adapter, body)


def test_anthropic_achat_streams_to_on_delta(anthropic_adapter: AnthropicAdapter) -> None:
    request = {**user("a b c d e f [[cache-write:2]]"), "max_tokens": 100}

    async def body() -> None:
        chunks: list[str] = []
        result = await anthropic_adapter.achat("c", request, 5, chunks.append)
        assert "".join(chunks) == result.output["content"] == "echo: a b c d e f [[cache-write:2]]"
        assert len(chunks) > 1
        assert result == anthropic_adapter.chat("c", request, 5)
        assert result.usage.cache_write_tokens == 2
        broken = await achat_error_streamed(anthropic_adapter, "x y z w v u t s [[break:2]]")
        assert (broken.error_type, broken.retryable) == ("provider_error", True)

    on_loop(anthropic_adapter, body)


def test_anthropic_async_errors_are_classified(anthropic_adapter: AnthropicAdapter) -> None:
    async def body() -> None:
        for marker, expected in {**CHAT_ERRORS, "[[fail:529]]": ("provider_error", True)}.items():
            error = await achat_error(anthropic_adapter, marker)
            assert (error.error_type, error.retryable) == expected, marker
        limited = await achat_error(anthropic_adapter, "[[fail:429]] [[retry-after:2]]")
        assert (limited.status_code, limited.retry_after_s) == (429, 2)
        slow = await achat_error(anthropic_adapter, "[[sleep:1500]]", timeout_s=0.3)
        assert (slow.error_type, slow.retryable) == ("timeout", True)
        for refused in (anthropic_adapter.aembed, anthropic_adapter.amoderate, anthropic_adapter.apredict):
            with pytest.raises(ProviderError, match="do not serve"):
                await refused("c", {"input": "x"}, 5)

    on_loop(anthropic_adapter, body)


@pytest.mark.parametrize(
    "config",
    [
        pytest.param(
            {"platform": "bedrock", "region": "us-east-1", "aws_access_key": "x", "aws_secret_key": "y"}, id="bedrock"
        ),
        pytest.param(
            {"platform": "vertex", "region": "europe-west1", "project_id": "p", "access_token": "t"}, id="vertex"
        ),
    ],
)
def test_anthropic_async_on_cloud_platforms(stack: Stack, config: dict[str, str]) -> None:
    base = stack.fake_url + ("/v1" if config["platform"] == "vertex" else "")
    adapter = AnthropicAdapter(ProviderConfig(kind="anthropic", base_url=base, **config))
    request = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi cloud"}]}

    async def body() -> None:
        result = await adapter.achat("anthropic.claude-3-5-haiku-20241022-v1:0", request, 5)
        assert result.output["content"] == "echo: hi cloud"
        assert result.usage.input_tokens == math.ceil(len("Be brief.hi cloud") / 4)
        chunks: list[str] = []
        streamed = await adapter.achat("claude-3-5-haiku@20241022", user("a b c d e f"), 5, chunks.append)
        assert "".join(chunks) == streamed.output["content"] == "echo: a b c d e f"
        assert len(chunks) > 1
        error = await achat_error(adapter, "[[fail:529]]")
        assert error.retryable

    try:
        on_loop(adapter, body)
    finally:
        adapter.close()


def test_openai_async_on_azure(stack: Stack) -> None:
    config = ProviderConfig(
        kind="openai", platform="azure", base_url=stack.fake_url, api_version="2024-10-21", api_key="k"
    )
    adapter = OpenAIAdapter(config)

    async def body() -> None:
        result = await adapter.achat("my-async-deployment", user("hi azure"), 5)
        assert (result.output["content"], result.provider_model) == ("echo: hi azure", "my-async-deployment")
        chunks: list[str] = []
        streamed = await adapter.achat("my-async-deployment", user("a b c d"), 5, chunks.append)
        assert "".join(chunks) == streamed.output["content"] == "echo: a b c d"
        assert len((await adapter.aembed("my-embedding", {"input": ["x"]}, 5)).output["embeddings"][0]) == 64

    on_loop(adapter, body)
    assert "/openai/deployments/my-async-deployment/chat/completions" in stack.fake_stats()["requests"]


def test_500_concurrent_calls_on_one_loop(stack: Stack) -> None:
    # Each call waits 1 s at the fake: one after another they would take over 8 minutes. The bound leaves room
    # for a loaded machine (the SDKs spend milliseconds of CPU a call) and still needs 17 calls at a time.
    openai_side = OpenAIAdapter(ProviderConfig(kind="openai", base_url=f"{stack.fake_url}/v1", api_key="x"))
    anthropic_side = AnthropicAdapter(ProviderConfig(kind="anthropic", base_url=stack.fake_url, api_key="x"))
    chunks: list[str] = []

    def call(i: int) -> Awaitable[Any]:
        adapter: ProviderAdapter = openai_side if i % 2 else anthropic_side
        return adapter.achat("m", user(f"call {i} [[sleep:1000]]"), 60, chunks.append if i % 4 < 2 else None)

    async def body() -> tuple[list[Any], float, int]:
        threads = threading.active_count()
        t0 = time.perf_counter()
        try:
            results = await asyncio.gather(*(call(i) for i in range(500)))
            return results, time.perf_counter() - t0, threading.active_count() - threads
        finally:
            await openai_side.aclose()
            await anthropic_side.aclose()

    try:
        results, elapsed, new_threads = asyncio.run(body())
    finally:
        openai_side.close()
        anthropic_side.close()
    assert [r.output["content"] for r in results] == [f"echo: call {i} [[sleep:1000]]" for i in range(500)]
    assert "".join(chunks).count("echo: call") == 250  # the streamed half went through on_delta
    assert elapsed < 30, elapsed
    # The loop carried the calls, not a thread each; the loop's default executor (at most 32 threads) only
    # resolves host names.
    assert new_threads <= 32, new_threads


def test_async_pool_holds_max_connections(stack: Stack) -> None:
    # 40 calls of 500 ms through 10 connections go in 4 waves: at least 2 s however fast the machine.
    adapter = OpenAIAdapter(
        ProviderConfig(kind="openai", base_url=f"{stack.fake_url}/v1", api_key="x", max_connections=10)
    )

    async def body() -> float:
        t0 = time.perf_counter()
        await asyncio.gather(*(adapter.achat("m", user(f"pooled {i} [[sleep:500]]"), 30) for i in range(40)))
        return time.perf_counter() - t0

    try:
        assert on_loop(adapter, body) >= 2.0
    finally:
        adapter.close()


def test_loop_clients_makes_one_client_per_loop() -> None:
    closed: list[object] = []

    async def close(client: object) -> None:
        closed.append(client)

    clients = LoopClients(object, close)

    async def body() -> object:
        client = clients.get()
        assert clients.get() is client
        await asyncio.sleep(0)
        assert clients.get() is client
        return client

    first, second = asyncio.run(body()), asyncio.run(body())
    assert first is not second  # a new loop, a new client
    with pytest.raises(RuntimeError):
        clients.get()  # outside a loop there is no client to give

    async def close_one() -> object:
        client = clients.get()
        await clients.aclose()
        assert clients.get() is not client
        return client

    assert closed == [asyncio.run(close_one())]


def test_model_servers_apredict(stack: Stack) -> None:
    rows = json.loads((MODELS_DIR / "risk_classifier.reference.json").read_text())["inputs"][:5]
    request = {"inputs": {"features": rows}}
    kserve = KServeAdapter(ProviderConfig(kind="kserve", base_url=stack.kserve_url))
    tfserving = TFServingAdapter(ProviderConfig(kind="tfserving", base_url=stack.tfserving_url))
    for adapter in (kserve, tfserving):

        async def body(adapter: ProviderAdapter = adapter) -> None:
            result = await adapter.apredict("risk_classifier", request, 5)
            assert result.output == adapter.predict("risk_classifier", request, 5).output
            assert result.usage.predictions == 5
            with pytest.raises(ProviderError) as info:
                await adapter.apredict("no_such_model", request, 5)
            assert (info.value.status_code, info.value.retryable) == (404, False)

        try:
            on_loop(adapter, body)
        finally:
            adapter.close()


def test_onnx_apredict_calls_are_merged_into_batches() -> None:
    adapter = OnnxAdapter(ProviderConfig(kind="onnx", max_batch_size=32, max_batch_wait_ms=20))
    path = str(MODELS_DIR / "risk_classifier.onnx")
    rows = json.loads((MODELS_DIR / "risk_classifier.reference.json").read_text())["inputs"]

    async def body() -> list[Any]:
        return await asyncio.gather(
            *(adapter.apredict(path, {"inputs": {"features": [rows[i % len(rows)]]}}, 5) for i in range(64))
        )

    try:
        results = on_loop(adapter, body)
        assert max(r.output["batch_size"] for r in results) > 6  # more than the loop's default executor could hold
        for i, result in enumerate(results):
            alone = adapter.predict(path, {"inputs": {"features": [rows[i % len(rows)]]}}, 5)
            assert result.output["outputs"]["label"] == alone.output["outputs"]["label"]
    finally:
        adapter.close()
