"""Pydantic models at the boundary: what a client may send for a task, by type."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from switchyard.core.guardrail_spec import Guardrails
from switchyard.webhooks.service import WebhookTarget

JsonScalar = str | int | float | bool | None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskOptions(_Strict):
    provider: Annotated[str, Field(min_length=1, max_length=100)] | None = None
    max_attempts: Annotated[int, Field(ge=1, le=20)] | None = None
    timeout_s: Annotated[float, Field(gt=0, le=3600)] | None = None
    # chat: stream the answer, as `task.delta` events, while the provider produces it.
    stream: bool | None = None
    # This call's guardrails: each kind set here replaces the model's and the top level's (config file).
    guardrails: Guardrails | None = None
    # predict: the version of a model with versions that must serve this task (else one is drawn by weight).
    version: Annotated[str, Field(min_length=1, max_length=64)] | None = None


class TaskCreate(_Strict):
    type: Literal["chat", "embed", "moderate", "predict"]
    model: Annotated[str, Field(min_length=1, max_length=200)]
    input: dict[str, Any]
    options: TaskOptions = TaskOptions()
    webhook: WebhookTarget | None = None
    metadata: dict[Annotated[str, Field(max_length=64)], JsonScalar] = Field(default_factory=dict, max_length=50)


# --- inputs by type -------------------------------------------------------------------------------------------


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


# What a provider's JSON can carry: a 64-bit integer at most (a larger one failed the call in the worker, again
# at each retry, while the caller waited).
_INT64 = 2**63 - 1


class ChatInput(_Strict):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: Annotated[int, Field(ge=1, le=_INT64)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1, le=_INT64)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    n: Annotated[int, Field(ge=1, le=1)] | None = None
    stop: str | list[str] | None = None
    seed: Annotated[int, Field(ge=-_INT64 - 1, le=_INT64)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    # OpenAI's range for a token's bias.
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    user: str | None = None


class EmbedInput(_Strict):
    input: str | Annotated[list[str], Field(min_length=1, max_length=2048)]
    dimensions: Annotated[int, Field(ge=1, le=8192)] | None = None


class ModerateInput(_Strict):
    input: str | Annotated[list[str], Field(min_length=1, max_length=256)]


class PredictInput(_Strict):
    """Tensors by input name, or (for a model that takes images) base64-encoded image files, one batch."""

    inputs: dict[str, Any] | None = Field(default=None, min_length=1)
    images: Annotated[list[str], Field(min_length=1, max_length=4096)] | None = None

    @model_validator(mode="after")
    def _one_of(self) -> PredictInput:
        if (self.inputs is None) == (self.images is None):
            raise ValueError("give either inputs or images")
        return self


INPUT_MODELS: dict[str, type[BaseModel]] = {
    "chat": ChatInput,
    "embed": EmbedInput,
    "moderate": ModerateInput,
    "predict": PredictInput,
}


# --- views (what the API answers; documentation of `views.py`'s dicts) -------------------------------------------

TaskStatus = Literal["queued", "running", "succeeded", "failed", "canceled"]
TaskType = Literal["chat", "embed", "moderate", "predict"]


class TaskCreated(BaseModel):
    id: str
    status: TaskStatus
    type: TaskType
    model: str
    created_at: str


class AttemptError(BaseModel):
    type: str
    message: str | None
    status_code: int | None


class AttemptUsage(BaseModel):
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int
    cache_write_tokens: int
    predictions: int | None = Field(default=None, description="ML models only.")
    compute_ms: float | None = Field(default=None, description="ML models only.")


class AttemptView(BaseModel):
    """One call to one provider deployment on the task's behalf."""

    n: int
    model: str | None = Field(description="The logical model the call was for (a fallback's, maybe).")
    provider: str
    deployment: str
    provider_model: str
    status: str
    error: AttemptError | None
    latency_ms: int
    usage: AttemptUsage
    cost_usd: float
    started_at: str | None
    finished_at: str | None


class ObjectWebhook(BaseModel):
    id: str
    url: str
    events: list[str]


class TaskView(BaseModel):
    id: str
    type: TaskType
    model: str
    status: TaskStatus
    input: dict[str, Any]
    options: dict[str, Any]
    result: dict[str, Any] | None = Field(description="By type: content, embeddings, flagged..., outputs.")
    error: dict[str, Any] | None = Field(description="`type` (provider_error, rate_limited, timeout, ...), `message`.")
    usage: dict[str, Any] | None
    cost_usd: float
    attempts: list[AttemptView]
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    metadata: dict[str, JsonScalar]
    webhook: ObjectWebhook | None
    guardrails: dict[str, Any] | None = Field(
        description="What the call's guardrails found, by kind: `pii` has the mode and, per direction "
        "(`request`, `response`), the values replaced by entity type; `moderation` has verdicts, sources and top "
        "scores. Counts and scores only, never the text."
    )
    trace_id: str | None = Field(
        default=None,
        description="The OpenTelemetry trace the task belongs to (32 hex digits): the trace of the request that "
        "created it, continued by its execution. Null when tracing is off.",
    )


class TaskPage(BaseModel):
    data: list[TaskView]
    next: str | None = Field(description="The `after` of the next page; null on the last one.")


class UsageTotal(BaseModel):
    requests: int = Field(description="Provider calls.")
    errors: int
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int
    cache_write_tokens: int
    predictions: int
    cost_usd: float


class UsageGroup(UsageTotal):
    # The group's key is under the name of `group_by` (model, provider or day).
    model_config = ConfigDict(extra="allow")

    tasks: int


class UsageReport(BaseModel):
    object: Literal["usage"]
    group_by: Literal["model", "provider", "day"]
    from_: str = Field(alias="from")
    to: str
    data: list[UsageGroup]
    total: UsageTotal
