"""OpenAI-compatible endpoints: `/v1/chat/completions` (also streamed), `/v1/embeddings`, `/v1/moderations`.

Existing code and the official SDK work by changing `base_url`. Each request runs as a task through the
workers like any other (routed, retried, failed over, costed and recorded); the response is OpenAI's shape
with `x-switchyard-task-id` and `x-switchyard-cost-usd`. A streamed answer's chunks come from the worker
over Redis (embedded mode: a local socket) as the provider produces them: a provider failing before the first
chunk is failed over out of sight; a stream that breaks after chunks were sent ends with an error event,
never with `[DONE]`.

A reversible PII guardrail runs here: the task (and so the provider and the database) holds placeholders, and
this process alone keeps the values, for the time of the request, to put them back into the answer and its
chunks on the way out.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse

from switchyard.core.errors import AppError, InvalidRequest, MalformedRequest
from switchyard.core.ids import new_id
from switchyard.events.feed import FeedEvent, Following, object_key
from switchyard.gateway_api import sync
from switchyard.gateway_api.api_docs import errors, request_body
from switchyard.gateway_api.bodies import unparsed_body_error
from switchyard.gateway_api.deps import Member, StateDep, admission
from switchyard.gateway_api.responses import FastJSONResponse, error_response
from switchyard.gateway_api.schemas import (
    CHAT_STREAM_DESCRIPTION,
    ChatCompletion,
    ChatCompletionRequest,
    EmbeddingList,
    EmbeddingRequest,
    ModerationRequest,
    ModerationResponse,
    sse_event_schema,
)
from switchyard.gateway_api.state import ApiState
from switchyard.guardrails.pii import Restorer, map_result
from switchyard.tasks import openai_mapping as mapping
from switchyard.tasks.schemas import TaskCreate
from switchyard.tenancy.service import Principal

router = APIRouter(tags=["openai"])

# Errors of a request that runs as a task and is waited for (the model unknown: a 404, as OpenAI says it).
_SYNC_ERRORS = errors(404, 409, 429, 502, 503, 504)


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        raise unparsed_body_error(request, MalformedRequest("request body is not valid JSON", param="body")) from None
    if not isinstance(body, dict):
        raise unparsed_body_error(request, MalformedRequest("request body must be a JSON object", param="body"))
    mapping.require_model(body)
    return body


async def _submit(
    state: ApiState, principal: Principal, body: TaskCreate, request: Request, task_id: str | None = None
) -> tuple[str, Restorer | None]:
    """The task's id, and the restorer of a reversible PII guardrail's values (None: nothing to restore)."""
    try:
        created = await sync.submit(state, principal, body, request, task_id=task_id, restorable=True)
    except InvalidRequest as exc:
        raise sync.openai_style(exc) from None
    return created.task.id, Restorer(created.vault) if created.vault else None


async def _finished(state: ApiState, principal: Principal, task_id: str) -> dict[str, Any]:
    task = await sync.wait_for(state, principal, task_id, state.settings.sync_wait_s)
    if task["status"] != "succeeded":
        raise sync.failure(task, invalid=MalformedRequest)
    return task


# --- chat ---------------------------------------------------------------------------------------------------------


# The bodies are read by the endpoints themselves (faster than FastAPI's parsing): openapi_extra documents them.
@router.post(
    "/v1/chat/completions",
    dependencies=[admission()],
    response_model=ChatCompletion,
    responses={
        200: {"content": {"text/event-stream": {"schema": sse_event_schema(CHAT_STREAM_DESCRIPTION, named=False)}}},
        **_SYNC_ERRORS,
    },
    openapi_extra=request_body(ChatCompletionRequest),
)
async def chat_completions(request: Request, principal: Member, state: StateDep) -> Response:
    """OpenAI's chat completions, streamed or not: runs as a chat task (routed, retried, costed, recorded).

    The answer carries `x-switchyard-task-id` and `x-switchyard-cost-usd`."""
    body = await _json_object(request)
    task_input, stream, include_usage, metadata = mapping.chat_request(body)
    model = body["model"]
    task_body = mapping.task_create(
        "chat",
        model,
        task_input,
        metadata=metadata,
        stream=True if stream else None,
        guardrails=body.get("guardrails"),  # extra_body={"guardrails": ...} with the openai SDK
    )
    if not stream:
        with state.waiters.hold(principal.tenant_id):
            task_id, restorer = await _submit(state, principal, task_body, request)
            task = await _finished(state, principal, task_id)
        if restorer is not None:
            task = {**task, "result": map_result("chat", task["result"], restorer.restore)}
        return FastJSONResponse(mapping.chat_completion(task, model), headers=sync.task_headers(task, request))
    return await _stream(request, principal, state, task_body, model, include_usage)


async def _stream(
    request: Request, principal: Principal, state: ApiState, body: TaskCreate, model: str, include_usage: bool
) -> Response:
    task_id = new_id("task")
    # A streamed answer waits as long as a synchronous one: it holds a waiter's place until it ends.
    state.waiters.enter(principal.tenant_id)
    following = Following(state.hub, principal.tenant_id, object_key("task", task_id), max_queue=100_000)
    try:
        await following.__aenter__()  # listening before the task exists: its first chunk cannot be missed
    except BaseException:
        state.waiters.leave(principal.tenant_id)
        raise
    try:
        created, restorer = await _submit(state, principal, body, request, task_id=task_id)
        replayed = created != task_id
        if replayed:  # an Idempotency-Key replay: follow that task from its start
            await following.__aexit__()
            task_id = created
            following = Following(state.hub, principal.tenant_id, object_key("task", task_id), max_queue=100_000)
            await following.__aenter__()
        events = following.events(since=0 if replayed else None)
        chunks = _chunks(state, principal, task_id, model, include_usage, events, restorer)
        # Nothing is sent until the first chunk is known: a task that fails before any text answers with
        # its error status, like a non-streamed request.
        try:
            first = await anext(chunks)
        except _FailedBeforeText as failed:
            await following.__aexit__()
            state.waiters.leave(principal.tenant_id)
            return error_response(failed.error)
    except BaseException:
        await following.__aexit__()
        state.waiters.leave(principal.tenant_id)
        raise

    async def body_stream() -> AsyncIterator[bytes]:
        try:
            yield first
            async for chunk in chunks:
                yield chunk
        finally:
            await following.__aexit__()
            state.waiters.leave(principal.tenant_id)

    headers = {"x-switchyard-task-id": task_id, "cache-control": "no-cache", "x-accel-buffering": "no"}
    headers.update(getattr(request.state, "ratelimit_headers", None) or {})
    return StreamingResponse(body_stream(), media_type="text/event-stream", headers=headers)


class _FailedBeforeText(Exception):
    def __init__(self, error: AppError) -> None:
        super().__init__(error.message)
        self.error = error


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


async def _chunks(
    state: ApiState,
    principal: Principal,
    task_id: str,
    model: str,
    include_usage: bool,
    events: AsyncIterator[FeedEvent],
    restorer: Restorer | None = None,
) -> AsyncIterator[bytes]:
    """The task's events as chat.completion.chunk events (with a reversible guardrail's values put back: a
    placeholder cut over chunks is held back until it is whole)."""
    base = {"id": f"chatcmpl-{task_id}", "object": "chat.completion.chunk", "created": int(time.time()), "model": model}

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        return _sse(
            {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]}
        )

    sent: list[str] = []  # the text as the task has it (placeholders, when restored)
    restoring = restorer.stream() if restorer is not None else None

    def restored(text: str) -> str:
        return restoring.feed(text) if restoring is not None else text

    def held() -> str:
        return restoring.flush() if restoring is not None else ""

    async for event in events:
        if event.seq is None:  # a text chunk
            if event.view["data"]["index"] != len(sent):
                continue  # one was lost on the way: what follows it comes from the final text, sent once
            if not sent:
                yield chunk({"role": "assistant", "content": ""})
            text = str(event.view["data"]["content"])
            sent.append(text)
            if out := restored(text):
                yield chunk({"content": out})
            continue
        if not event.terminal:
            continue
        task = event.view["data"]
        if "status" not in task or "result" not in task:  # a minimal terminal event: read the task whole
            task = await sync.read(state, principal, task_id)
        if task["status"] != "succeeded":
            error = sync.failure(task, invalid=MalformedRequest)
            if not sent:
                raise _FailedBeforeText(error)
            if tail := held():
                yield chunk({"content": tail})
            # Text went out already: the client must learn that the answer is cut short, not see it end.
            yield _sse({"error": {"type": error.type, "message": error.message, "param": None, "code": error.code}})
            return
        result = task["result"]
        content = result.get("content") or ""
        if not sent:
            yield chunk({"role": "assistant", "content": ""})
        # Chunks lost on the way are made up from the final text.
        streamed = "".join(sent)
        if content != streamed:
            rest = content[len(streamed) :] if content.startswith(streamed) else content
            if rest and (out := restored(rest)):
                yield chunk({"content": out})
        if tail := held():
            yield chunk({"content": tail})
        if result.get("tool_calls"):
            if restorer is not None:
                result = map_result("chat", result, restorer.restore)
            calls = [{"index": i, **call} for i, call in enumerate(result["tool_calls"])]
            yield chunk({"tool_calls": calls})
        yield chunk({}, result.get("finish_reason") or "stop")
        if include_usage:
            yield _sse({**base, "choices": [], "usage": mapping.usage(task)})
        yield b"data: [DONE]\n\n"
        return


# --- embeddings and moderations -------------------------------------------------------------------------------


@router.post(
    "/v1/embeddings",
    dependencies=[admission()],
    response_model=EmbeddingList,
    responses=_SYNC_ERRORS,
    openapi_extra=request_body(EmbeddingRequest),
)
async def embeddings(request: Request, principal: Member, state: StateDep) -> Response:
    """OpenAI's embeddings (float or base64): runs as an embed task."""
    body = await _json_object(request)
    task_input, encoding = mapping.embeddings_request(body)
    task_body = mapping.task_create("embed", body["model"], task_input, guardrails=body.get("guardrails"))
    with state.waiters.hold(principal.tenant_id):
        task = await _finished(state, principal, (await _submit(state, principal, task_body, request))[0])
    payload = mapping.embedding_list(task, body["model"], encoding)
    return FastJSONResponse(payload, headers=sync.task_headers(task, request))


@router.post(
    "/v1/moderations",
    dependencies=[admission()],
    response_model=ModerationResponse,
    responses=_SYNC_ERRORS,
    openapi_extra=request_body(ModerationRequest),
)
async def moderations(request: Request, principal: Member, state: StateDep) -> Response:
    """OpenAI's moderations: runs as a moderate task."""
    try:
        raw = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        raise unparsed_body_error(request, MalformedRequest("request body is not valid JSON", param="body")) from None
    if not isinstance(raw, dict):
        raise unparsed_body_error(request, MalformedRequest("request body must be a JSON object", param="body"))
    model = mapping.moderation_model(state.config, raw)
    task_body = mapping.task_create(
        "moderate", model, {"input": mapping.text_input(raw)}, guardrails=raw.get("guardrails")
    )
    with state.waiters.hold(principal.tenant_id):
        task = await _finished(state, principal, (await _submit(state, principal, task_body, request))[0])
    return FastJSONResponse(mapping.moderation(task, model), headers=sync.task_headers(task, request))
