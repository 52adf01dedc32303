"""Fake model provider: a real HTTP server speaking the OpenAI and Anthropic APIs.

Used for development, tests, load benchmarks and failure drills. Everything it does is
deterministic: no randomness, no model, no per-request logging.

Endpoints
---------
- ``POST /v1/chat/completions`` (OpenAI, ``stream: true`` supported, incl. ``stream_options.include_usage``)
- ``POST /v1/embeddings`` (OpenAI, ``encoding_format`` ``float`` or ``base64``, ``dimensions``; default 64)
- ``POST /v1/moderations`` (OpenAI)
- ``POST /v1/messages`` (Anthropic, ``stream: true`` supported)
- ``GET /v1/models`` (OpenAI-style model list; counted in stats, never fails)
- Azure OpenAI, as ``openai.AzureOpenAI(azure_endpoint=<fake>, api_version=..., api_key=...)`` calls it (the
  SDK sends the key in an ``api-key`` header, which the fake ignores like it ignores every credential):

  - ``POST /openai/deployments/{deployment}/chat/completions?api-version=...`` (streaming too)
  - ``POST /openai/deployments/{deployment}/embeddings?api-version=...``
  - ``POST /openai/moderations?api-version=...`` (where the SDK sends moderations: not a deployment route)
    and ``POST /openai/deployments/{deployment}/moderations?api-version=...`` (for a client whose
    ``base_url`` already ends in a deployment)

  They answer exactly like the ``/v1`` routes, with the deployment name as the model (the body's
  ``model`` is ignored). A missing or empty ``api-version`` query parameter is a 400 (param
  ``api-version``), like any malformed request.
- Anthropic on Bedrock, as ``anthropic.AnthropicBedrock(base_url=<fake>, aws_access_key=..., aws_secret_key=...,
  aws_region=...)`` calls it (SigV4-signed with any credentials; the signature is not checked):

  - ``POST /model/{modelId}/invoke``: a Messages body without ``model`` (and without ``stream``), with
    ``anthropic_version``; answered with the same JSON as ``/v1/messages``.
  - ``POST /model/{modelId}/invoke-with-response-stream``: the same body; the stream events of
    ``/v1/messages`` in AWS event-stream framing (content type ``application/vnd.amazon.eventstream``):
    one binary message per event, with headers ``:event-type: chunk``, ``:content-type:
    application/json``, ``:message-type: event`` and the payload ``{"bytes": "<base64 of the event JSON>"}``.

  ``modelId`` may be URL-encoded (``anthropic.claude-3-5-haiku-20241022-v1%3A0``); it is used decoded.
- Anthropic on Vertex AI, as ``anthropic.AnthropicVertex(base_url=<fake>/v1, region=..., project_id=...,
  access_token=...)`` calls it (the bearer token is not checked, so google-auth is not needed):
  ``POST /v1/projects/{project}/locations/{region}/publishers/anthropic/models/{model}:rawPredict`` (JSON)
  and ``...:streamRawPredict`` (SSE, as ``/v1/messages``). The same paths without the leading ``/v1`` are
  served too. The body is a Messages body without ``model``, with ``anthropic_version``.
- Bedrock and Vertex bodies without a string ``anthropic_version`` are a 400; the model comes from the URL.
  Any other Vertex method after the ``:`` is a 404.
- ``GET /healthz`` -> ``{"ok": true}`` (not counted)
- ``GET /control`` -> current settings; ``POST /control`` with any subset of
  ``{"latency_ms": int, "fail_rate": float, "fail_status": int, "context_windows": {model: int}}`` changes
  them at run time (``context_windows`` replaces the whole map; ``{}`` clears it)
- ``GET /control/stats`` -> ``{"requests": {path: {status: count}}, "total": n}``; every route is counted under
  the (URL-decoded) path it was called with, e.g. ``/openai/deployments/gpt-a/chat/completions`` or
  ``/model/anthropic.claude-3-5-haiku-20241022-v1:0/invoke``, without the query string
- ``POST /control/reset`` -> clears stats, the fail-first counters and the fail-rate request counter. It
  leaves the settings alone (latency, fail rate and status, context windows).

Behaviour
---------
- Chat reply is ``"echo: " + text`` where *text* is the text of the LAST ``user`` message (string content or
  the joined ``text`` blocks of a list content). Anthropic's ``system`` is never echoed. Markers stay in the
  echoed text.
- Usage: ``ceil(chars / 4)`` tokens; prompt chars = all message text incl. system prompts; reply chars =
  the reply length (tool-call replies count ``len(name) + 2``).
- ``max_tokens`` (or OpenAI ``max_completion_tokens``): if the reply has more tokens, it is cut to
  ``max_tokens * 4`` characters and the finish reason is ``length`` / stop_reason ``max_tokens``.
- Context windows (``--context-window MODEL=N``, ``create_app(context_windows=...)`` or ``POST /control``):
  a chat request (any chat route) to MODEL whose prompt tokens exceed N gets the context-length error of
  ``[[context]]`` with W = N. Embeddings and moderations ignore the windows.
- Embeddings: unit vectors (float32) derived from sha256 of each input text.
- Moderation flags any input containing ``[[flag]]`` (category ``harassment`` scores 0.99); ``[[flag:N]]``
  makes ``harassment`` score N/100 (flagged when N >= 50). Every other score is 0.001.

Markers (searched in the text of ALL messages, incl. system, or in embeddings/moderation ``input``)
---------------------------------------------------------------------------------------------------
Any marker may end with ``@<model>`` inside the brackets (``[[fail:503@gpt-a]]``, ``[[fail:503:2@gpt-a]]``,
``[[context@gpt-small]]``): it then applies only to requests for exactly that model (on Azure the deployment
name, on Bedrock and Vertex the model id from the URL). Unqualified markers apply to every model. Of several
markers of one kind, the first one that applies to the request's model wins; the others are ignored.

- ``[[fail:503]]``       answer with that status (any 400-599), always.
- ``[[fail:503:2]]``     (extension) fail with 503 only the first 2 times a request with this exact text
                         (all searched text joined) is seen; afterwards answer normally. The count is kept
                         per text for an unqualified marker (shared by all models), and per text and model
                         for a qualified one.
- ``[[sleep:250]]``      wait 250 ms more before answering (added to ``latency_ms``).
- ``[[retry-after:2]]``  add ``Retry-After: 2`` to the response, whatever its status.
- ``[[cached:N]]``       (extension) report N cached prompt tokens: OpenAI
                         ``usage.prompt_tokens_details.cached_tokens = N`` (``prompt_tokens`` stays the full
                         count); Anthropic ``cache_read_input_tokens = N`` and ``input_tokens`` = full - N.
- ``[[cache-write:N]]``  (extension) Anthropic ``cache_creation_input_tokens = N`` (also subtracted from
                         ``input_tokens``, floored at 0); ignored on OpenAI.
- ``[[break:K]]``        (extension) in a streamed chat, abort the connection abruptly after K content
                         chunks (no finish chunk, no ``[DONE]`` / no ``message_stop``). Ignored when not
                         streaming. Works the same in Bedrock's event-stream framing.
- ``[[tool]]``           (extension) when the request has ``tools``, answer with a call of the first tool
                         (OpenAI ``tool_calls`` id ``call_1``, finish_reason ``tool_calls``; Anthropic
                         ``tool_use`` block id ``toolu_1``, stop_reason ``tool_use``), arguments ``{}``.
- ``[[context]]``        (extension) chat only: 400, the provider's context-length error. OpenAI: type
                         ``invalid_request_error``, param ``messages``, code ``context_length_exceeded``,
                         message "This model's maximum context length is W tokens. However, your messages
                         resulted in N tokens. Please reduce the length of the messages."; Anthropic:
                         ``invalid_request_error`` "prompt is too long: N tokens > W maximum". N = the prompt
                         tokens; W = the model's context window if one is set (even when N fits in it: the
                         marker forces the error), else N - 1.
- ``[[policy]]``         (extension) chat only: 400, a content-policy refusal. OpenAI: type
                         ``invalid_request_error``, code ``content_policy_violation``, message "Your request
                         was rejected as a result of our safety system. Your prompt may contain text that is
                         not allowed by our content policy."; Anthropic: ``invalid_request_error`` "Output
                         blocked by content filtering policy".
- ``[[flag]]``           moderation flags the input.
- ``[[flag:N]]``         (extension) moderation scores ``harassment`` N/100 (0-100), flagged when N >= 50.

Global settings (``--latency-ms``, ``--fail-rate``, ``--fail-status`` or ``POST /control``) apply to every
API request. The fail rate is deterministic: API request number n (1-based, counted over all API requests
since start or the last reset) fails with ``fail_status`` iff ``floor(n*F) > floor((n-1)*F)``. Marker
failures take precedence. Latency is applied before answering (before the response headers of a stream),
also before an injected failure. Malformed requests (bad JSON, missing ``model``/``messages``/``input``)
get a 400 after the global latency, without injected failures. A request that is to be answered is then
checked, in this order, for ``[[context]]``, an exceeded context window and ``[[policy]]``: so an injected
failure (marker or fail rate) wins over these 400s.

Error bodies are OpenAI-shaped (``{"error": {"message", "type", "param", "code"}}``) except on the Anthropic
routes (``/v1/messages``, Bedrock, Vertex) where they are Anthropic-shaped
(``{"type": "error", "error": {"type", "message"}}``).

Run with ``python -m switchyard.fake_provider.app --port 8911 --latency-ms 0 --fail-rate 0 --fail-status 500``
and any number of ``--context-window MODEL=N`` (or ``switchyard fake-provider``, which calls :func:`run`).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import logging
import math
import re
import struct
import time
import zlib
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

__all__ = ["create_app", "run"]

DEFAULT_EMBEDDING_DIMENSIONS = 64
MAX_EMBEDDING_DIMENSIONS = 8192
DEFAULT_MODERATION_MODEL = "omni-moderation-latest"

MODERATION_CATEGORIES: tuple[str, ...] = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)
_FLAGGED_CATEGORY = "harassment"

# name, optional numeric argument(s), optional "@model". A model name may itself contain "@" or ":" (Vertex's
# "claude-3-5-haiku@20241022", Bedrock's "...-v1:0"), so it runs to the closing brackets.
_MARKER_RE = re.compile(r"\[\[([a-z-]+)(?::([0-9:]+))?(?:@([^\[\]\s]+))?\]\]")
_WORD_RE = re.compile(r"\S+\s*|\s+")

_JSON = "application/json"
_SSE = "text/event-stream"
_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
_EVENTSTREAM = "application/vnd.amazon.eventstream"

_CONTEXT_CODE = "context_length_exceeded"
_POLICY_CODE = "content_policy_violation"
_OPENAI_POLICY_MESSAGE = (
    "Your request was rejected as a result of our safety system. "
    "Your prompt may contain text that is not allowed by our content policy."
)
_ANTHROPIC_POLICY_MESSAGE = "Output blocked by content filtering policy"


# ---------------------------------------------------------------------------------------------------------
# Helpers


class _AbortStream(Exception):
    """Raised after a partial stream to make the server drop the connection ([[break:K]])."""


def _is_abort(exc: BaseException | None) -> bool:
    seen: set[int] = set()
    stack: list[BaseException] = [exc] if exc is not None else []
    while stack:
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, _AbortStream):
            return True
        if isinstance(e, BaseExceptionGroup):
            stack.extend(e.exceptions)
        if e.__cause__ is not None:
            stack.append(e.__cause__)
        if e.__context__ is not None:
            stack.append(e.__context__)
    return False


class _AbortLogFilter(logging.Filter):
    """Hides uvicorn's 'Exception in ASGI application' record for deliberate stream aborts."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and _is_abort(record.exc_info[1]))


def _install_log_filter() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _AbortLogFilter) for f in logger.filters):
        logger.addFilter(_AbortLogFilter())


def _tokens(chars: int) -> int:
    return (chars + 3) // 4


def _content_text(content: Any) -> str:
    """Text of a message content: a string, or the joined text of a list of content blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for block in content:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, dict):
                btype = block.get("type")
                if btype == "text" or btype == "input_text":
                    text = block.get("text")
                    if isinstance(text, str):
                        parts.append(text)
                elif btype == "tool_result":
                    parts.append(_content_text(block.get("content")))
        return "".join(parts)
    return ""


def _split_chunks(text: str) -> list[str]:
    """Split into chunks of ~4 words; at least 2 chunks when the text has 2+ words."""
    words = _WORD_RE.findall(text)
    if len(words) <= 1:
        return [text]
    size = min(4, max(1, len(words) // 2))
    return ["".join(words[i : i + size]) for i in range(0, len(words), size)]


def _embedding_bytes(text: str, dims: int) -> bytes:
    """Little-endian float32 unit vector derived from sha256 of the text."""
    seed = hashlib.sha256(text.encode("utf-8")).digest()
    need = dims * 4
    buf = bytearray(seed)
    counter = 0
    while len(buf) < need:
        buf += hashlib.sha256(seed + counter.to_bytes(4, "little")).digest()
        counter += 1
    ints = struct.unpack(f"<{dims}I", bytes(buf[:need]))
    vals = [x / 2147483647.5 - 1.0 for x in ints]
    norm = math.sqrt(sum(v * v for v in vals)) or 1.0
    return struct.pack(f"<{dims}f", *(v / norm for v in vals))


# Error ``type`` names that both APIs use for the same status.
_ERROR_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error", 429: "rate_limit_error"}
# Statuses only Anthropic names specially; OpenAI reports them by the general rules below.
_ANTHROPIC_ERROR_TYPES = {413: "request_too_large", 503: "overloaded_error", 529: "overloaded_error"}


def _error_type(status: int, *, anthropic: bool) -> str:
    """The error ``type`` a real provider reports for a status, so SDKs map it to the right exception."""
    if anthropic and status in _ANTHROPIC_ERROR_TYPES:
        return _ANTHROPIC_ERROR_TYPES[status]
    if status in _ERROR_TYPES:
        return _ERROR_TYPES[status]
    if status >= 500:
        return "api_error" if anthropic else "server_error"
    return "invalid_request_error"


def _json_response(obj: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(orjson.dumps(obj), status_code=status, headers=headers, media_type=_JSON)


class _BadRequest(Exception):
    """A request the fake cannot answer as asked: 400 unless ``status`` says otherwise (Vertex's unknown method)."""

    def __init__(self, message: str, param: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status


def _positive_int(body: Mapping[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _BadRequest(f"'{key}' must be a positive integer", key)
    return value


@dataclass(slots=True)
class _Markers:
    fail_status: int | None = None
    fail_times: int | None = None
    fail_model: str | None = None  # the "@model" of the fail marker that applied: it keys its own counter
    sleep_ms: int = 0
    retry_after: str | None = None
    cached: int = 0
    cache_write: int = 0
    break_after: int | None = None
    tool: bool = False
    context: bool = False
    policy: bool = False
    flag: bool = False
    flag_score: float | None = None


_NO_MARKERS = _Markers()


def _parse_markers(text: str, model: str) -> _Markers:
    """The markers in ``text`` that apply to a request for ``model``: the first applicable one of each kind."""
    if "[[" not in text:
        return _NO_MARKERS
    m = _Markers()
    seen: set[str] = set()
    for match in _MARKER_RE.finditer(text):
        name, arg, only_for = match.group(1), match.group(2), match.group(3)
        if name in seen or (only_for is not None and only_for != model):
            continue
        if name == "tool" and arg is None:
            m.tool = True
        elif name == "context" and arg is None:
            m.context = True
        elif name == "policy" and arg is None:
            m.policy = True
        elif name == "flag" and arg is None:
            m.flag = True
        elif arg is None:
            continue
        elif name == "fail":
            parts = arg.split(":")
            if len(parts) > 2 or not parts[0] or (len(parts) == 2 and not parts[1]):
                continue
            status = int(parts[0])
            if not 400 <= status <= 599:
                continue
            m.fail_status = status
            m.fail_times = int(parts[1]) if len(parts) == 2 else None
            m.fail_model = only_for
        elif ":" in arg:
            continue
        elif name == "flag":
            if int(arg) > 100:
                continue
            m.flag_score = int(arg) / 100
        elif name == "sleep":
            m.sleep_ms = int(arg)
        elif name == "retry-after":
            m.retry_after = str(int(arg))
        elif name == "cached":
            m.cached = int(arg)
        elif name == "cache-write":
            m.cache_write = int(arg)
        elif name == "break":
            m.break_after = int(arg)
        else:
            continue
        seen.add(name)
    return m


class _StreamResponse(Response):
    """Sends pre-built stream events (SSE or AWS event-stream messages); optionally drops the connection
    instead of finishing the body."""

    def __init__(self, events: list[bytes], headers: Mapping[str, str], abort: bool, media_type: str) -> None:
        self.events = events
        self.abort = abort
        self.status_code = 200
        self.background = None
        self.body = b""
        self.media_type = media_type
        self.init_headers({**_SSE_HEADERS, **headers} if media_type == _SSE else headers)
        # init_headers adds content-length for an empty body; a stream has none.
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        try:
            for event in self.events:
                await send({"type": "http.response.body", "body": event, "more_body": True})
            if self.abort:
                raise _AbortStream("deliberate stream abort ([[break:K]])")
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:  # client went away
            return


def _sse_data(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _sse_event(event: str, obj: Any) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"


def _eventstream_message(headers: Mapping[str, str], payload: bytes) -> bytes:
    """One message of the AWS event-stream binary framing, as botocore's EventStreamBuffer decodes it.

    Layout: total length and headers length (uint32 big-endian each), CRC32 of those 8 bytes, the headers
    (name length as 1 byte, name, value type 7 = string, value length as uint16, value), the payload, and
    the CRC32 of everything before it.
    """
    encoded = bytearray()
    for name, value in headers.items():
        raw_name, raw_value = name.encode(), value.encode()
        encoded += struct.pack(">B", len(raw_name)) + raw_name + struct.pack(">BH", 7, len(raw_value)) + raw_value
    prelude = struct.pack(">II", 12 + len(encoded) + len(payload) + 4, len(encoded))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + bytes(encoded) + payload
    return message + struct.pack(">I", zlib.crc32(message))


_CHUNK_HEADERS = {":event-type": "chunk", ":content-type": _JSON, ":message-type": "event"}


def _bedrock_chunk(event: str, obj: Any) -> bytes:
    """An Anthropic stream event as Bedrock sends it: a ``chunk`` whose payload carries the event JSON as
    base64 ``bytes``. The event name is not sent: the SDK takes it from the JSON's ``type``."""
    payload = orjson.dumps({"bytes": base64.b64encode(orjson.dumps(obj)).decode("ascii")})
    return _eventstream_message(_CHUNK_HEADERS, payload)


def _stream(
    head: list[bytes],
    content: list[bytes],
    tail: list[bytes],
    break_after: int | None,
    headers: Mapping[str, str],
    media_type: str = _SSE,
) -> Response:
    """A streamed chat answer of either API: opening events, content events, closing events.

    ``[[break:K]]`` keeps only the first K content events and then drops the connection, so a client sees a
    stream that dies mid-answer (no closing events at all).
    """
    if break_after is not None:
        return _StreamResponse([*head, *content[:break_after]], headers, True, media_type)
    return _StreamResponse([*head, *content, *tail], headers, False, media_type)


# ---------------------------------------------------------------------------------------------------------
# Chat requests and replies, shared by the OpenAI and Anthropic chat endpoints


@dataclass(frozen=True, slots=True)
class _Chat:
    """The parts of a chat request (either API) that the fake answers from."""

    model: str
    texts: list[str]  # system prompt (if any), then each message: searched for markers, counted as prompt
    last_user: str  # text of the last user message: the one echoed

    @property
    def prompt_tokens(self) -> int:
        return _tokens(sum(len(t) for t in self.texts))


def _read_chat(
    body: Mapping[str, Any],
    *,
    model: str | None = None,
    system: Any = None,
    no_model: str,
    no_messages: str,
    bad_message: str,
) -> _Chat:
    """Validates what both chat APIs require (model, messages with roles), in the caller API's words.

    ``model`` is the model named by the URL (Azure deployment, Bedrock / Vertex model id): then the body
    needs none, and one it has anyway is ignored, as those platforms do. The _BadRequest always names its
    ``param``; only OpenAI-shaped errors show it.
    """
    if model is None:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise _BadRequest(no_model, "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _BadRequest(no_messages, "messages")
    system_text = _content_text(system)
    texts = [system_text] if system_text else []
    last_user = ""
    for msg in messages:
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
            raise _BadRequest(bad_message, "messages")
        text = _content_text(msg.get("content"))
        texts.append(text)
        if msg["role"] == "user":
            last_user = text
    return _Chat(model=model, texts=texts, last_user=last_user)


def _called_tool(body: Mapping[str, Any], markers: _Markers, *, openai_shape: bool) -> str | None:
    """Name of the tool a ``[[tool]]`` reply calls (the first one offered), or None for a text reply.

    OpenAI tools nest the name in ``function`` (a flat tool with a top-level ``name`` is accepted too);
    Anthropic tools carry it at the top level only. A tool without a usable name is called ``"tool"``.
    """
    tools = body.get("tools")
    if not (markers.tool and isinstance(tools, list) and tools and isinstance(tools[0], dict)):
        return None
    first = tools[0]
    function = first.get("function") if openai_shape else None
    name = function.get("name") if isinstance(function, dict) else first.get("name")
    return name if isinstance(name, str) else "tool"


@dataclass(frozen=True, slots=True)
class _Reply:
    """What the fake model answers to a chat request, before either API puts it into its wire shape.

    Both chat APIs answer the same way (echo, token counts, truncation at max_tokens), so this is worked
    out once; each handler only renames the fields and picks its own words for why the reply ended.
    """

    text: str
    tool_name: str | None  # set when the reply is a call of this tool instead of text
    prompt_tokens: int
    output_tokens: int
    truncated: bool  # the text was cut to max_tokens

    @classmethod
    def answer(cls, chat: _Chat, max_tokens: int | None, tool_name: str | None) -> _Reply:
        prompt_tokens = chat.prompt_tokens
        text = "echo: " + chat.last_user
        if tool_name is not None:
            # The call's arguments are always "{}": they count with the name, and max_tokens never cuts them.
            return cls(text, tool_name, prompt_tokens, _tokens(len(tool_name) + 2), truncated=False)
        output_tokens = _tokens(len(text))
        truncated = False
        if max_tokens is not None and output_tokens > max_tokens:
            text = text[: max_tokens * 4]
            output_tokens = _tokens(len(text))
            truncated = True
        return cls(text, None, prompt_tokens, output_tokens, truncated)

    def ending(self, *, stop: str, length: str, tool: str) -> str:
        """The API's word for why the reply ended: naturally, cut at max_tokens, or to call a tool."""
        if self.tool_name is not None:
            return tool
        if self.truncated:
            return length
        return stop


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


@dataclass(slots=True)
class _Call:
    """One API request on its way through the steps that every API endpoint shares.

    Numbered when it arrives (the fail rate counts requests; ids derive from ``rid``). ``markers`` and
    ``headers`` are filled in by :meth:`FakeProvider._screen` once the request has been parsed.
    """

    path: str
    anthropic: bool  # Anthropic-shaped errors and request-id header (/v1/messages, Bedrock, Vertex), else OpenAI
    number: int
    rid: int
    markers: _Markers = field(default_factory=_Markers)
    headers: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------
# The provider


class FakeProvider:
    """State and request handlers of one fake provider instance."""

    def __init__(
        self,
        latency_ms: int = 0,
        fail_rate: float = 0.0,
        fail_status: int = 500,
        context_windows: Mapping[str, int] | None = None,
    ) -> None:
        self.latency_ms = 0
        self.fail_rate = 0.0
        self.fail_status = 500
        self.context_windows: dict[str, int] = {}
        self.configure(
            {
                "latency_ms": latency_ms,
                "fail_rate": fail_rate,
                "fail_status": fail_status,
                "context_windows": dict(context_windows or {}),
            }
        )
        self.api_requests = 0
        self.stats: dict[str, dict[str, int]] = {}
        # fail-first counters, keyed by the "@model" of the marker (None when unqualified) and the text
        self.fail_seen: dict[tuple[str | None, str], int] = {}
        self._ids = 0

    # -- settings / bookkeeping ---------------------------------------------------------------------------

    def configure(self, values: Mapping[str, Any]) -> None:
        """Validates then applies any subset of latency_ms, fail_rate, fail_status, context_windows.

        Raises ValueError, and changes nothing, if any value is bad.
        """
        latency = values.get("latency_ms", self.latency_ms)
        rate = values.get("fail_rate", self.fail_rate)
        status = values.get("fail_status", self.fail_status)
        windows = values.get("context_windows", self.context_windows)
        if isinstance(latency, bool) or not isinstance(latency, int | float) or latency < 0:
            raise ValueError("latency_ms must be a non-negative number")
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0.0 <= rate <= 1.0:
            raise ValueError("fail_rate must be a number between 0 and 1")
        if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
            raise ValueError("fail_status must be an integer between 400 and 599")
        if not isinstance(windows, Mapping) or not all(
            isinstance(model, str) and model and not isinstance(size, bool) and isinstance(size, int) and size > 0
            for model, size in windows.items()
        ):
            raise ValueError("context_windows must map model names to positive integers (tokens)")
        self.latency_ms = int(latency)
        self.fail_rate = float(rate)
        self.fail_status = status
        self.context_windows = dict(windows)

    def settings(self) -> dict[str, Any]:
        return {
            "latency_ms": self.latency_ms,
            "fail_rate": self.fail_rate,
            "fail_status": self.fail_status,
            "context_windows": dict(self.context_windows),
        }

    def reset(self) -> None:
        """Clears the counters; the settings (incl. context windows) stay, like latency and fail rate do."""
        self.api_requests = 0
        self.stats.clear()
        self.fail_seen.clear()

    def _count(self, path: str, status: int) -> None:
        by_status = self.stats.get(path)
        if by_status is None:
            by_status = self.stats[path] = {}
        key = str(status)
        by_status[key] = by_status.get(key, 0) + 1

    def _next_id(self) -> int:
        self._ids += 1
        return self._ids

    def _injected_failure(self, n: int, markers: _Markers, text: str) -> int | None:
        """Status to fail with for API request number n, or None."""
        if markers.fail_status is not None:
            if markers.fail_times is None:
                return markers.fail_status
            # A qualified marker counts for its model alone, so that "[[fail:503:1@a]] [[fail:503:1@b]]" fails
            # the first request to each of a and b; an unqualified one counts every model's requests.
            key = (markers.fail_model, text)
            seen = self.fail_seen.get(key, 0) + 1
            self.fail_seen[key] = seen
            if seen <= markers.fail_times:
                return markers.fail_status
        rate = self.fail_rate
        if rate > 0.0 and math.floor(n * rate) > math.floor((n - 1) * rate):
            return self.fail_status
        return None

    async def _delay(self, markers: _Markers) -> None:
        ms = self.latency_ms + markers.sleep_ms
        if ms > 0:
            await asyncio.sleep(ms / 1000.0)

    @staticmethod
    async def _read_json(request: Request) -> dict[str, Any]:
        raw = await request.body()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise _BadRequest("request body is not valid JSON") from exc
        if not isinstance(body, dict):
            raise _BadRequest("request body must be a JSON object")
        return body

    @staticmethod
    def _azure_deployment(request: Request) -> str | None:
        """The deployment an Azure route names (None on /openai/moderations), once ``api-version`` is checked.

        Azure rejects a call without an API version before looking at anything else, so this comes first.
        """
        if not request.query_params.get("api-version"):
            raise _BadRequest("Missing required query parameter 'api-version'", "api-version")
        deployment = request.path_params.get("deployment")
        return deployment if isinstance(deployment, str) else None

    @staticmethod
    def _platform_body(body: Mapping[str, Any]) -> None:
        """Bedrock and Vertex take the Messages body with the API version in it instead of in a header."""
        version = body.get("anthropic_version")
        if not isinstance(version, str) or not version:
            raise _BadRequest("anthropic_version: Field required", "anthropic_version")

    # -- steps shared by every API endpoint -----------------------------------------------------------------

    def _start(self, request: Request, *, anthropic: bool = False) -> _Call:
        """Counts an API request and gives it its number and id, before anything can go wrong with it.

        The request is accounted under its URL-decoded path, so each deployment / model id of the platform
        routes has its own line in the stats.
        """
        self.api_requests += 1
        path = request.scope["path"]
        return _Call(path=path, anthropic=anthropic, number=self.api_requests, rid=self._next_id())

    def _error(
        self,
        call: _Call,
        status: int,
        message: str,
        headers: Mapping[str, str],
        param: str | None = None,
        code: str | None = None,
    ) -> Response:
        """Error response in the shape of the request's API (``param`` and ``code`` exist only in OpenAI's)."""
        self._count(call.path, status)
        error_type = _error_type(status, anthropic=call.anthropic)
        body: dict[str, Any]
        if call.anthropic:
            body = {"type": "error", "error": {"type": error_type, "message": message}}
        else:
            body = {"error": {"message": message, "type": error_type, "param": param, "code": code}}
        return _json_response(body, status, headers)

    async def _malformed(self, call: _Call, exc: _BadRequest) -> Response:
        """400 for a request that could not be parsed: after the global latency, never an injected failure."""
        await self._delay(_NO_MARKERS)
        request_id = f"req_{call.rid:024x}"
        headers = {"request-id": request_id} if call.anthropic else {"x-request-id": request_id}
        return self._error(call, exc.status, exc.message, headers, exc.param)

    async def _screen(self, call: _Call, texts: list[str], model: str) -> Response | None:
        """Applies the markers in a parsed request's text, then any injected failure and the latency.

        Returns the injected failure's error response, or None when the request is to be answered. Either
        way ``call.markers`` and ``call.headers`` are set afterwards.
        """
        search = "\n".join(texts)
        call.markers = _parse_markers(search, model)
        request_id = f"req_{call.rid:024x}"
        call.headers = {"x-request-id": request_id}
        if call.markers.retry_after is not None:
            call.headers["retry-after"] = call.markers.retry_after
        if call.anthropic:
            call.headers["request-id"] = request_id
        failure = self._injected_failure(call.number, call.markers, search)
        await self._delay(call.markers)
        if failure is None:
            return None
        return self._error(call, failure, f"injected failure (HTTP {failure})", call.headers)

    def _refusal(self, call: _Call, chat: _Chat) -> Response | None:
        """The 400 a real provider gives a chat it will not run: prompt too long, or against its content policy.

        Checked after :meth:`_screen` let the request through, so an injected failure wins over these.
        """
        prompt = chat.prompt_tokens
        window = self.context_windows.get(chat.model)
        if call.markers.context or (window is not None and prompt > window):
            limit = window if window is not None else prompt - 1
            if call.anthropic:
                message = f"prompt is too long: {prompt} tokens > {limit} maximum"
            else:
                message = (
                    f"This model's maximum context length is {limit} tokens. However, your messages resulted in "
                    f"{prompt} tokens. Please reduce the length of the messages."
                )
            return self._error(call, 400, message, call.headers, "messages", _CONTEXT_CODE)
        if call.markers.policy:
            message = _ANTHROPIC_POLICY_MESSAGE if call.anthropic else _OPENAI_POLICY_MESSAGE
            return self._error(call, 400, message, call.headers, None, _POLICY_CODE)
        return None

    async def _screen_chat(self, call: _Call, chat: _Chat) -> Response | None:
        """:meth:`_screen` for a chat request, then :meth:`_refusal`: the error to answer with, or None."""
        failure = await self._screen(call, chat.texts, chat.model)
        return failure if failure is not None else self._refusal(call, chat)

    def _ok(self, call: _Call, result: Any) -> Response:
        """A JSON answer, counted in the stats like every error is."""
        self._count(call.path, 200)
        return _json_response(result, 200, call.headers)

    # -- OpenAI chat ----------------------------------------------------------------------------------------

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
        return _stream(head, content, tail, call.markers.break_after, call.headers)

    # -- OpenAI embeddings / moderations --------------------------------------------------------------------

    @staticmethod
    def _input_texts(value: Any, *, allow_parts: bool) -> list[str]:
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and value:
            texts: list[str] = []
            for item in value:
                if isinstance(item, str):
                    texts.append(item)
                elif allow_parts and isinstance(item, dict):
                    text = item.get("text") if item.get("type") == "text" else ""
                    texts.append(text if isinstance(text, str) else "")
                else:
                    raise _BadRequest("'input' must be a string or an array of strings", "input")
            return texts
        raise _BadRequest("'input' must be a string or a non-empty array of strings", "input")

    async def embeddings(self, request: Request) -> Response:
        return await self._embeddings(request, azure=False)

    async def azure_embeddings(self, request: Request) -> Response:
        return await self._embeddings(request, azure=True)

    async def _embeddings(self, request: Request, *, azure: bool) -> Response:
        call = self._start(request)
        try:
            deployment = self._azure_deployment(request) if azure else None
            body = await self._read_json(request)
            model = deployment if deployment is not None else body.get("model")
            if not isinstance(model, str) or not model:
                raise _BadRequest("you must provide a model parameter", "model")
            texts = self._input_texts(body.get("input"), allow_parts=False)
            dims = _positive_int(body, "dimensions") or DEFAULT_EMBEDDING_DIMENSIONS
            if dims > MAX_EMBEDDING_DIMENSIONS:
                raise _BadRequest(f"'dimensions' must be at most {MAX_EMBEDDING_DIMENSIONS}", "dimensions")
            fmt = body.get("encoding_format", "float")
            if fmt not in ("float", "base64"):
                raise _BadRequest("'encoding_format' must be 'float' or 'base64'", "encoding_format")
        except _BadRequest as exc:
            return await self._malformed(call, exc)
        failure = await self._screen(call, texts, model)
        if failure is not None:
            return failure

        data: list[dict[str, Any]] = []
        for i, text in enumerate(texts):
            packed = _embedding_bytes(text, dims)
            vector: Any = (
                base64.b64encode(packed).decode("ascii")
                if fmt == "base64"
                else list(struct.unpack(f"<{dims}f", packed))
            )
            data.append({"object": "embedding", "index": i, "embedding": vector})
        tokens = _tokens(sum(len(t) for t in texts))
        result = {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return self._ok(call, result)

    async def moderations(self, request: Request) -> Response:
        return await self._moderations(request, azure=False)

    async def azure_moderations(self, request: Request) -> Response:
        return await self._moderations(request, azure=True)

    async def _moderations(self, request: Request, *, azure: bool) -> Response:
        call = self._start(request)
        try:
            deployment = self._azure_deployment(request) if azure else None
            body = await self._read_json(request)
            texts = self._input_texts(body.get("input"), allow_parts=True)
            model = deployment or body.get("model") or DEFAULT_MODERATION_MODEL
            if not isinstance(model, str):
                raise _BadRequest("'model' must be a string", "model")
        except _BadRequest as exc:
            return await self._malformed(call, exc)
        failure = await self._screen(call, texts, model)
        if failure is not None:
            return failure

        results = []
        for text in texts:
            # each input is scored on its own, by a [[flag]] or [[flag:N]] that applies to this model
            markers = _parse_markers(text, model)
            score = 0.99 if markers.flag else markers.flag_score
            flagged = score is not None and score >= 0.5
            categories = {c: flagged and c == _FLAGGED_CATEGORY for c in MODERATION_CATEGORIES}
            scores = {c: 0.001 for c in MODERATION_CATEGORIES}
            if score is not None:
                scores[_FLAGGED_CATEGORY] = score
            results.append(
                {
                    "flagged": flagged,
                    "categories": categories,
                    "category_scores": scores,
                    "category_applied_input_types": {c: ["text"] for c in MODERATION_CATEGORIES},
                }
            )
        return self._ok(call, {"id": f"modr-{call.rid:024x}", "model": model, "results": results})

    async def models(self, request: Request) -> Response:
        self._count("/v1/models", 200)
        names = ("fake-chat", "fake-embedding", DEFAULT_MODERATION_MODEL)
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "switchyard-fake"} for m in names]
        return _json_response({"object": "list", "data": data})

    # -- Anthropic messages, also on Bedrock and Vertex ----------------------------------------------------

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
            return _stream(head, content, tail, call.markers.break_after, call.headers, media_type)
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

    # -- control --------------------------------------------------------------------------------------------

    async def healthz(self, request: Request) -> Response:
        return _json_response({"ok": True})

    async def get_control(self, request: Request) -> Response:
        return _json_response(self.settings())

    async def post_control(self, request: Request) -> Response:
        try:
            body = await self._read_json(request)
            unknown = set(body) - {"latency_ms", "fail_rate", "fail_status", "context_windows"}
            if unknown:
                raise _BadRequest(f"unknown fields: {sorted(unknown)}")
            self.configure(body)
        except _BadRequest as exc:
            return _json_response({"error": exc.message}, 400)
        except ValueError as exc:
            return _json_response({"error": str(exc)}, 400)
        return _json_response(self.settings())

    async def get_stats(self, request: Request) -> Response:
        total = sum(sum(by_status.values()) for by_status in self.stats.values())
        return _json_response({"requests": self.stats, "total": total})

    async def post_reset(self, request: Request) -> Response:
        self.reset()
        return _json_response({"ok": True})


# ---------------------------------------------------------------------------------------------------------
# Public API


def create_app(
    latency_ms: int = 0,
    fail_rate: float = 0.0,
    fail_status: int = 500,
    context_windows: Mapping[str, int] | None = None,
) -> Starlette:
    """Builds the fake provider ASGI app. Its state is reachable as ``app.state.fake`` (a FakeProvider)."""
    fake = FakeProvider(
        latency_ms=latency_ms, fail_rate=fail_rate, fail_status=fail_status, context_windows=context_windows
    )
    _install_log_filter()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        _install_log_filter()  # again, after the server configured logging
        yield

    azure = "/openai/deployments/{deployment}"
    vertex = "/projects/{project}/locations/{region}/publishers/anthropic/models/{target}"
    routes = [
        Route("/v1/chat/completions", fake.chat_completions, methods=["POST"]),
        Route("/v1/embeddings", fake.embeddings, methods=["POST"]),
        Route("/v1/moderations", fake.moderations, methods=["POST"]),
        Route("/v1/messages", fake.messages, methods=["POST"]),
        Route("/v1/models", fake.models, methods=["GET"]),
        Route(f"{azure}/chat/completions", fake.azure_chat_completions, methods=["POST"]),
        Route(f"{azure}/embeddings", fake.azure_embeddings, methods=["POST"]),
        Route(f"{azure}/moderations", fake.azure_moderations, methods=["POST"]),
        Route("/openai/moderations", fake.azure_moderations, methods=["POST"]),
        # "path" so that a model id (an inference profile ARN) holding an encoded "/" still matches
        Route("/model/{model_id:path}/invoke", fake.bedrock_invoke, methods=["POST"]),
        Route("/model/{model_id:path}/invoke-with-response-stream", fake.bedrock_invoke_stream, methods=["POST"]),
        Route(f"/v1{vertex}", fake.vertex_predict, methods=["POST"]),
        Route(vertex, fake.vertex_predict, methods=["POST"]),
        Route("/healthz", fake.healthz, methods=["GET"]),
        Route("/control", fake.get_control, methods=["GET"]),
        Route("/control", fake.post_control, methods=["POST"]),
        Route("/control/stats", fake.get_stats, methods=["GET"]),
        Route("/control/reset", fake.post_reset, methods=["POST"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.fake = fake
    return app


def run(
    host: str = "127.0.0.1",
    port: int = 8911,
    latency_ms: int = 0,
    fail_rate: float = 0.0,
    fail_status: int = 500,
    context_windows: Mapping[str, int] | None = None,
) -> None:
    """Serves the fake provider with uvicorn until interrupted."""
    app = create_app(
        latency_ms=latency_ms, fail_rate=fail_rate, fail_status=fail_status, context_windows=context_windows
    )
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, lifespan="on")


def _context_window(value: str) -> tuple[str, int]:
    """Parses ``MODEL=N``; the split is at the last "=", so a model name may contain one."""
    model, sep, size = value.rpartition("=")
    try:
        tokens = int(size)
    except ValueError:
        tokens = 0
    if not sep or not model or tokens < 1:
        raise argparse.ArgumentTypeError(f"expected MODEL=N with N a positive integer, got {value!r}")
    return model, tokens


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Switchyard fake OpenAI/Anthropic model provider")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8911)
    parser.add_argument("--latency-ms", type=int, default=0)
    parser.add_argument("--fail-rate", type=float, default=0.0)
    parser.add_argument("--fail-status", type=int, default=500)
    parser.add_argument(
        "--context-window",
        type=_context_window,
        action="append",
        default=[],
        metavar="MODEL=N",
        help="context window of MODEL in tokens (repeatable)",
    )
    args = parser.parse_args(argv)
    run(
        host=args.host,
        port=args.port,
        latency_ms=args.latency_ms,
        fail_rate=args.fail_rate,
        fail_status=args.fail_status,
        context_windows=dict(args.context_window),
    )


if __name__ == "__main__":
    main()
