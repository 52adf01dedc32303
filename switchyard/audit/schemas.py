"""What the audit endpoint answers."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class AuditEntryView(BaseModel):
    id: int = Field(description="Increases with time: the cursor of the pages.")
    actor: str = Field(description="Who did it: a key id, `jwt:<subject>`, or `cli`.")
    action: str = Field(description="What was done, such as `key.create`, `tenant.budget.update`, `webhook.delete`.")
    target_type: str = Field(description="`key`, `tenant`, `webhook` or `workflow`.")
    target_id: str | None
    before: dict[str, Any] | None = Field(description="The object before the change (null when it was created).")
    after: dict[str, Any] | None = Field(description="The object after the change (null when it was removed).")
    created_at: str


class AuditPage(BaseModel):
    data: list[AuditEntryView]
    next: int | None = Field(description="The `after` of the next page; null on the last one.")
