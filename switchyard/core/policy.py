"""Limits and budgets: what a key, a tenant or a named tier of the config file may use.

They live in core because both the config file (tiers) and the tenancy records (keys, tenants) hold them."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

# Limits are stored as JSON and rendered back: a float like 9.2e29 would be taken as an int past what any
# answer can render (orjson's 64 bits), so every count is bounded there.
_INT64 = 2**63 - 1


class Limits(BaseModel):
    """Request and token rates (per minute, hour, day) and calls running at once; unset means unlimited."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rpm: int | None = Field(default=None, ge=1, le=_INT64, description="Requests per minute.")
    tpm: int | None = Field(
        default=None, ge=1, le=_INT64, description="Tokens per minute (prompt estimate + max_tokens)."
    )
    rph: int | None = Field(default=None, ge=1, le=_INT64, description="Requests per hour.")
    rpd: int | None = Field(default=None, ge=1, le=_INT64, description="Requests per day.")
    max_concurrent: int | None = Field(default=None, ge=1, le=_INT64, description="Calls admitted and not yet ended.")

    def is_empty(self) -> bool:
        return all(v is None for v in self.model_dump().values())


class Budget(BaseModel):
    """USD a single call, a UTC day and a UTC calendar month may cost; unset means unlimited."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Reserved and spent in nano-USD as 64-bit integers (Redis, JSON): a billion USD a window is far below that.
    max_per_call_usd: float | None = Field(default=None, ge=0, le=1e9)
    daily_usd: float | None = Field(default=None, ge=0, le=1e9)
    monthly_usd: float | None = Field(default=None, ge=0, le=1e9)

    def is_empty(self) -> bool:
        return all(v is None for v in self.model_dump().values())


class Tier(Budget):
    """A named budget of the config file (`tiers:`), with limits that come with it."""

    limits: Limits | None = None
