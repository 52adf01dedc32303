"""Models of the HTTP edge's own shapes, for the OpenAPI document: the error shape, health, models, providers,
events, predictions and the OpenAI-compatible requests and answers.

Endpoints build their answers as plain dicts (rendered by orjson, never validated on the way out): these
models only describe them. The request models of the OpenAI-compatible routes and of `/v1/predict` extend the
models those routes check their input with, so the documented fields are the accepted ones.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from switchyard.core.guardrail_spec import Guardrails
from switchyard.tasks.schemas import ChatInput, EmbedInput, JsonScalar, ModerateInput, PredictInput, TaskOptions

# --- errors -------------------------------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    type: str = Field(description="A category: invalid_request_error, authentication_error, not_found_error, ...")
    message: str = Field(description="What is wrong, in words.")
    param: str | None = Field(description="The request field it concerns, as the client wrote it.")
    code: str | None = Field(description="A finer reason, when there is one (model_not_found, rate_limited, ...).")


class ErrorResponse(BaseModel):
    """Every error leaves in this shape, the one the openai SDK parses."""

    error: ErrorDetail


# --- health ---------------------------------------------------------------------------------------------------------


class Health(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    status: Literal["ready"]
    checks: dict[str, str] = Field(
        description="`ok`, or what is wrong, for the database, broker, Redis and the files storage."
    )
    duties: dict[str, Any] = Field(description="When each periodic duty last ran.")


class NotReady(ErrorResponse):
    checks: dict[str, str]
    duties: dict[str, Any] | None = None


# --- models and providers -------------------------------------------------------------------------------------------


class TensorView(BaseModel):
    name: str
    dtype: str
    shape: list[int | None] = Field(description="null: a dimension of any size (the batch, usually).")


class SignatureView(BaseModel):
    inputs: list[TensorView]
    outputs: list[TensorView]


class ModelView(BaseModel):
    id: str = Field(description="The logical model's name, as requests give it.")
    object: Literal["model"]
    created: int
    owned_by: str
    type: Literal["chat", "embed", "moderate", "predict"]
    providers: list[str]
    signature: SignatureView | None = Field(default=None, description="ML models served in process only.")


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelView]


class BreakerView(BaseModel):
    state: Literal["closed", "open", "half_open"]
    open_until: str | None
    window_s: float
    ok: int
    failed: int


class LatencyView(BaseModel):
    p50: float | None
    p95: float | None
    samples: int


class PriceView(BaseModel):
    """A deployment's prices: USD per million tokens, per thousand predictions, per second of model compute.
    Keys the configuration leaves unset are left out."""

    input: float
    output: float
    cached_input: float | None = None
    cache_write: float | None = None
    per_1k_predictions: float
    per_compute_second: float
    batch: PriceView | None = Field(default=None, description="What batch lines pay instead, when set.")


class DeploymentStatus(BaseModel):
    deployment: str
    provider: str
    kind: str
    model: str
    models: list[str] = Field(description="The logical models this deployment serves.")
    breaker: BreakerView
    success_rate: float | None
    latency_ms: LatencyView
    in_flight: int
    rpm: int | None
    tpm: int | None
    rpm_remaining: int | None
    tpm_remaining: int | None
    max_input_tokens: int | None
    price: PriceView


class DeploymentList(BaseModel):
    data: list[DeploymentStatus]


# --- events ---------------------------------------------------------------------------------------------------------


class EventView(BaseModel):
    id: int = Field(description="Increases monotonically within a tenant; `since` and `Last-Event-ID` take it.")
    type: str = Field(description="task.queued, task.succeeded, run.step.failed, ...")
    task_id: str | None
    run_id: str | None
    step_id: str | None
    batch_id: str | None
    data: dict[str, Any] = Field(description="A terminal event holds the full object.")
    created_at: str


class EventPage(BaseModel):
    data: list[EventView]
    next: int | None = Field(description="The `since` of the next page; null on the last one.")


SSE_DESCRIPTION = (
    "Server-Sent Events: each event has `id:` (the event id, to resume with `Last-Event-ID`), `event:` (its type) "
    "and `data:` (the event as `GET /v1/events` shows it, one JSON line). The stream ends after the object's "
    "terminal event; a comment line is sent every 15 s of quiet."
)


def sse_event_schema(description: str, *, named: bool) -> dict[str, Any]:
    """The schema of one Server-Sent Event, its fields as a client's parser reads them (OpenAPI before 3.2 has a
    `text/event-stream` answer's `schema` describe each event): `named` streams give each event an `event:`."""
    schema: dict[str, Any] = {
        "type": "object",
        "description": description,
        "properties": {
            "id": {"type": "string", "description": "The event id (resume with `Last-Event-ID`)."},
            "event": {"type": "string", "description": "The event's type."},
            "data": {"type": "string", "description": "One line of JSON (or `[DONE]` at the end of a chat stream)."},
            "retry": {"type": "integer"},
        },
        "required": ["event", "data"] if named else ["data"],
    }
    return schema


# --- predict --------------------------------------------------------------------------------------------------------


class PredictRequest(PredictInput):
    """`inputs` maps each input name to a (nested) array, or `images` lists base64 image files (a model with
    `image:` preprocessing); `options` are a task's options."""

    options: TaskOptions | None = None


class PredictResponse(BaseModel):
    outputs: dict[str, Any]
    model: str
    latency_ms: float
    task_id: str
    provider: str | None
    batch_size: int | None = Field(description="How many rows the model ran together with this request's.")
    cost_usd: float
    version: str | None = Field(default=None, description="The version that answered (models with versions).")
    top_k: list[list[dict[str, Any]]] | None = Field(
        default=None, description="Models with `labels`: per row, the best labels with their scores, best first."
    )


class ModelVersion(BaseModel):
    version: str
    weight: float = Field(description="Its share of the traffic, relative to the other versions' weights.")
    deployments: list[str]
    signature: dict[str, Any] | None


class ModelDetail(BaseModel):
    id: str
    object: str
    type: str
    providers: list[str]
    signature: dict[str, Any] | None = None
    labels: list[str] | None = None
    image: dict[str, Any] | None = None
    versions: list[ModelVersion] | None = None


class ModelWeightsUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weights: dict[str, Any] = Field(
        description="{version: weight >= 0}; a version left out gets 0.", examples=[{"1": 10, "2": 90}]
    )


# --- OpenAI-compatible ----------------------------------------------------------------------------------------------


# `extra_body={"guardrails": ...}` with the openai SDK.
_GUARDRAILS = "This call's guardrails (pii, moderation): each kind replaces the model's and the config file's."


class StreamOptions(BaseModel):
    include_usage: bool | None = None


class ChatCompletionRequest(ChatInput):
    """OpenAI's chat completions request: the model call's fields, and those about the exchange."""

    model: Annotated[str, Field(min_length=1, max_length=200)] = Field(description="A logical model's name.")
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    metadata: dict[Annotated[str, Field(max_length=64)], JsonScalar] | None = Field(default=None, max_length=50)
    store: Any = Field(default=None, description="Accepted and ignored.")
    service_tier: Any = Field(default=None, description="Accepted and ignored.")
    logprobs: Literal[False] | None = Field(default=None, description="Not supported: only false or null.")
    top_logprobs: Literal[0] | None = Field(default=None, description="Not supported: only 0 or null.")
    guardrails: Guardrails | None = Field(default=None, description=_GUARDRAILS)


class ChatMessageOut(BaseModel):
    role: Literal["assistant"]
    content: str | None
    refusal: None
    tool_calls: list[dict[str, Any]] | None = None


class ChatChoice(BaseModel):
    index: int
    message: ChatMessageOut
    finish_reason: str | None
    logprobs: None


class PromptTokensDetails(BaseModel):
    cached_tokens: int


class ChatUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


class ChatCompletion(BaseModel):
    """OpenAI's `chat.completion` object (the SDK parses it as its own ChatCompletion)."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: ChatUsage
    system_fingerprint: None


CHAT_STREAM_DESCRIPTION = (
    "With `stream: true`: Server-Sent Events, each `data:` a `chat.completion.chunk` object (with "
    "`stream_options.include_usage`, a last chunk with `usage` and no choices), ending with `data: [DONE]`. "
    "A stream that breaks after text was sent ends with a `data:` holding an `error` object instead."
)


class EmbeddingRequest(EmbedInput):
    model: Annotated[str, Field(min_length=1, max_length=200)] = Field(description="A logical model's name.")
    encoding_format: Literal["float", "base64"] | None = None
    user: str | None = Field(default=None, description="Accepted and ignored.")
    guardrails: Guardrails | None = Field(default=None, description=_GUARDRAILS)


class Embedding(BaseModel):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str = Field(description="base64: the little-endian float32 values.")


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class ModerationRequest(ModerateInput):
    # Other fields of OpenAI's request are ignored, as the endpoint does.
    model_config = ConfigDict(extra="ignore")

    model: Annotated[str, Field(max_length=200)] | None = Field(
        default=None, description="A logical model's name; the first moderation model of the config if left out."
    )
    guardrails: Guardrails | None = Field(
        default=None, description='This call\'s guardrails (`extra_body={"guardrails": ...}` with the openai SDK).'
    )


class ModerationResult(BaseModel):
    # The provider's other fields (category_applied_input_types, ...) pass through.
    model_config = ConfigDict(extra="allow")

    flagged: bool
    categories: dict[str, bool | None]
    category_scores: dict[str, float]


class ModerationResponse(BaseModel):
    id: str
    model: str
    results: list[ModerationResult]


class StreamTicket(BaseModel):
    """`POST /v1/ws/ticket`: a ticket for one WebSocket or SSE handshake (`?ticket=`)."""

    ticket: str = Field(description="Single use; put it in the URL as `?ticket=`.")
    expires_in: float = Field(description="Seconds it stays valid if unused.")
