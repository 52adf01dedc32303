"""Chat requests and replies, shared by the OpenAI and Anthropic chat endpoints."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from starlette.responses import Response

from switchyard.fake_provider.core import ProviderCore, _BadRequest, _Call
from switchyard.fake_provider.markers import _Markers

_WORD_RE = re.compile(r"\S+\s*|\s+")


_CONTEXT_CODE = "context_length_exceeded"
_POLICY_CODE = "content_policy_violation"
_OPENAI_POLICY_MESSAGE = (
    "Your request was rejected as a result of our safety system. "
    "Your prompt may contain text that is not allowed by our content policy."
)
_ANTHROPIC_POLICY_MESSAGE = "Output blocked by content filtering policy"


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


class ChatSteps(ProviderCore):
    """The steps both chat APIs take after the shared ones: the provider's refusals of a chat it will not run."""

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
