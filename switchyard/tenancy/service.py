"""Tenants and API keys. A key is shown once; only its SHA-256 is stored."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from switchyard.core.ids import new_id
from switchyard.core.models import ApiKey, Tenant, utcnow
from switchyard.core.policy import Budget, Limits

Role = Literal["admin", "member", "viewer"]
ROLES: tuple[Role, ...] = ("admin", "member", "viewer")
# A role may do what the roles after it may do.
_RANK = {"viewer": 0, "member": 1, "admin": 2}

KEY_PREFIX = "sy_"


@dataclass(frozen=True)
class Principal:
    """Who is calling: a tenant and a role, and what the key and its tenant may use.

    `key_id` is the key's id, or `jwt:<subject>` for a JWT bearer. Limits and budgets are as stored (a tier
    is a name of the config file's `tiers:`, resolved where they are enforced)."""

    tenant_id: str
    role: str
    key_id: str
    models: frozenset[str] | None = None
    limits: Limits | None = None
    budget: Budget | None = None
    tier: str | None = None
    expires_at: datetime | None = None
    tenant_limits: Limits | None = None
    tenant_budget: Budget | None = None
    tenant_tier: str | None = None

    def allows(self, needed: str) -> bool:
        return _RANK[self.role] >= _RANK[needed]

    def may_use(self, model: str) -> bool:
        """Whether the key may call this logical model."""
        return self.models is None or model in self.models


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def get_or_create_tenant(session: Session, name: str) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        tenant = Tenant(id=new_id("ten"), name=name)
        session.add(tenant)
        session.flush()
    return tenant


def create_key(session: Session, tenant_name: str, role: Role) -> tuple[ApiKey, str]:
    """Create a key for the tenant (creating the tenant if needed); returns the row and the plain key."""
    tenant = get_or_create_tenant(session, tenant_name)
    plain = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(id=new_id("key"), tenant_id=tenant.id, role=role, prefix=plain[:10], key_hash=hash_key(plain))
    session.add(key)
    session.flush()
    return key, plain


def principal_for(key: ApiKey, tenant: Tenant) -> Principal:
    """What a stored key (and its tenant) may do."""
    return Principal(
        tenant_id=key.tenant_id,
        role=key.role,
        key_id=key.id,
        models=frozenset(key.models) if key.models is not None else None,
        limits=Limits.model_validate(key.limits) if key.limits else None,
        budget=Budget.model_validate(key.budget) if key.budget else None,
        tier=key.tier,
        expires_at=key.expires_at,
        tenant_limits=Limits.model_validate(tenant.limits) if tenant.limits else None,
        tenant_budget=Budget.model_validate(tenant.budget) if tenant.budget else None,
        tenant_tier=tenant.tier,
    )


def authenticate(session: Session, plain: str) -> Principal | None:
    """The principal of a key, or None for an unknown, revoked or expired key."""
    row = session.execute(
        select(ApiKey, Tenant)
        .join(Tenant, Tenant.id == ApiKey.tenant_id)
        .where(ApiKey.key_hash == hash_key(plain), ApiKey.revoked_at.is_(None))
    ).first()
    if row is None:
        return None
    key, tenant = row.tuple()
    if key.expires_at is not None and key.expires_at <= utcnow():
        return None
    return principal_for(key, tenant)
