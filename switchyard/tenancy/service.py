"""Tenants and API keys. A key is shown once; only its SHA-256 is stored."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from switchyard.core.ids import new_id
from switchyard.core.models import ApiKey, Tenant

Role = Literal["admin", "member", "viewer"]
ROLES: tuple[Role, ...] = ("admin", "member", "viewer")
# A role may do what the roles after it may do.
_RANK = {"viewer": 0, "member": 1, "admin": 2}

KEY_PREFIX = "sy_"


@dataclass(frozen=True)
class Principal:
    """Who is calling: a tenant and a role."""

    tenant_id: str
    role: str
    key_id: str

    def allows(self, needed: str) -> bool:
        return _RANK[self.role] >= _RANK[needed]


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


def authenticate(session: Session, plain: str) -> Principal | None:
    """The principal of a key, or None for an unknown or revoked key."""
    key = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(plain), ApiKey.revoked_at.is_(None)))
    if key is None:
        return None
    return Principal(tenant_id=key.tenant_id, role=key.role, key_id=key.id)
