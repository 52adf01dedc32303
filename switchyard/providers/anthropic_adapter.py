"""`anthropic` kind: Anthropic's Messages API through the official SDK, mapped to and from OpenAI's shapes
(anthropic_mapping.py); on Anthropic itself, Amazon Bedrock or Google Vertex AI (`platform`), with the SDK's
client for each, sync and async."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anthropic
import httpx2
from anthropic._vendor.httpx_aiohttp import AiohttpTransport as AnthropicAiohttpTransport

from switchyard.core.config import ProviderConfig
from switchyard.core.errors import ProviderError
from switchyard.providers.aio_pool import checked_transport
from switchyard.providers.anthropic_mapping import StreamedMessage, message_result, to_anthropic
from switchyard.providers.base import CallResult, OnDelta, unsupported
from switchyard.providers.errors import connection_error, status_error, timeout_or_refused
from switchyard.providers.loop_clients import LoopClients
from switchyard.providers.shards import ClientShards, pool_limits

# The SDK's clients for Anthropic's own API, Amazon Bedrock and Google Vertex AI: one Messages API.
AnthropicClient = anthropic.Anthropic | anthropic.AnthropicBedrock | anthropic.AnthropicVertex
AsyncAnthropicClient = anthropic.AsyncAnthropic | anthropic.AsyncAnthropicBedrock | anthropic.AsyncAnthropicVertex


@contextmanager
def _translated_errors() -> Iterator[None]:
    try:
        yield
    except anthropic.APITimeoutError as exc:
        raise timeout_or_refused(exc) from exc
    except anthropic.APIConnectionError as exc:
        raise connection_error(str(exc)) from exc
    except anthropic.APIStatusError as exc:
        raise status_error(exc.status_code, exc.message, exc.response.headers) from exc
    except anthropic.AnthropicError as exc:
        raise ProviderError("provider_error", str(exc), retryable=False) from exc
    except httpx2.TransportError as exc:  # a stream that breaks while it is read
        raise connection_error(f"{type(exc).__name__}: {exc}") from exc


def _platform_args(config: ProviderConfig) -> dict[str, Any]:
    """The arguments of the platform's client (sync or async alike), but its HTTP client."""
    common: dict[str, Any] = {"base_url": config.base_url, "max_retries": 0, "timeout": config.timeout_s or 60.0}
    if config.platform == "bedrock":
        # Credentials from the config, else the AWS default chain (environment, profile, role).
        return {
            "aws_region": config.region,
            "aws_access_key": config.aws_access_key,
            "aws_secret_key": config.aws_secret_key,
            "aws_session_token": config.aws_session_token,
            **common,
        }
    if config.platform == "vertex":
        # A token from the config, else Google's application default credentials.
        return {
            "region": config.region or "",
            "project_id": config.project_id or "",
            "access_token": config.access_token,
            **common,
        }
    return {"api_key": config.api_key or "none", **common}


class AnthropicAdapter:
    """Calls through the official SDK with its own retries off: the gateway owns retries."""

    def __init__(self, config: ProviderConfig) -> None:
        args = _platform_args(config)
        per_shard = max(1, config.max_connections // config.client_shards)

        def make() -> AnthropicClient:
            http_client = anthropic.DefaultHttpxClient(limits=pool_limits(per_shard))
            if config.platform == "bedrock":
                return anthropic.AnthropicBedrock(**args, http_client=http_client)
            if config.platform == "vertex":
                return anthropic.AnthropicVertex(**args, http_client=http_client)
            return anthropic.Anthropic(**args, http_client=http_client)

        def make_async() -> AsyncAnthropicClient:
            # One pool per loop, of the account's whole size: coroutines share it without contention.
            # aiohttp under the SDK: a third less CPU per call than its default httpx transport.
            limits = pool_limits(config.max_connections)
            http_client = anthropic.DefaultAioHttpClient(
                limits=limits, transport=checked_transport(AnthropicAiohttpTransport, limits)
            )
            if config.platform == "bedrock":
                return anthropic.AsyncAnthropicBedrock(**args, http_client=http_client)
            if config.platform == "vertex":
                return anthropic.AsyncAnthropicVertex(**args, http_client=http_client)
            return anthropic.AsyncAnthropic(**args, http_client=http_client)

        self._clients = ClientShards(make, config.client_shards)
        self._async_clients = LoopClients(make_async, lambda client: client.close())

    def chat(
        self, model: str, request: dict[str, Any], timeout_s: float, on_delta: OnDelta | None = None
    ) -> CallResult:
        params = to_anthropic(request)
        if on_delta is None:
            with _translated_errors():
                message = self._clients.get().messages.create(model=model, timeout=timeout_s, **params)
            return message_result(message, model)
        answer = StreamedMessage(model, on_delta)
        with _translated_errors():
            stream = self._clients.get().messages.create(model=model, timeout=timeout_s, stream=True, **params)
            with stream:
                for event in stream:
                    answer.add(event)
        return answer.result()

    async def achat(
        self, model: str, request: dict[str, Any], timeout_s: float, on_delta: OnDelta | None = None
    ) -> CallResult:
        """`chat` on the running event loop."""
        params = to_anthropic(request)
        if on_delta is None:
            with _translated_errors():
                message = await self._async_clients.get().messages.create(model=model, timeout=timeout_s, **params)
            return message_result(message, model)
        answer = StreamedMessage(model, on_delta)
        with _translated_errors():
            stream = await self._async_clients.get().messages.create(
                model=model, timeout=timeout_s, stream=True, **params
            )
            async with stream:
                async for event in stream:
                    answer.add(event)
        return answer.result()

    def embed(self, model: str, request: dict[str, Any], timeout_s: float) -> CallResult:
        raise unsupported("anthropic", "embed")

    def moderate(self, model: str, request: dict[str, Any], timeout_s: float) -> CallResult:
        raise unsupported("anthropic", "moderate")

    def predict(self, model: str, request: dict[str, Any], timeout_s: float) -> CallResult:
        raise unsupported("anthropic", "predict")

    async def aembed(self, model: str, request: dict[str, Any], timeout_s: float) -> CallResult:
        """Refused, as `embed` is."""
        raise unsupported("anthropic", "embed")

    async def amoderate(self, model: str, request: dict[str, Any], timeout_s: float) -> CallResult:
        """Refused, as `moderate` is."""
        raise unsupported("anthropic", "moderate")

    async def apredict(self, model: str, request: dict[str, Any], timeout_s: float) -> CallResult:
        """Refused, as `predict` is."""
        raise unsupported("anthropic", "predict")

    def close(self) -> None:
        self._clients.close()

    async def aclose(self) -> None:
        """Close the running loop's async client."""
        await self._async_clients.aclose()
