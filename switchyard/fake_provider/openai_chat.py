"""OpenAI chat completions (``/v1/chat/completions`` and Azure's deployment route), streaming included."""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from switchyard.fake_provider.chat import ChatSteps, _called_tool, _read_chat, _Reply, _split_chunks
from switchyard.fake_provider.core import _BadRequest, _Call, _positive_int
from switchyard.fake_provider.responses import _sse_data, _stream


class OpenAIChatEndpoints(ChatSteps):
    """``POST /v1/chat/completions`` and ``POST /openai/deployments/{deployment}/chat/completions``."""

    async def chat_completions(self, request: Request) -> Response:
        return await self._openai_chat(request, azure=False)

    async def azure_chat_completions(self, request: Request) -> Response:
        return await self._openai_chat(request, azure=True)

    async def _openai_chat(self, request: Request, *, azure: bool) -> Response:
        call = self._start(request)
        try:
            deployment = self._azure_deployment(request) if azure else None
            body = await self._read_json(request)
            chat = _read_chat(
                body,
                model=deployment,
                no_model="you must provide a model parameter",
                no_messages="'messages' must be a non-empty array",
                bad_message="each message must be an object with a 'role'",
            )
            max_tokens = _positive_int(body, "max_completion_tokens") or _positive_int(body, "max_tokens")
        except _BadRequest as exc:
            return await self._malformed(call, exc)
        failure = await self._screen_chat(call, chat)
        if failure is not None:
            return failure

        reply = _Reply.answer(chat, max_tokens, _called_tool(body, call.markers, openai_shape=True))
        finish = reply.ending(stop="stop", length="length", tool="tool_calls")
        usage = {
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.output_tokens,
            "total_tokens": reply.prompt_tokens + reply.output_tokens,
            "prompt_tokens_details": {"cached_tokens": call.markers.cached},
            "completion_tokens_details": {"reasoning_tokens": 0},
        }
        cid = f"chatcmpl-{call.rid:024x}"
        created = int(time.time())
        tool_call = (
            {"id": "call_1", "type": "function", "function": {"name": reply.tool_name, "arguments": "{}"}}
            if reply.tool_name is not None
            else None
        )

        if body.get("stream") is True:
            self._count(call.path, 200)
            stream_options = body.get("stream_options")
            include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True
            envelope = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": chat.model,
                "system_fingerprint": "fp_fake",
            }
            return self._chat_stream(call, envelope, reply.text, tool_call, finish, usage, include_usage)

        message: dict[str, Any] = {"role": "assistant", "content": None if tool_call else reply.text}
        if tool_call is not None:
            message["tool_calls"] = [tool_call]
        message["refusal"] = None
        result = {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": chat.model,
            "system_fingerprint": "fp_fake",
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
            "usage": usage,
        }
        return self._ok(call, result)

    @staticmethod
    def _chat_stream(
        call: _Call,
        envelope: dict[str, Any],
        text: str,
        tool_call: dict[str, Any] | None,
        finish: str,
        usage: dict[str, Any],
        include_usage: bool,
    ) -> Response:
        """OpenAI chunks; ``envelope`` holds the fields every chunk starts with (id, object, created, ...)."""

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            obj: dict[str, Any] = {**envelope, "choices": [choice]}
            if include_usage:
                obj["usage"] = None
            return _sse_data(obj)

        head = [chunk({"role": "assistant", "content": "", "refusal": None})]
        if tool_call is not None:
            fn = tool_call["function"]
            first = {
                "index": 0,
                "id": tool_call["id"],
                "type": "function",
                "function": {"name": fn["name"], "arguments": ""},
            }
            content = [
                chunk({"tool_calls": [first]}),
                chunk({"tool_calls": [{"index": 0, "function": {"arguments": fn["arguments"]}}]}),
            ]
        else:
            content = [chunk({"content": piece}) for piece in _split_chunks(text)]
        tail = [chunk({}, finish)]
        if include_usage:
            tail.append(_sse_data({**envelope, "choices": [], "usage": usage}))
        tail.append(b"data: [DONE]\n\n")
        return _stream(head, content, tail, call.markers.break_after, call.headers, trickle_ms=call.markers.trickle_ms)
