"""What `GET /v1/budget` answers."""

from __future__ import annotations

from pydantic import BaseModel, Field


class BudgetWindowView(BaseModel):
    """One UTC window (a day, a calendar month) of a key's or tenant's budget."""

    limit_usd: float | None = Field(description="The budget of the window; null: no budget (spend is shown).")
    spent_usd: float = Field(description="Settled cost of the calls admitted in the window.")
    reserved_usd: float = Field(description="Worst-case cost held by calls admitted and not yet ended.")
    left_usd: float | None = Field(description="limit - spent - reserved (never below 0); null without a limit.")
    resets_at: str = Field(description="When the window ends (UTC, ISO 8601).")


class BudgetScopeView(BaseModel):
    """A key's or a tenant's limits and budget windows (its tier resolved)."""

    id: str
    tier: str | None
    limits: dict[str, int]
    max_per_call_usd: float | None
    windows: dict[str, BudgetWindowView] = Field(description="`daily` and `monthly`.")


class BudgetView(BaseModel):
    """The caller's key and its tenant."""

    key: BudgetScopeView
    tenant: BudgetScopeView
