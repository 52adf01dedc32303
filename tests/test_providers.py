"""The SDK adapters against the fake provider served over HTTP, and pricing."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest

from switchyard.core.config import Price, ProviderConfig
from switchyard.core.errors import ProviderError
from switchyard.providers.anthropic_adapter import AnthropicAdapter
from switchyard.providers.anthropic_mapping import to_anthropic
from switchyard.providers.base import Usage
from switchyard.providers.openai_adapter import OpenAIAdapter
from switchyard.providers.pricing import cost_usd
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


def test_openai_chat(openai_adapter: OpenAIAdapter) -> None:
    result = openai_adapter.chat("gpt-4o-mini", {"messages": [{"role": "user", "content": "hi [[cached:1]]"}]}, 5)
    assert result.output == {"content": "echo: hi [[cached:1]]", "finish_reason": "stop"}
    assert result.usage == Usage(input_tokens=math.ceil(15 / 4), output_tokens=math.ceil(21 / 4), cached_input_tokens=1)
    assert result.provider_model == "gpt-4o-mini"


def test_openai_tool_calls_and_length(openai_adapter: OpenAIAdapter) -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    result = openai_adapter.chat("m", {"messages": [{"role": "user", "content": "[[tool]]"}], "tools": tools}, 5)
    assert result.output["finish_reason"] == "tool_calls"
    assert result.output["tool_calls"][0]["function"]["name"] == "lookup"
    cut = openai_adapter.chat(
        "m", {"messages": [{"role": "user", "content": "a long reply " * 10}], "max_tokens": 2}, 5
    )
    assert cut.output["finish_reason"] == "length"


def test_openai_embed_decodes_base64(openai_adapter: OpenAIAdapter) -> None:
    result = openai_adapter.embed("e", {"input": ["x", "y"], "dimensions": 16}, 5)
    vectors = result.output["embeddings"]
    assert [len(v) for v in vectors] == [16, 16]
    assert sum(v * v for v in vectors[0]) == pytest.approx(1.0, abs=1e-5)


def test_openai_errors_are_classified(openai_adapter: OpenAIAdapter) -> None:
    cases = {
        "[[fail:503]]": ("provider_error", True),
        "[[fail:429]]": ("rate_limited", True),
        "[[fail:400]]": ("invalid_request", False),
        "[[fail:401]]": ("provider_error", False),
        "[[fail:408]]": ("timeout", True),
    }
    for marker, (error_type, retryable) in cases.items():
        with pytest.raises(ProviderError) as info:
            openai_adapter.chat("m", {"messages": [{"role": "user", "content": marker}]}, 5)
        assert (info.value.error_type, info.value.retryable) == (error_type, retryable), marker
    with pytest.raises(ProviderError) as info:
        openai_adapter.chat("m", {"messages": [{"role": "user", "content": "[[fail:429]] [[retry-after:3]]"}]}, 5)
    assert info.value.retry_after_s == 3


def test_openai_timeout_and_connection_errors(stack: Stack, openai_adapter: OpenAIAdapter) -> None:
    with pytest.raises(ProviderError) as info:
        openai_adapter.chat("m", {"messages": [{"role": "user", "content": "[[sleep:1500]]"}]}, 0.3)
    assert info.value.error_type == "timeout"
    assert info.value.retryable
    dead = OpenAIAdapter(ProviderConfig(kind="openai", base_url="http://127.0.0.1:9/v1", api_key="x"))
    with pytest.raises(ProviderError) as info:
        dead.chat("m", {"messages": [{"role": "user", "content": "x"}]}, 2)
    assert info.value.retryable
    dead.close()


def test_anthropic_chat_maps_system_stop_reason_and_usage(anthropic_adapter: AnthropicAdapter) -> None:
    request = {
        "messages": [
            {"role": "system", "content": "Sys."},
            {"role": "user", "content": [{"type": "text", "text": "hello [[cached:3]]"}]},
        ],
        "max_tokens": 100,
    }
    result = anthropic_adapter.chat("claude-haiku-4-5", request, 5)
    assert result.output == {"content": "echo: hello [[cached:3]]", "finish_reason": "stop"}
    prompt = math.ceil((len("Sys.") + len("hello [[cached:3]]")) / 4)
    assert result.usage.input_tokens == prompt  # cache reads counted back into the whole prompt
    assert result.usage.cached_input_tokens == 3
    truncated = anthropic_adapter.chat(
        "c", {"messages": [{"role": "user", "content": "words " * 20}], "max_tokens": 2}, 5
    )
    assert truncated.output["finish_reason"] == "length"


def test_anthropic_tool_use_maps_to_openai_tool_calls(anthropic_adapter: AnthropicAdapter) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    result = anthropic_adapter.chat("c", {"messages": [{"role": "user", "content": "[[tool]]"}], "tools": tools}, 5)
    assert result.output["finish_reason"] == "tool_calls"
    call = result.output["tool_calls"][0]
    assert call["type"] == "function"
    assert call["function"] == {"name": "get_weather", "arguments": "{}"}


def test_anthropic_errors_are_classified(anthropic_adapter: AnthropicAdapter) -> None:
    with pytest.raises(ProviderError) as info:
        anthropic_adapter.chat("c", {"messages": [{"role": "user", "content": "[[fail:529]]"}]}, 5)
    assert info.value.retryable
    with pytest.raises(ProviderError) as info:
        anthropic_adapter.chat("c", {"messages": [{"role": "user", "content": "[[fail:400]]"}]}, 5)
    assert not info.value.retryable


def test_to_anthropic_request_mapping() -> None:
    params = to_anthropic(
        {
            "messages": [
                {"role": "system", "content": "A"},
                {"role": "developer", "content": "B"},
                {"role": "user", "content": "q"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "42"},
            ],
            "temperature": 1.5,
            "stop": "END",
            "tool_choice": "required",
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        }
    )
    assert params["system"] == "A\n\nB"
    assert params["max_tokens"] == 1024
    assert params["temperature"] == 1.0
    assert params["stop_sequences"] == ["END"]
    assert params["tool_choice"] == {"type": "any"}
    assert params["tools"] == [{"name": "f", "description": "", "input_schema": {"type": "object"}}]
    assert params["messages"][1] == {
        "role": "assistant",
        "content": [{"type": "tool_use", "id": "c1", "name": "f", "input": {"x": 1}}],
    }
    assert params["messages"][2]["content"][0]["type"] == "tool_result"


def test_cost_prices_cached_and_cache_write_tokens_separately() -> None:
    price = Price(input=3.0, output=15.0, cached_input=0.3, cache_write=3.75)
    usage = Usage(
        input_tokens=1_000_000, output_tokens=100_000, cached_input_tokens=600_000, cache_write_tokens=100_000
    )
    assert cost_usd(usage, price) == pytest.approx(300_000 * 3e-6 + 600_000 * 0.3e-6 + 100_000 * 3.75e-6 + 1.5)
    # Without a cached price, cached tokens pay the input price.
    assert cost_usd(Usage(input_tokens=10, cached_input_tokens=10), Price(input=1.0)) == pytest.approx(10e-6)


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
def test_anthropic_on_cloud_platforms(stack: Stack, config: dict[str, str]) -> None:
    # The SDK's own Bedrock and Vertex clients, against the fake's Bedrock and Vertex routes.
    base = stack.fake_url + ("/v1" if config["platform"] == "vertex" else "")
    adapter = AnthropicAdapter(ProviderConfig(kind="anthropic", base_url=base, **config))  # type: ignore[arg-type]
    try:
        request = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi cloud"}]}
        result = adapter.chat("anthropic.claude-3-5-haiku-20241022-v1:0", request, 5)
        assert result.output["content"] == "echo: hi cloud"
        assert result.usage.input_tokens == math.ceil(len("Be brief.hi cloud") / 4)
        chunks: list[str] = []
        streamed = adapter.chat(
            "claude-3-5-haiku@20241022", {"messages": [{"role": "user", "content": "a b c d e f"}]}, 5, chunks.append
        )
        assert "".join(chunks) == streamed.output["content"] == "echo: a b c d e f"
        assert len(chunks) > 1
        with pytest.raises(ProviderError) as info:
            adapter.chat("m", {"messages": [{"role": "user", "content": "[[fail:529]]"}]}, 5)
        assert info.value.retryable
    finally:
        adapter.close()


def test_openai_on_azure(stack: Stack) -> None:
    config = ProviderConfig(
        kind="openai", platform="azure", base_url=stack.fake_url, api_version="2024-10-21", api_key="k"
    )
    adapter = OpenAIAdapter(config)
    try:
        result = adapter.chat("my-gpt-deployment", {"messages": [{"role": "user", "content": "hi azure"}]}, 5)
        assert result.output["content"] == "echo: hi azure"
        assert result.provider_model == "my-gpt-deployment"
        assert len(adapter.embed("my-embedding", {"input": ["x"]}, 5).output["embeddings"][0]) == 64
    finally:
        adapter.close()
    before = stack.fake_stats()["requests"]
    assert "/openai/deployments/my-gpt-deployment/chat/completions" in before


def test_platforms_need_their_settings() -> None:
    from switchyard.core.config import AppConfig

    with pytest.raises(ValueError, match="api_version"):
        AppConfig.model_validate(
            {"providers": {"az": {"kind": "openai", "platform": "azure", "base_url": "https://x"}}}
        )
    with pytest.raises(ValueError, match="region"):
        AppConfig.model_validate({"providers": {"br": {"kind": "anthropic", "platform": "bedrock"}}})
    with pytest.raises(ValueError, match="cannot run on"):
        AppConfig.model_validate({"providers": {"v": {"kind": "openai", "platform": "vertex"}}})


def test_catalog_prices_deployments_without_their_own() -> None:
    from switchyard.core.config import AppConfig, catalog, resolve_catalog

    config = resolve_catalog(
        AppConfig.model_validate(
            {
                "providers": {
                    "o": {"kind": "openai"},
                    "b": {"kind": "anthropic", "platform": "bedrock", "region": "r"},
                },
                "models": {
                    "m": {
                        "type": "chat",
                        "deployments": [
                            {"provider": "o", "model": "gpt-4o-mini-2024-07-18"},
                            {"provider": "b", "model": "us.anthropic.claude-haiku-4-5-20251001-v1:0"},
                            {"provider": "o", "model": "gpt-4o", "price": {"input": 9.0}},
                            {"provider": "o", "model": "my-finetune"},
                        ],
                    }
                },
            }
        )
    )
    mini, haiku, own, unknown = config.models["m"].deployments
    assert (mini.price.input, mini.price.cached_input, mini.price.output) == (0.15, 0.075, 0.60)
    assert mini.max_input_tokens == 128000
    assert (haiku.price.cache_write, haiku.price.cached_input) == (1.25, 0.10)
    assert own.price.input == 9.0  # a deployment's own price wins
    assert own.max_input_tokens == 128000
    assert unknown.price.input == 0.0
    assert unknown.max_input_tokens is None
    assert catalog()[0] >= "2025-01-01"


def test_json_mode_maps_to_anthropic() -> None:
    messages = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "x"}]
    plain = to_anthropic({"messages": messages, "response_format": {"type": "json_object"}})
    assert plain["system"] == "Be terse.\n\nRespond with a single JSON object and nothing else."
    assert "tools" not in plain
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    forced = to_anthropic(
        {
            "messages": messages,
            "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": schema}},
        }
    )
    assert forced["tools"][-1]["input_schema"] == schema
    assert forced["tool_choice"] == {"type": "tool", "name": forced["tools"][-1]["name"]}
