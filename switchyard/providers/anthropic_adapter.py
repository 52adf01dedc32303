"""`anthropic` kind: Anthropic's Messages API through the official SDK, mapped to and from OpenAI's shapes;
on Anthropic itself, Amazon Bedrock or Google Vertex AI (`platform`), with the SDK's client for each."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anthropic
import httpx2

from switchyard.core.config import ProviderConfig
from switchyard.core.errors import ProviderError
from switchyard.providers.base import CallResult, OnDelta, Usage, unsupported
from switchyard.providers.errors import connection_error, status_error, timeout_error
from switchyard.providers.shards import ClientShards

DEFAULT_MAX_TOKENS = 1024

# The SDK's clients for Anthropic's own API, Amazon Bedrock and Google Vertex AI: one Messages API.
AnthropicClient = anthropic.Anthropic | anthropic.AnthropicBedrock | anthropic.AnthropicVertex

STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


@contextmanager
def _translated_errors() -> Iterator[None]:
    try:
        yield
    except anthropic.APITimeoutError as exc:
        raise timeout_error(str(exc)) from exc
    except anthropic.APIConnectionError as exc:
        raise connection_error(str(exc)) from exc
    except anthropic.APIStatusError as exc:
        raise status_error(exc.status_code, exc.message, exc.response.headers) from exc
    except anthropic.AnthropicError as exc:
        raise ProviderError("provider_error", str(exc), retryable=False) from exc
    except httpx2.TransportError as exc:  # a stream that breaks while it is read
        raise connection_error(f"{type(exc).__name__}: {exc}") from exc


def _text_of(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))


def _content_blocks(content: Any) -> str | list[dict[str, Any]]:
    """OpenAI content (a string or parts) as Anthropic content (a string or text/image blocks)."""
    if content is None or isinstance(content, str):
        return content or ""
    blocks: list[dict[str, Any]] = []
    for part in content:
        if part.get("type") == "text":
            blocks.append({"type": "text", "text": part.get("text", "")})
        elif part.get("type") == "image_url":
            url = part.get("image_url", {}).get("url", "")
            if url.startswith("data:") and ";base64," in url:
                media_type, data = url[5:].split(";base64,", 1)
                blocks.append({"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}})
            else:
                blocks.append({"type": "image", "source": {"type": "url", "url": url}})
    return blocks


def to_anthropic(request: dict[str, Any]) -> dict[str, Any]:
    """Map an OpenAI-style chat request to Messages API parameters."""
    system_parts: list[str] = []
    messages: list[dict[str, Any]] = []
    for message in request["messages"]:
        role = message["role"]
        if role in ("system", "developer"):
            system_parts.append(_text_of(message.get("content")))
        elif role == "tool":
            block = {
                "type": "tool_result",
                "tool_use_id": message.get("tool_call_id", ""),
                "content": _text_of(message.get("content")),
            }
            messages.append({"role": "user", "content": [block]})
        elif role == "assistant" and message.get("tool_calls"):
            blocks: list[dict[str, Any]] = []
            text = _text_of(message.get("content"))
            if text:
                blocks.append({"type": "text", "text": text})
            for call in message["tool_calls"]:
                function = call.get("function", {})
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": call.get("id", ""),
                        "name": function.get("name", ""),
                        "input": json.loads(function.get("arguments") or "{}"),
                    }
                )
            messages.append({"role": "assistant", "content": blocks})
        else:
            messages.append({"role": role, "content": _content_blocks(message.get("content"))})
    params: dict[str, Any] = {
        "messages": messages,
        "max_tokens": request.get("max_tokens") or request.get("max_completion_tokens") or DEFAULT_MAX_TOKENS,
    }
    if system_parts:
        params["system"] = "\n\n".join(system_parts)
    if request.get("temperature") is not None:
        # Anthropic's range is [0, 1] where OpenAI's is [0, 2].
        params["temperature"] = min(float(request["temperature"]), 1.0)
    if request.get("top_p") is not None:
        params["top_p"] = request["top_p"]
    stop = request.get("stop")
    if stop:
        params["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if request.get("tools"):
        params["tools"] = [
            {
                "name": t["function"]["name"],
                "description": t["function"].get("description", ""),
                "input_schema": t["function"].get("parameters") or {"type": "object", "properties": {}},
            }
            for t in request["tools"]
            if t.get("type") == "function"
        ]
    choice = request.get("tool_choice")
    if choice == "auto":
        params["tool_choice"] = {"type": "auto"}
    elif choice == "required":
        params["tool_choice"] = {"type": "any"}
    elif choice == "none":
        params["tool_choice"] = {"type": "none"}
    elif isinstance(choice, dict) and choice.get("function"):
        params["tool_choice"] = {"type": "tool", "name": choice["function"]["name"]}
    if request.get("user"):
        params["metadata"] = {"user_id": str(request["user"])}
    _json_mode(request, params)
    return params


# The tool that carries an answer to a JSON schema (Anthropic has no response_format: a forced tool call
# whose input is the answer is its way to get JSON that fits a schema).
JSON_TOOL = "json_response"


def _json_mode(request: dict[str, Any], params: dict[str, Any]) -> None:
    """OpenAI's response_format in Anthropic's terms: a schema becomes a forced tool; plain JSON mode an
    instruction in the system prompt."""
    fmt = request.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema") or {}
        params["tools"] = [
            *params.get("tools", []),
            {
                "name": JSON_TOOL,
                "description": spec.get("description") or f"Respond with {spec.get('name') or 'the answer'}.",
                "input_schema": spec.get("schema") or {"type": "object"},
            },
        ]
        params["tool_choice"] = {"type": "tool", "name": JSON_TOOL}
    elif fmt.get("type") == "json_object":
        instruction = "Respond with a single JSON object and nothing else."
        params["system"] = f"{params['system']}\n\n{instruction}" if params.get("system") else instruction


def _from_json_tool(output: dict[str, Any]) -> dict[str, Any]:
    """The forced JSON tool call as the JSON text an OpenAI caller expects in `content`."""
    calls = output.get("tool_calls") or []
    answer = next((c for c in calls if c["function"]["name"] == JSON_TOOL), None)
    if answer is None:
        return output
    rest = [c for c in calls if c is not answer]
    output = {**output, "content": answer["function"]["arguments"], "finish_reason": "stop"}
    if rest:
        output["tool_calls"] = rest
    else:
        output.pop("tool_calls", None)
    return output


def _usage(input_tokens: int, output_tokens: int, cache_read: int | None, cache_write: int | None) -> Usage:
    # Anthropic's input_tokens excludes cache reads and writes; ours counts the whole prompt.
    read, write = cache_read or 0, cache_write or 0
    return Usage(
        input_tokens=input_tokens + read + write,
        output_tokens=output_tokens,
        cached_input_tokens=read,
        cache_write_tokens=write,
    )


def _result(
    text: str, tool_calls: list[dict[str, Any]], stop_reason: str | None, usage: Usage, provider_model: str
) -> CallResult:
    output: dict[str, Any] = {"content": text, "finish_reason": STOP_REASONS.get(stop_reason or "end_turn", "stop")}
    if tool_calls:
        output["tool_calls"] = tool_calls
    return CallResult(output=_from_json_tool(output), usage=usage, provider_model=provider_model)


class AnthropicAdapter:
    """Calls through the official SDK with its own retries off: the gateway owns retries."""

    def __init__(self, config: ProviderConfig) -> None:
        per_shard = max(1, config.max_connections // config.client_shards)

        def make() -> AnthropicClient:
            common: dict[str, Any] = {
                "base_url": config.base_url,
                "max_retries": 0,
                "timeout": config.timeout_s or 60.0,
                "http_client": anthropic.DefaultHttpxClient(
                    limits=httpx2.Limits(max_connections=per_shard, max_keepalive_connections=per_shard)
                ),
            }
            if config.platform == "bedrock":
                # Credentials from the config, else the AWS default chain (environment, profile, role).
                return anthropic.AnthropicBedrock(
                    aws_region=config.region,
                    aws_access_key=config.aws_access_key,
                    aws_secret_key=config.aws_secret_key,
                    aws_session_token=config.aws_session_token,
                    **common,
                )
            if config.platform == "vertex":
                # A token from the config, else Google's application default credentials.
                return anthropic.AnthropicVertex(
                    region=config.region or "",
                    project_id=config.project_id or "",
                    access_token=config.access_token,
                    **common,
                )
            return anthropic.Anthropic(api_key=config.api_key or "none", **common)

        self._clients = ClientShards(make, config.client_shards)

    def chat(
        self, model: str, request: dict[str, Any], timeout_s: float, on_delta: OnDelta | None = None
    ) -> CallResult:
        params = to_anthropic(request)
        if on_delta is not None:
            return self._chat_streamed(model, params, timeout_s, on_delta)
        with _translated_errors():
            message = self._clients.get().messages.create(model=model, timeout=timeout_s, **params)
        text = "".join(block.text for block in message.content if block.type == "text")
        tool_calls = [
            {"id": block.id, "type": "function", "function": {"name": block.name, "arguments": json.dumps(block.input)}}
            for block in message.content
            if block.type == "tool_use"
        ]
        u = message.usage
        usage = _usage(u.input_tokens, u.output_tokens, u.cache_read_input_tokens, u.cache_creation_input_tokens)
        return _result(text, tool_calls, message.stop_reason, usage, message.model or model)

    def _chat_streamed(self, model: str, params: dict[str, Any], timeout_s: float, on_delta: OnDelta) -> CallResult:
        text: list[str] = []
        blocks: dict[int, dict[str, Any]] = {}  # tool_use blocks by index, their JSON input in fragments
        stop_reason: str | None = None
        counts = {"input": 0, "output": 0, "cache_read": 0, "cache_write": 0}
        provider_model = model
        finished = False
        with _translated_errors():
            stream = self._clients.get().messages.create(model=model, timeout=timeout_s, stream=True, **params)
            with stream:
                for event in stream:
                    if event.type == "message_start":
                        provider_model = event.message.model or model
                        u = event.message.usage
                        counts["input"] = u.input_tokens
                        counts["output"] = u.output_tokens
                        counts["cache_read"] = u.cache_read_input_tokens or 0
                        counts["cache_write"] = u.cache_creation_input_tokens or 0
                    elif event.type == "content_block_start" and event.content_block.type == "tool_use":
                        block = event.content_block
                        blocks[event.index] = {"id": block.id, "name": block.name, "json": ""}
                    elif event.type == "content_block_delta":
                        if event.delta.type == "text_delta":
                            text.append(event.delta.text)
                            on_delta(event.delta.text)
                        elif event.delta.type == "input_json_delta" and event.index in blocks:
                            blocks[event.index]["json"] += event.delta.partial_json
                    elif event.type == "message_delta":
                        stop_reason = event.delta.stop_reason or stop_reason
                        counts["output"] = event.usage.output_tokens
                    elif event.type == "message_stop":
                        finished = True
        if not finished:
            raise connection_error("the stream ended before the answer was complete")
        tool_calls = [
            {"id": b["id"], "type": "function", "function": {"name": b["name"], "arguments": b["json"] or "{}"}}
            for _, b in sorted(blocks.items())
        ]
        usage = _usage(counts["input"], counts["output"], counts["cache_read"], counts["cache_write"])
        return _result("".join(text), tool_calls, stop_reason, usage, provider_model)

    def embed(self, model: str, request: dict[str, Any], timeout_s: float) -> CallResult:
        raise unsupported("anthropic", "embed")

    def moderate(self, model: str, request: dict[str, Any], timeout_s: float) -> CallResult:
        raise unsupported("anthropic", "moderate")

    def predict(self, model: str, request: dict[str, Any], timeout_s: float) -> CallResult:
        raise unsupported("anthropic", "predict")

    def close(self) -> None:
        self._clients.close()
