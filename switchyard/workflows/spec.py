"""The workflow definition as users write it (JSON or YAML), before validation of its graph and templates."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from switchyard.core.guardrail_spec import Guardrails

StepId = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$")]


class StepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: StepId
    type: Literal["chat", "embed", "moderate", "predict"]
    model: Annotated[str, Field(min_length=1, max_length=200)]
    # The task input of the step's type; strings in it are templates over input, steps.<id>.output and item.
    input: dict[str, Any]
    depends_on: list[StepId] = Field(default_factory=list)
    retries: Annotated[int, Field(ge=0, le=10)] = 0
    timeout_s: Annotated[float, Field(gt=0, le=3600)] | None = None
    when: str | None = None
    on_failure: Literal["fail", "continue"] = "fail"
    for_each: str | None = None
    max_parallel: Annotated[int, Field(ge=1, le=1000)] | None = None
    # The step's guardrails: each kind set here replaces the model's and the top level's (config file).
    guardrails: Guardrails | None = None


class WorkflowSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")]
    description: str | None = None
    steps: list[StepSpec] = Field(min_length=1, max_length=500)
    output: Any = None
