"""The request and answer models of keys and of the tenant's limits and budget."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from switchyard.core.policy import Budget, Limits

RoleName = Literal["admin", "member", "viewer"]
ModelNames = Annotated[list[Annotated[str, Field(min_length=1, max_length=200)]], Field(max_length=500)]
TierName = Annotated[str, Field(min_length=1, max_length=100)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KeyCreate(_Strict):
    """A new key. Left out: every model, no limits or budget of its own (the tenant's apply), no expiry."""

    name: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    role: RoleName = "member"
    models: ModelNames | None = Field(default=None, description="Logical models the key may call; null: all.")
    limits: Limits | None = None
    budget: Budget | None = None
    tier: TierName | None = Field(default=None, description="A tier of the config file's `tiers:`.")
    expires_at: datetime | None = Field(default=None, description="Refused from then on (401); a time zone is needed.")


class KeyUpdate(_Strict):
    """The fields to change; a field sent as null is cleared (`models: null`: every model, `expires_at: null`:
    never expires). The role of a key does not change: make another key."""

    name: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    models: ModelNames | None = None
    limits: Limits | None = None
    budget: Budget | None = None
    tier: TierName | None = None
    expires_at: datetime | None = None


class KeyView(BaseModel):
    id: str
    object: Literal["api_key"] = "api_key"
    name: str | None
    role: RoleName
    prefix: str = Field(description="The key's first characters, to tell keys apart (the key is never shown again).")
    models: list[str] | None
    limits: Limits | None
    budget: Budget | None
    tier: str | None
    expires_at: str | None
    created_at: str
    created_by: str | None = Field(description="A key id, `jwt:<subject>`, or `cli`.")
    revoked_at: str | None


class KeyCreated(KeyView):
    key: str = Field(description="The key (`sy_...`): shown only in this answer.")


class KeyPage(BaseModel):
    data: list[KeyView]
    next: str | None = Field(description="The `after` of the next page; null on the last one.")


class TenantBudget(Budget):
    """The tenant's budget, and the tier of the config file it is on (a tier brings its budget and limits)."""

    tier: TierName | None = None
