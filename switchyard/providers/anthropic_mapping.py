"""Anthropic's Messages API in OpenAI's shapes: requests mapped to it, its answers (whole or streamed) mapped
back. Shared by the sync and the async calls of the anthropic adapter, which differ only in the client."""

from __future__ import annotations

import json
from typing import Any

from switchyard.providers.base import CallResult, OnDelta, Usage
from switchyard.providers.errors import connection_error

DEFAULT_MAX_TOKENS = 1024

STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


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


def message_result(message: Any, model: str) -> CallResult:
    """A whole Messages API answer as our result."""
    text = "".join(block.text for block in message.content if block.type == "text")
    tool_calls = [
        {"id": block.id, "type": "function", "function": {"name": block.name, "arguments": json.dumps(block.input)}}
        for block in message.content
        if block.type == "tool_use"
    ]
    u = message.usage
    usage = _usage(u.input_tokens, u.output_tokens, u.cache_read_input_tokens, u.cache_creation_input_tokens)
    return _result(text, tool_calls, message.stop_reason, usage, message.model or model)


class StreamedMessage:
    """A streamed answer, put together event by event; each text chunk also goes to `on_delta`."""

    def __init__(self, model: str, on_delta: OnDelta) -> None:
        self._on_delta = on_delta
        self._text: list[str] = []
        self._blocks: dict[int, dict[str, Any]] = {}  # tool_use blocks by index, their JSON input in fragments
        self._stop_reason: str | None = None
        self._counts = {"input": 0, "output": 0, "cache_read": 0, "cache_write": 0}
        self._model = model
        self._finished = False

    def add(self, event: Any) -> None:
        """Take in one server-sent event of the stream."""
        if event.type == "message_start":
            self._model = event.message.model or self._model
            u = event.message.usage
            self._counts["input"] = u.input_tokens
            self._counts["output"] = u.output_tokens
            self._counts["cache_read"] = u.cache_read_input_tokens or 0
            self._counts["cache_write"] = u.cache_creation_input_tokens or 0
        elif event.type == "content_block_start" and event.content_block.type == "tool_use":
            block = event.content_block
            self._blocks[event.index] = {"id": block.id, "name": block.name, "json": ""}
        elif event.type == "content_block_delta":
            if event.delta.type == "text_delta":
                self._text.append(event.delta.text)
                self._on_delta(event.delta.text)
            elif event.delta.type == "input_json_delta" and event.index in self._blocks:
                self._blocks[event.index]["json"] += event.delta.partial_json
        elif event.type == "message_delta":
            self._stop_reason = event.delta.stop_reason or self._stop_reason
            self._counts["output"] = event.usage.output_tokens
        elif event.type == "message_stop":
            self._finished = True

    def result(self) -> CallResult:
        """The whole answer; a ProviderError if the stream ended before `message_stop`."""
        if not self._finished:
            raise connection_error("the stream ended before the answer was complete")
        tool_calls = [
            {"id": b["id"], "type": "function", "function": {"name": b["name"], "arguments": b["json"] or "{}"}}
            for _, b in sorted(self._blocks.items())
        ]
        c = self._counts
        usage = _usage(c["input"], c["output"], c["cache_read"], c["cache_write"])
        return _result("".join(self._text), tool_calls, self._stop_reason, usage, self._model)
