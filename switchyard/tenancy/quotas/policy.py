"""Who a call is counted against: the key's and the tenant's limits and budgets, their tiers resolved."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import structlog

from switchyard.core.policy import Budget, Limits, Tier
from switchyard.tenancy.service import Principal

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Scope:
    """A key or a tenant with what applies to it (`name` is its part of the Redis keys)."""

    kind: Literal["key", "tenant"]
    id: str
    limits: Limits | None
    budget: Budget | None

    @property
    def name(self) -> str:
        return f"{self.kind[0]}:{self.id}"


@dataclass(frozen=True)
class Policy:
    """The scopes a call of this caller counts against (the key first, then its tenant); only scopes with
    something to enforce are listed, and a caller with none has no policy at all."""

    tenant_id: str
    key_id: str | None
    scopes: tuple[Scope, ...]

    @property
    def has_budget(self) -> bool:
        return any(s.budget is not None for s in self.scopes)

    def max_per_call_usd(self) -> float | None:
        caps = [s.budget.max_per_call_usd for s in self.scopes if s.budget and s.budget.max_per_call_usd is not None]
        return min(caps) if caps else None


def _merge(own: Limits | Budget | None, base: Limits | Budget | None) -> dict[str, float | int]:
    """The fields set on `own`, over those of `base` (a tier)."""
    merged = {k: v for k, v in (base.model_dump() if base else {}).items() if v is not None}
    merged.update({k: v for k, v in (own.model_dump() if own else {}).items() if v is not None})
    return merged


def resolve(
    limits: Limits | None, budget: Budget | None, tier_name: str | None, tiers: dict[str, Tier]
) -> tuple[Limits | None, Budget | None]:
    """A key's or tenant's own limits and budget, each field set over its tier's; None where nothing is set.
    An unknown tier name applies nothing (and says so in the log): the config file may have dropped it."""
    tier = tiers.get(tier_name) if tier_name else None
    if tier_name and tier is None:
        log.warning("unknown_tier", tier=tier_name)
    tier_budget = Budget(**tier.model_dump(exclude={"limits"})) if tier else None
    lim = _merge(limits, tier.limits if tier else None)
    bud = _merge(budget, tier_budget)
    return (Limits.model_validate(lim) if lim else None), (Budget.model_validate(bud) if bud else None)


@lru_cache(maxsize=4096)
def _policy(
    tenant_id: str,
    key_id: str | None,
    key: tuple[Limits | None, Budget | None, str | None],
    tenant: tuple[Limits | None, Budget | None, str | None],
    tiers: tuple[tuple[str, Tier], ...],
) -> Policy | None:
    by_name = dict(tiers)
    scopes = []
    if key_id is not None:
        k_limits, k_budget = resolve(*key, by_name)
        if k_limits or k_budget:
            scopes.append(Scope("key", key_id, k_limits, k_budget))
    t_limits, t_budget = resolve(*tenant, by_name)
    if t_limits or t_budget:
        scopes.append(Scope("tenant", tenant_id, t_limits, t_budget))
    return Policy(tenant_id, key_id, tuple(scopes)) if scopes else None


Tiers = tuple[tuple[str, Tier], ...]


def tiers_of(tiers: dict[str, Tier]) -> Tiers:
    """The config file's tiers in the hashable form the policy functions take."""
    return tuple(sorted(tiers.items(), key=lambda item: item[0]))


def policy_of(principal: Principal, tiers: Tiers) -> Policy | None:
    """The caller's policy, or None when neither its key nor its tenant has limits, a budget or a tier (the
    common case, which costs nothing more)."""
    p = principal
    if not (p.limits or p.budget or p.tier or p.tenant_limits or p.tenant_budget or p.tenant_tier):
        return None
    return policy_for(
        p.tenant_id, p.key_id, (p.limits, p.budget, p.tier), (p.tenant_limits, p.tenant_budget, p.tenant_tier), tiers
    )


def policy_for(
    tenant_id: str,
    key_id: str | None,
    key: tuple[Limits | None, Budget | None, str | None],
    tenant: tuple[Limits | None, Budget | None, str | None],
    tiers: Tiers,
) -> Policy | None:
    """The policy of a key (None: a caller without a key of its own, a JWT's tenant only) and its tenant."""
    return _policy(tenant_id, key_id, key, tenant, tiers)
