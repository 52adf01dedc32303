"""The Anthropic Messages API (``/v1/messages``), also as Bedrock and Vertex AI serve it, streaming included."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from switchyard.fake_provider.chat import ChatSteps, _called_tool, _read_chat, _Reply, _split_chunks
from switchyard.fake_provider.core import _BadRequest, _positive_int
from switchyard.fake_provider.responses import _EVENTSTREAM, _SSE, _bedrock_chunk, _sse_event, _stream


def _anthropic_message(
    mid: str, model: str, content: list[dict[str, Any]], stop_reason: str | None, usage: Mapping[str, Any]
) -> dict[str, Any]:
    """An Anthropic message object: the whole answer, or the empty one that opens a stream."""
    return {
        "id": mid,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": usage,
    }


class MessagesEndpoints(ChatSteps):
    """``POST /v1/messages``, Bedrock's ``invoke`` routes and Vertex's ``rawPredict`` routes."""

    async def messages(self, request: Request) -> Response:
        return await self._messages(request, model=None, stream=None)

    async def bedrock_invoke(self, request: Request) -> Response:
        return await self._messages(request, model=request.path_params["model_id"], stream=False)

    async def bedrock_invoke_stream(self, request: Request) -> Response:
        return await self._messages(request, model=request.path_params["model_id"], stream=True, eventstream=True)

    async def vertex_predict(self, request: Request) -> Response:
        # The model and the method share the last path segment ("claude-3-5-haiku@20241022:rawPredict"); a
        # model name has no ":" on Vertex, so the method is what follows the last one.
        model, _, method = str(request.path_params["target"]).rpartition(":")
        if method not in ("rawPredict", "streamRawPredict") or not model:
            call = self._start(request, anthropic=True)
            return await self._malformed(call, _BadRequest(f"no such method: {method!r}", status=404))
        return await self._messages(request, model=model, stream=method == "streamRawPredict")

    async def _messages(
        self, request: Request, *, model: str | None, stream: bool | None, eventstream: bool = False
    ) -> Response:
        """Answers an Anthropic Messages request.

        ``model`` is set on the cloud platforms, which name it in the URL and take ``anthropic_version`` in the
        body; ``stream`` is set where the URL decides about streaming rather than the body's ``stream``;
        ``eventstream`` frames a stream for Bedrock instead of as SSE.
        """
        call = self._start(request, anthropic=True)
        try:
            body = await self._read_json(request)
            if model is not None:
                self._platform_body(body)
            chat = _read_chat(
                body,
                model=model,
                system=body.get("system"),
                no_model="model: Field required",
                no_messages="messages: Field required (non-empty array)",
                bad_message="messages: each message must be an object with a 'role'",
            )
            max_tokens = _positive_int(body, "max_tokens")
        except _BadRequest as exc:
            return await self._malformed(call, exc)
        failure = await self._screen_chat(call, chat)
        if failure is not None:
            return failure

        reply = _Reply.answer(chat, max_tokens, _called_tool(body, call.markers, openai_shape=False))
        stop_reason = reply.ending(stop="end_turn", length="max_tokens", tool="tool_use")
        markers = call.markers
        usage = {
            "input_tokens": max(0, reply.prompt_tokens - markers.cached - markers.cache_write),
            "output_tokens": reply.output_tokens,
            "cache_read_input_tokens": markers.cached,
            "cache_creation_input_tokens": markers.cache_write,
        }
        mid = f"msg_{call.rid:024x}"
        block: dict[str, Any] = (
            {"type": "tool_use", "id": "toolu_1", "name": reply.tool_name, "input": {}}
            if reply.tool_name is not None
            else {"type": "text", "text": reply.text}
        )
        if (body.get("stream") is True) if stream is None else stream:
            self._count(call.path, 200)
            encode, media_type = (_bedrock_chunk, _EVENTSTREAM) if eventstream else (_sse_event, _SSE)
            head, content, tail = self._messages_stream(mid, chat.model, reply.text, block, stop_reason, usage, encode)
            return _stream(
                head, content, tail, call.markers.break_after, call.headers, media_type, call.markers.trickle_ms
            )
        return self._ok(call, _anthropic_message(mid, chat.model, [block], stop_reason, usage))

    @staticmethod
    def _messages_stream(
        mid: str,
        model: str,
        text: str,
        block: dict[str, Any],
        stop_reason: str,
        usage: dict[str, Any],
        encode: Callable[[str, Any], bytes],
    ) -> tuple[list[bytes], list[bytes], list[bytes]]:
        """The opening, content and closing events of a streamed answer, each made wire bytes by ``encode``."""
        opening = _anthropic_message(mid, model, [], None, {**usage, "output_tokens": 1})
        if block["type"] == "tool_use":
            start_block: dict[str, Any] = {**block, "input": {}}
            deltas = [{"type": "input_json_delta", "partial_json": "{}"}]
        else:
            start_block = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": piece} for piece in _split_chunks(text)]
        head = [
            encode("message_start", {"type": "message_start", "message": opening}),
            encode(
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": start_block},
            ),
        ]
        content = [
            encode("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": d}) for d in deltas
        ]
        message_delta = {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": None},
            "usage": {"output_tokens": usage["output_tokens"]},
        }
        tail = [
            encode("content_block_stop", {"type": "content_block_stop", "index": 0}),
            encode("message_delta", message_delta),
            encode("message_stop", {"type": "message_stop"}),
        ]
        return head, content, tail
