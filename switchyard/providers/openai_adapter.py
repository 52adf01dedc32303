"""`openai` kind: OpenAI and every OpenAI-compatible server (vLLM, OpenRouter, Gemini's OpenAI endpoint, the
fake), and Azure OpenAI (`platform: azure`) through the SDK's Azure client."""

from __future__ import annotations

import base64
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx2
import openai
from openai._vendor.httpx_aiohttp import AiohttpTransport as OpenAIAiohttpTransport
from openai.types.chat import ChatCompletion

from switchyard.core.config import ProviderConfig
from switchyard.core.errors import ProviderError
from switchyard.providers.aio_pool import checked_transport
from switchyard.providers.base import CallResult, OnDelta, Usage, unsupported
from switchyard.providers.errors import connection_error, status_error, timeout_or_refused
from switchyard.providers.loop_clients import LoopClients
from switchyard.providers.shards import ClientShards, pool_limits

# Fields of a chat input that we consume ourselves rather than forward.
_OWN_FIELDS = frozenset({"messages", "stream", "stream_options"})


@contextmanager
def _translated_errors() -> Iterator[None]:
    """Turn the SDK's exceptions into ProviderError; the router decides what happens next."""
    try:
        yield
    except openai.APITimeoutError as exc:
        raise timeout_or_refused(exc) from exc
    except openai.APIConnectionError as exc:
        raise connection_error(str(exc)) from exc
    except openai.APIStatusError as exc:
        raise status_error(exc.status_code, exc.message, exc.response.headers, exc.code) from exc
    except openai.OpenAIError as exc:
        raise ProviderError("provider_error", str(exc), retryable=False) from exc
    except httpx2.TransportError as exc:  # a stream that breaks while it is read
        raise connection_error(f"{type(exc).__name__}: {exc}") from exc


def _client_args(config: ProviderConfig) -> dict[str, Any]:
    """What the sync and the async client are built with, but their HTTP client."""
    args: dict[str, Any] = {"api_key": config.api_key or "none", "max_retries": 0, "timeout": config.timeout_s or 60.0}
    if config.platform == "azure":
        # Deployments name Azure deployments as their `model`; the SDK puts them in the path.
        return {**args, "azure_endpoint": config.base_url or "", "api_version": config.api_version}
    return {**args, "base_url": config.base_url}


class OpenAIAdapter:
    """Calls through the official SDK with its own retries off: the gateway owns retries."""

    def __init__(self, config: ProviderConfig) -> None:
        args = _client_args(config)
        per_shard = max(1, config.max_connections // config.client_shards)

        def make() -> openai.OpenAI:
            http_client = openai.DefaultHttpxClient(limits=pool_limits(per_shard))
            if config.platform == "azure":
                return openai.AzureOpenAI(**args, http_client=http_client)
            return openai.OpenAI(**args, http_client=http_client)

        def make_async() -> openai.AsyncOpenAI:
            # One pool per loop, of the account's whole size: coroutines share it without contention.
            # aiohttp under the SDK: a third less CPU per call than its default httpx transport.
            limits = pool_limits(config.max_connections)
            http_client = openai.DefaultAioHttpClient(
                limits=limits, transport=checked_transport(OpenAIAiohttpTransport, limits)
            )
            if config.platform == "azure":
                return openai.AsyncAzureOpenAI(**args, http_client=http_client)
            return openai.AsyncOpenAI(**args, http_client=http_client)

        self._clients = ClientShards(make, config.client_shards)
        self._async_clients = LoopClients(make_async, lambda client: client.close())

    def chat(
        self, model: str, request: dict[str, Any], timeout_s: float, on_delta: OnDelta | None = None
    ) -> CallResult:
        args = _chat_args(model, request, timeout_s)
        if on_delta is None:
            with _translated_errors():
                completion = self._clients.get().chat.completions.create(**args)
            return _chat_result(completion, model)
        answer = _StreamedChat(model, on_delta)
        with _translated_errors():
            stream = self._clients.get().chat.completions.create(**args, **_STREAM_ARGS)
            with stream:
                for chunk in stream:
                    answer.add(chunk)
        return answer.result()

    async def achat(
        self, model: str, request: dict[str, Any], timeout_s: float, on_delta: OnDelta | None = None
    ) -> CallResult:
        """`chat` on the running event loop."""
        args = _chat_args(model, request, timeout_s)
        if on_delta is None:
            body = {k: v for k, v in args.items() if k != "timeout"}
            with _translated_errors():
                # The SDK's own client, its documented `post`: the request is already plain JSON (the task's
                # checked input), so the typed-params transform `create` runs first — a tenth of a worker's CPU
                # per task — has nothing to do. The answer is parsed into the SDK's ChatCompletion all the same.
                completion = await self._async_clients.get().post(
                    "/chat/completions", cast_to=ChatCompletion, body=body, options={"timeout": timeout_s}
                )
            return _chat_result(completion, model)
        answer = _StreamedChat(model, on_delta)
        with _translated_errors():
            stream = await self._async_clients.get().chat.completions.create(**args, **_STREAM_ARGS)
            async with stream:
                async for chunk in stream:
                    answer.add(chunk)
        return answer.result()

    def embed(self, model: str, request: dict[str, Any], timeout_s: float) -> CallResult:
        with _translated_errors():
            response = self._clients.get().embeddings.create(**_embed_args(model, request, timeout_s))
        return _embed_result(response, model)

    async def aembed(self, model: str, request: dict[str, Any], timeout_s: float) -> CallResult:
        """`embed` on the running event loop."""
        with _translated_errors():
            response = await self._async_clients.get().embeddings.create(**_embed_args(model, request, timeout_s))
        return _embed_result(response, model)

    def moderate(self, model: str, request: dict[str, Any], timeout_s: float) -> CallResult:
        with _translated_errors():
            response = self._clients.get().moderations.create(model=model, input=request["input"], timeout=timeout_s)
        return _moderation_result(response, model)

    async def amoderate(self, model: str, request: dict[str, Any], timeout_s: float) -> CallResult:
        """`moderate` on the running event loop."""
        with _translated_errors():
            response = await self._async_clients.get().moderations.create(
                model=model, input=request["input"], timeout=timeout_s
            )
        return _moderation_result(response, model)

    def predict(self, model: str, request: dict[str, Any], timeout_s: float) -> CallResult:
        raise unsupported("openai", "predict")

    async def apredict(self, model: str, request: dict[str, Any], timeout_s: float) -> CallResult:
        """Refused, as `predict` is."""
        raise unsupported("openai", "predict")

    def close(self) -> None:
        self._clients.close()

    async def aclose(self) -> None:
        """Close the running loop's async client."""
        await self._async_clients.aclose()


# --- mapping, shared by the sync and the async calls ----------------------------------------------------------

# A streamed chat asks for the usage too (in a last chunk without choices).
_STREAM_ARGS: dict[str, Any] = {"stream": True, "stream_options": {"include_usage": True}}


def _chat_args(model: str, request: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    extra = {k: v for k, v in request.items() if k not in _OWN_FIELDS and v is not None}
    return {"model": model, "messages": request["messages"], "timeout": timeout_s, **extra}


def _chat_result(completion: Any, model: str) -> CallResult:
    choice = completion.choices[0]
    output: dict[str, Any] = {
        "content": choice.message.content,
        "finish_reason": choice.finish_reason,
    }
    if choice.message.tool_calls:
        output["tool_calls"] = [call.model_dump(mode="json") for call in choice.message.tool_calls]
    usage = Usage()
    if completion.usage is not None:
        usage = _usage(completion.usage)
    return CallResult(output=output, usage=usage, provider_model=completion.model or model)


class _StreamedChat:
    """A streamed chat's answer, put together chunk by chunk; each text chunk also goes to `on_delta`."""

    def __init__(self, model: str, on_delta: OnDelta) -> None:
        self._on_delta = on_delta
        self._text: list[str] = []
        self._calls: dict[int, dict[str, Any]] = {}
        self._finish_reason: str | None = None
        self._usage = Usage()
        self._model = model

    def add(self, chunk: Any) -> None:
        self._model = chunk.model or self._model
        if chunk.usage is not None:
            self._usage = _usage(chunk.usage)
        for choice in chunk.choices:
            delta = choice.delta
            if delta.content:
                self._text.append(delta.content)
                self._on_delta(delta.content)
            for call in delta.tool_calls or ():
                _merge_tool_call(self._calls, call.model_dump(mode="json", exclude_none=True))
            if choice.finish_reason:
                self._finish_reason = choice.finish_reason

    def result(self) -> CallResult:
        if self._finish_reason is None:
            # The stream ended without saying why: the server hung up mid-answer.
            raise connection_error("the stream ended before the answer was complete")
        calls = self._calls
        output: dict[str, Any] = {
            "content": "".join(self._text) if self._text or not calls else None,
            "finish_reason": self._finish_reason,
        }
        if calls:
            output["tool_calls"] = [calls[i] for i in sorted(calls)]
        return CallResult(output=output, usage=self._usage, provider_model=self._model)


def _embed_args(model: str, request: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    # base64 on the wire is a quarter of the size of JSON floats; _embed_result decodes it.
    args: dict[str, Any] = {
        "model": model,
        "input": request["input"],
        "encoding_format": "base64",
        "timeout": timeout_s,
    }
    if request.get("dimensions"):
        args["dimensions"] = request["dimensions"]
    return args


def _embed_result(response: Any, model: str) -> CallResult:
    vectors = [_decode_embedding(item.embedding) for item in sorted(response.data, key=lambda d: d.index)]
    tokens = response.usage.prompt_tokens if response.usage else 0
    return CallResult(
        output={"embeddings": vectors},
        usage=Usage(input_tokens=tokens),
        provider_model=response.model or model,
    )


def _moderation_result(response: Any, model: str) -> CallResult:
    results = [r.model_dump(mode="json", by_alias=True) for r in response.results]
    output = {
        "flagged": any(r.flagged for r in response.results),
        "categories": results[0]["categories"] if results else {},
        "category_scores": results[0]["category_scores"] if results else {},
        "results": results,
    }
    return CallResult(output=output, provider_model=response.model or model)


def _usage(raw: Any) -> Usage:
    details = raw.prompt_tokens_details
    return Usage(
        input_tokens=raw.prompt_tokens,
        output_tokens=raw.completion_tokens,
        cached_input_tokens=(details.cached_tokens or 0) if details else 0,
    )


def _merge_tool_call(calls: dict[int, dict[str, Any]], part: dict[str, Any]) -> None:
    """Streamed tool calls come in pieces keyed by index: the id and name once, the arguments in fragments."""
    call = calls.setdefault(
        part.get("index", 0), {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
    )
    if part.get("id"):
        call["id"] = part["id"]
    function = part.get("function") or {}
    if function.get("name"):
        call["function"]["name"] = function["name"]
    call["function"]["arguments"] += function.get("arguments") or ""


def _decode_embedding(value: list[float] | str) -> list[float]:
    if isinstance(value, str):
        raw = base64.b64decode(value)
        return list(struct.unpack(f"<{len(raw) // 4}f", raw))
    return list(value)
