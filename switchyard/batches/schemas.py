"""Pydantic models at the boundary: what a client sends to create a batch, and the batch object it gets."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from switchyard.webhooks.service import WebhookTarget

# The endpoints a batch (and each of its lines) may name.
ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings", "/v1/moderations", "/v1/tasks")


class BatchStatus(StrEnum):
    VALIDATING = "validating"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


TERMINAL = frozenset({BatchStatus.COMPLETED, BatchStatus.FAILED, BatchStatus.EXPIRED, BatchStatus.CANCELLED})
LIVE = (BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS, BatchStatus.FINALIZING, BatchStatus.CANCELLING)


class BatchOptions(BaseModel):
    """Task options every line of the batch runs with (a `/v1/tasks` line's own options win)."""

    model_config = ConfigDict(extra="forbid")
    provider: Annotated[str, Field(min_length=1, max_length=100)] | None = None
    max_attempts: Annotated[int, Field(ge=1, le=20)] | None = None
    timeout_s: Annotated[float, Field(gt=0, le=3600)] | None = None


class BatchCreate(BaseModel):
    """`POST /v1/batches`: OpenAI's fields, plus Switchyard's `webhook` and `options`."""

    model_config = ConfigDict(extra="forbid")
    input_file_id: Annotated[str, Field(min_length=1, max_length=40)]
    endpoint: str = Field(description="One of " + ", ".join(ENDPOINTS) + "; every line's `url` must be it.")
    completion_window: str = Field(description='Only "24h".')
    metadata: dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]] | None = Field(
        default=None, max_length=16
    )
    webhook: WebhookTarget | None = None
    options: BatchOptions | None = None


class BatchError(BaseModel):
    code: str
    message: str
    param: str | None
    line: int | None = Field(description="The input file's line (1-based) the error is on.")


class BatchErrors(BaseModel):
    object: Literal["list"]
    data: list[BatchError]


class RequestCounts(BaseModel):
    total: int
    completed: int
    failed: int


class BatchObject(BaseModel):
    """A batch, as OpenAI's `batch` object (times in Unix seconds), plus its cost and usage so far."""

    id: str
    object: Literal["batch"]
    endpoint: str
    errors: BatchErrors | None
    input_file_id: str
    completion_window: str
    status: BatchStatus
    output_file_id: str | None
    error_file_id: str | None
    created_at: int
    in_progress_at: int | None
    expires_at: int | None
    finalizing_at: int | None
    completed_at: int | None
    failed_at: int | None
    expired_at: int | None
    cancelling_at: int | None
    cancelled_at: int | None
    request_counts: RequestCounts
    metadata: dict[str, str] | None
    cost_usd: float
    usage: dict[str, Any] | None
    webhook: dict[str, Any] | None = None


class BatchPage(BaseModel):
    object: Literal["list"]
    data: list[BatchObject]
    first_id: str | None
    last_id: str | None
    has_more: bool
