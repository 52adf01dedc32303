"""What the webhook endpoints answer (documentation of the service's views; the request models are in
`service`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

DeliveryStatus = Literal["pending", "delivering", "succeeded", "failed"]


class WebhookView(BaseModel):
    id: str
    url: str
    events: list[str]
    description: str | None
    status: Literal["enabled", "disabled"]
    disabled_reason: str | None
    object_id: str | None = Field(description="The task, run or batch of a per-object webhook.")
    created_at: str
    updated_at: str


class WebhookCreated(WebhookView):
    secret: str = Field(description="Signs this subscription's deliveries; shown only now.")


class WebhookList(BaseModel):
    data: list[WebhookView]


class SigningSecret(BaseModel):
    secret: str = Field(description="Signs the deliveries of the `webhook` given on tasks, runs and batches.")


class DeliveryAttemptView(BaseModel):
    n: int
    status_code: int | None
    error: str | None
    response: str | None = Field(description="The start of the receiver's answer.")
    latency_ms: int
    started_at: str


class DeliveryView(BaseModel):
    id: str
    webhook_id: str
    event_id: int
    event_type: str
    status: DeliveryStatus
    attempt_count: int
    next_attempt_at: str | None
    last_status_code: int | None
    last_error: str | None
    created_at: str
    finished_at: str | None
    attempts: list[DeliveryAttemptView]


class DeliveryPage(BaseModel):
    data: list[DeliveryView]
    next: str | None = Field(description="The `after` of the next page; null on the last one.")
