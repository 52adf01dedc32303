"""What the workflow endpoints answer (documentation of the service's views; the request models are
`spec.WorkflowSpec` and the route's `RunCreate`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from switchyard.tasks.schemas import ObjectWebhook

RunStatus = Literal["queued", "running", "succeeded", "failed", "canceled"]
StepStatus = Literal["pending", "queued", "running", "succeeded", "failed", "skipped", "canceled"]


class WorkflowView(BaseModel):
    id: str
    name: str
    version: int = Field(description="Each registration of a name is a new version.")
    shared: bool = Field(description="Shipped in config/workflows/, visible to every tenant.")
    created_at: str
    definition: dict[str, Any] = Field(description="The definition as registered (a WorkflowSpec).")


class WorkflowList(BaseModel):
    data: list[WorkflowView] = Field(description="The latest version of each name.")


class Progress(BaseModel):
    done: int
    total: int


class StepView(BaseModel):
    status: StepStatus
    output: Any
    error: dict[str, Any] | None
    task_ids: list[str]
    cost_usd: float
    started_at: str | None
    finished_at: str | None


class RunView(BaseModel):
    id: str
    workflow: str
    version: int
    status: RunStatus
    input: dict[str, Any]
    output: Any
    error: dict[str, Any] | None
    progress: Progress
    steps: dict[str, StepView]
    cost_usd: float
    usage: dict[str, Any] | None
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    webhook: ObjectWebhook | None


class RunPage(BaseModel):
    data: list[RunView]
    next: str | None = Field(description="The `after` of the next page; null on the last one.")
