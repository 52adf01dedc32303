"""OpenAI's request and response bodies, mapped to and from tasks.

The OpenAI-compatible endpoints (`gateway_api/routes/openai.py`) and the batch lines (`batches/`) both turn an
OpenAI body into a task and a finished task into OpenAI's answer: the mapping lives here, once, below both.
Nothing here does I/O; errors are the AppError hierarchy, as the endpoints answer them.
"""

from __future__ import annotations

import base64
import struct
import time
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from switchyard.core.config import AppConfig
from switchyard.core.errors import (
    AppError,
    BudgetExceeded,
    Conflict,
    ContentBlocked,
    GatewayTimeout,
    GuardrailUnavailable,
    InvalidRequest,
    MalformedRequest,
    NotFound,
    RateLimited,
    ServiceUnavailable,
    UpstreamFailed,
)
from switchyard.core.validation import invalid_request
from switchyard.tasks.schemas import TaskCreate

# Request fields of OpenAI's that are about the exchange rather than the model call.
EXCHANGE_FIELDS = ("model", "stream", "stream_options", "metadata", "store", "service_tier", "guardrails")
EMBEDDING_FIELDS = frozenset({"model", "input", "encoding_format", "dimensions", "user", "guardrails"})


# --- requests -----------------------------------------------------------------------------------------------------


def require_model(body: dict[str, Any]) -> str:
    """The body's `model`, which every OpenAI request but a moderation names."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise MalformedRequest("model is required", param="model")
    return model


def task_create(
    task_type: str, model: str, task_input: dict[str, Any], *, metadata: dict[str, Any] | None = None, **options: Any
) -> TaskCreate:
    """The task an OpenAI request runs as; a bad input is a 400 (a 404 for the model) as OpenAI says it."""
    try:
        return TaskCreate.model_validate(
            {
                "type": task_type,
                "model": model,
                "input": task_input,
                "options": {k: v for k, v in options.items() if v is not None},
                "metadata": metadata or {},
            }
        )
    except ValidationError as exc:
        raise openai_style(invalid_request(exc)) from None


def chat_request(body: dict[str, Any]) -> tuple[dict[str, Any], bool, bool, dict[str, Any]]:
    """(the task input, stream?, include usage?, metadata) of a chat completions request."""
    for field, value in (("logprobs", body.get("logprobs")), ("top_logprobs", body.get("top_logprobs"))):
        if value:
            raise MalformedRequest(f"{field} is not supported", param=field)
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise MalformedRequest("stream_options must be an object", param="stream_options")
    metadata = body.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise MalformedRequest("metadata must be an object", param="metadata")
    task_input = {k: v for k, v in body.items() if k not in EXCHANGE_FIELDS and k not in ("logprobs", "top_logprobs")}
    return task_input, bool(body.get("stream")), bool(options.get("include_usage")), metadata


def text_input(body: dict[str, Any]) -> str | list[str]:
    """The `input` of an embeddings or moderations request: text, or a list of texts."""
    value = body.get("input")
    if isinstance(value, str) or (isinstance(value, list) and value and all(isinstance(v, str) for v in value)):
        return value
    if isinstance(value, list) and value and all(isinstance(v, int | list) for v in value):
        raise MalformedRequest("token arrays are not supported: send the text", param="input")
    raise MalformedRequest("input must be a string or a non-empty list of strings", param="input")


def embeddings_request(body: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """(the task input, the encoding asked for) of an embeddings request."""
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise MalformedRequest("encoding_format must be 'float' or 'base64'", param="encoding_format")
    unknown = sorted(set(body) - EMBEDDING_FIELDS)
    if unknown:
        raise MalformedRequest("unknown field", param=unknown[0])
    task_input: dict[str, Any] = {"input": text_input(body)}
    if body.get("dimensions") is not None:
        task_input["dimensions"] = body["dimensions"]
    return task_input, encoding


def moderation_model(config: AppConfig, body: dict[str, Any]) -> str:
    """OpenAI's `model` is optional on moderations: the first moderation model of the config stands in."""
    model = body.get("model") or next((n for n, m in config.models.items() if m.type == "moderate"), None)
    if model is None:
        raise MalformedRequest("no moderation model is configured", param="model")
    if not isinstance(model, str):
        raise MalformedRequest("model must be a string", param="model")
    return model


def task_of_request(config: AppConfig, url: str, body: dict[str, Any]) -> TaskCreate:
    """The task of a non-streamed OpenAI request to `url` (a batch line's), validated as the endpoint does."""
    if url == "/v1/chat/completions":
        task_input, stream, _, metadata = chat_request(body)
        if stream:
            raise MalformedRequest("stream is not supported in a batch", param="stream")
        return task_create(
            "chat", require_model(body), task_input, metadata=metadata, guardrails=body.get("guardrails")
        )
    if url == "/v1/embeddings":
        task_input, encoding = embeddings_request(body)
        # The encoding is how the answer is written, not part of the call: kept with the task's metadata.
        return task_create(
            "embed",
            require_model(body),
            task_input,
            metadata={"encoding_format": encoding},
            guardrails=body.get("guardrails"),
        )
    if url == "/v1/moderations":
        return task_create(
            "moderate", moderation_model(config, body), {"input": text_input(body)}, guardrails=body.get("guardrails")
        )
    raise MalformedRequest(f"unsupported url '{url}'", param="url")


# --- responses ----------------------------------------------------------------------------------------------------


def usage(task: dict[str, Any]) -> dict[str, Any]:
    """A task's usage as OpenAI's chat `usage`."""
    u = task.get("usage") or {}
    prompt, completion = int(u.get("input_tokens", 0)), int(u.get("output_tokens", 0))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": int(u.get("cached_input_tokens", 0))},
    }


def created(task: dict[str, Any]) -> int:
    return int(datetime.fromisoformat(task["created_at"]).timestamp()) if task.get("created_at") else int(time.time())


def chat_completion(task: dict[str, Any], model: str) -> dict[str, Any]:
    """A succeeded chat task as OpenAI's `chat.completion`."""
    result = task["result"]
    message: dict[str, Any] = {"role": "assistant", "content": result.get("content"), "refusal": None}
    if result.get("tool_calls"):
        message["tool_calls"] = result["tool_calls"]
    return {
        "id": f"chatcmpl-{task['id']}",
        "object": "chat.completion",
        "created": created(task),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": result.get("finish_reason"), "logprobs": None}],
        "usage": usage(task),
        "system_fingerprint": None,
    }


def embedding_list(task: dict[str, Any], model: str, encoding: str) -> dict[str, Any]:
    """A succeeded embed task as OpenAI's embeddings `list`."""
    vectors = task["result"]["embeddings"]
    data = [
        {"object": "embedding", "index": i, "embedding": encode_vector(vector) if encoding == "base64" else vector}
        for i, vector in enumerate(vectors)
    ]
    tokens = int((task.get("usage") or {}).get("input_tokens", 0))
    return {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def encode_vector(vector: list[float]) -> str:
    """OpenAI's base64 encoding: little-endian float32."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def moderation(task: dict[str, Any], model: str) -> dict[str, Any]:
    """A succeeded moderate task as OpenAI's moderation answer."""
    result = task["result"]
    results = result.get("results") or [
        {"flagged": result["flagged"], "categories": result["categories"], "category_scores": result["category_scores"]}
    ]
    return {"id": f"modr-{task['id']}", "model": model, "results": results}


def response_body(url: str, task: dict[str, Any]) -> dict[str, Any]:
    """A succeeded task as the endpoint at `url` answers it (`/v1/tasks`: the task itself)."""
    if url == "/v1/chat/completions":
        return chat_completion(task, task["model"])
    if url == "/v1/embeddings":
        return embedding_list(task, task["model"], str(task.get("metadata", {}).get("encoding_format") or "float"))
    if url == "/v1/moderations":
        return moderation(task, task["model"])
    return task


# --- errors -------------------------------------------------------------------------------------------------------


def failure(task: dict[str, Any], *, invalid: type[AppError] = InvalidRequest) -> AppError:
    """A finished task that did not succeed, as the error a synchronous caller gets."""
    error = task["error"] or {"type": "provider_error", "message": task["status"]}
    kind = error["type"]
    message = f"task {task['id']} {task['status']}: {error['message']}"
    exc: AppError
    if kind == "content_blocked":
        exc = ContentBlocked(message)
    elif kind in ("invalid_request", "context_length_exceeded"):
        exc = invalid(message)
    elif kind == "rate_limited":
        exc = RateLimited(message)
    elif kind == "budget_exceeded":
        exc = BudgetExceeded(message)
    elif kind == "timeout":
        exc = GatewayTimeout(message)
    elif kind == "unavailable":
        exc = ServiceUnavailable(message)
    elif kind == "guardrail_unavailable":
        exc = GuardrailUnavailable(message)
    elif kind == "canceled":
        exc = Conflict(message)
    else:
        exc = UpstreamFailed(message)
    exc.code = kind
    exc.headers["x-switchyard-task-id"] = task["id"]
    return exc


def openai_style(exc: InvalidRequest) -> AppError:
    """Our 422 for a bad task input, as OpenAI's endpoints say it: a 400 naming the request's own field
    (`messages[0].role`, not `input.messages[0].role`; `guardrails.pii.mode`, not `options.guardrails...`),
    a 404 for an unknown model."""
    param = (exc.param or "").removeprefix("input.").removeprefix("options.")
    message = exc.message.replace("input.", "").replace("options.guardrails", "guardrails")
    if exc.param == "model":
        return NotFound(message, param="model", code="model_not_found")
    return MalformedRequest(message, param=param or None)
