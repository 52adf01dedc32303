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

from switchyard.core.config import ProviderConfig
from switchyard.core.errors import ProviderError
from switchyard.providers.base import CallResult, OnDelta, Usage, unsupported
from switchyard.providers.errors import connection_error, status_error, timeout_error
from switchyard.providers.shards import ClientShards

# Fields of a chat input that we consume ourselves rather than forward.
_OWN_FIELDS = frozenset({"messages", "stream", "stream_options"})


@contextmanager
def _translated_errors() -> Iterator[None]:
    """Turn the SDK's exceptions into ProviderError; the router decides what happens next."""
    try:
        yield
    except openai.APITimeoutError as exc:
        raise timeout_error(str(exc)) from exc
    except openai.APIConnectionError as exc:
        raise connection_error(str(exc)) from exc
    except openai.APIStatusError as exc:
        raise status_error(exc.status_code, exc.message, exc.response.headers, exc.code) from exc
    except openai.OpenAIError as exc:
        raise ProviderError("provider_error", str(exc), retryable=False) from exc
    except httpx2.TransportError as exc:  # a stream that breaks while it is read
        raise connection_error(f"{type(exc).__name__}: {exc}") from exc


class OpenAIAdapter:
    """Calls through the official SDK with its own retries off: the gateway owns retries."""

    def __init__(self, config: ProviderConfig) -> None:
        per_shard = max(1, config.max_connections // config.client_shards)

        def make() -> openai.OpenAI:
            http_client = openai.DefaultHttpxClient(
                limits=httpx2.Limits(max_connections=per_shard, max_keepalive_connections=per_shard)
            )
            timeout = config.timeout_s or 60.0
            if config.platform == "azure":
                # Deployments name Azure deployments as their `model`; the SDK puts them in the path.
                return openai.AzureOpenAI(
                    azure_endpoint=config.base_url or "",
                    api_version=config.api_version,
                    api_key=config.api_key or "none",
                    max_retries=0,
                    timeout=timeout,
                    http_client=http_client,
                )
            return openai.OpenAI(
                api_key=config.api_key or "none",
                base_url=config.base_url,
                max_retries=0,
                timeout=timeout,
                http_client=http_client,
            )

        self._clients = ClientShards(make, config.client_shards)

    def chat(
        self, model: str, request: dict[str, Any], timeout_s: float, on_delta: OnDelta | None = None
    ) -> CallResult:
        extra = {k: v for k, v in request.items() if k not in _OWN_FIELDS and v is not None}
        if on_delta is not None:
            return self._chat_streamed(model, request["messages"], extra, timeout_s, on_delta)
        with _translated_errors():
            completion = self._clients.get().chat.completions.create(
                model=model, messages=request["messages"], timeout=timeout_s, **extra
            )
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

    def _chat_streamed(
        self, model: str, messages: Any, extra: dict[str, Any], timeout_s: float, on_delta: OnDelta
    ) -> CallResult:
        text: list[str] = []
        calls: dict[int, dict[str, Any]] = {}
        finish_reason: str | None = None
        usage = Usage()
        provider_model = model
        with _translated_errors():
            stream = self._clients.get().chat.completions.create(
                model=model,
                messages=messages,
                stream=True,
                stream_options={"include_usage": True},
                timeout=timeout_s,
                **extra,
            )
            with stream:
                for chunk in stream:
                    provider_model = chunk.model or provider_model
                    if chunk.usage is not None:
                        usage = _usage(chunk.usage)
                    for choice in chunk.choices:
                        delta = choice.delta
                        if delta.content:
                            text.append(delta.content)
                            on_delta(delta.content)
                        for call in delta.tool_calls or ():
                            _merge_tool_call(calls, call.model_dump(mode="json", exclude_none=True))
                        if choice.finish_reason:
                            finish_reason = choice.finish_reason
        if finish_reason is None:
            # The stream ended without saying why: the server hung up mid-answer.
            raise connection_error("the stream ended before the answer was complete")
        output: dict[str, Any] = {
            "content": "".join(text) if text or not calls else None,
            "finish_reason": finish_reason,
        }
        if calls:
            output["tool_calls"] = [calls[i] for i in sorted(calls)]
        return CallResult(output=output, usage=usage, provider_model=provider_model)

    def embed(self, model: str, request: dict[str, Any], timeout_s: float) -> CallResult:
        texts = request["input"]
        extra: dict[str, Any] = {}
        if request.get("dimensions"):
            extra["dimensions"] = request["dimensions"]
        with _translated_errors():
            # base64 on the wire is a quarter of the size of JSON floats; we decode it here.
            response = self._clients.get().embeddings.create(
                model=model, input=texts, encoding_format="base64", timeout=timeout_s, **extra
            )
        vectors = [_decode_embedding(item.embedding) for item in sorted(response.data, key=lambda d: d.index)]
        tokens = response.usage.prompt_tokens if response.usage else 0
        return CallResult(
            output={"embeddings": vectors},
            usage=Usage(input_tokens=tokens),
            provider_model=response.model or model,
        )

    def moderate(self, model: str, request: dict[str, Any], timeout_s: float) -> CallResult:
        with _translated_errors():
            response = self._clients.get().moderations.create(model=model, input=request["input"], timeout=timeout_s)
        results = [r.model_dump(mode="json", by_alias=True) for r in response.results]
        output = {
            "flagged": any(r.flagged for r in response.results),
            "categories": results[0]["categories"] if results else {},
            "category_scores": results[0]["category_scores"] if results else {},
            "results": results,
        }
        return CallResult(output=output, provider_model=response.model or model)

    def predict(self, model: str, request: dict[str, Any], timeout_s: float) -> CallResult:
        raise unsupported("openai", "predict")

    def close(self) -> None:
        self._clients.close()


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
